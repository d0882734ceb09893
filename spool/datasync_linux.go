package spool

import (
	"os"
	"syscall"
)

// datasync commits f's data, and what reading it back needs of its
// metadata (its size), to stable storage: fdatasync(2), which unlike
// fsync(2) does not also write the file's times, changed by every write.
func datasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return f.Sync()
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			if serr = syscall.Fdatasync(int(fd)); serr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}
