package spool

import (
	"io"
	"io/fs"
	"os"
)

// FS is the set of file operations the file store uses, so tests can inject
// faults. OSFS is the real operating system.
type FS interface {
	// OpenFile opens a file or, with os.O_RDONLY, a directory, like
	// os.OpenFile.
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)
	// Remove removes a file, like os.Remove.
	Remove(name string) error
	// ReadDir lists a directory, like os.ReadDir.
	ReadDir(name string) ([]fs.DirEntry, error)
	// MkdirAll creates a directory, like os.MkdirAll.
	MkdirAll(name string, perm fs.FileMode) error
	// Stat describes a file, like os.Stat.
	Stat(name string) (fs.FileInfo, error)
	// Chmod changes a file's mode, like os.Chmod.
	Chmod(name string, mode fs.FileMode) error
}

// File is an open file, as returned by FS.OpenFile.
type File interface {
	io.Reader
	io.ReaderAt
	io.Writer
	// WriteAt writes at an offset: the writer places each batch at its
	// segment's end itself (segments are not opened O_APPEND, so that a
	// batch can overwrite the zeros written ahead of it).
	io.WriterAt
	io.Closer
	// Sync commits the file's data to stable storage.
	Sync() error
	// Truncate changes the file's size.
	Truncate(size int64) error
	// Stat describes the file.
	Stat() (fs.FileInfo, error)
}

// OSFS is the FS of the operating system.
type OSFS struct{}

var _ FS = OSFS{}

// OpenFile calls os.OpenFile.
func (OSFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// Remove calls os.Remove.
func (OSFS) Remove(name string) error { return os.Remove(name) }

// ReadDir calls os.ReadDir.
func (OSFS) ReadDir(name string) ([]fs.DirEntry, error) { return os.ReadDir(name) }

// MkdirAll calls os.MkdirAll.
func (OSFS) MkdirAll(name string, perm fs.FileMode) error { return os.MkdirAll(name, perm) }

// Stat calls os.Stat.
func (OSFS) Stat(name string) (fs.FileInfo, error) { return os.Stat(name) }

// Chmod calls os.Chmod.
func (OSFS) Chmod(name string, mode fs.FileMode) error { return os.Chmod(name, mode) }
