package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// proxies are the toxiproxy proxies between the sidecar and each upstream,
// embedded in this process.
type proxies struct {
	server *toxiproxy.ApiServer
	list   []*toxiproxy.Proxy
}

// newProxies starts one proxy per listen→upstream pair, named by name.
func newProxies(names, listen, upstream []string) (*proxies, error) {
	zerolog.SetGlobalLevel(zerolog.Disabled)
	p := &proxies{server: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())}
	for i := range names {
		px := toxiproxy.NewProxy(p.server, names[i], listen[i], upstream[i])
		if err := px.Start(); err != nil {
			p.stop()
			return nil, fmt.Errorf("toxiproxy %s on %s: %w", names[i], listen[i], err)
		}
		p.list = append(p.list, px)
	}
	return p, nil
}

// add puts the toxic (toxiproxy's JSON form, without the name) on every
// proxy under name.
func (p *proxies) add(name, toxicJSON string) error {
	for _, px := range p.list {
		js := strings.Replace(toxicJSON, "{", `{"name":"`+name+`",`, 1)
		if _, err := px.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
			return fmt.Errorf("toxic %s on %s: %w", name, px.Name, err)
		}
	}
	return nil
}

// remove takes the toxic name off every proxy.
func (p *proxies) remove(name string) error {
	var errs []error
	for _, px := range p.list {
		if err := px.Toxics.RemoveToxic(context.Background(), name); err != nil {
			errs = append(errs, fmt.Errorf("toxic %s on %s: %w", name, px.Name, err))
		}
	}
	return errors.Join(errs...)
}

func (p *proxies) stop() {
	for _, px := range p.list {
		px.Stop()
	}
}

// diskFS is the spool's own small tmpfs, which the disk-full fault fills.
type diskFS struct {
	dir    string // the mount point; the spool is in dir/spool
	filler string
}

// mountTmpfs mounts a tmpfs of size (mount(8)'s size= syntax) on dir. It
// needs root (CAP_SYS_ADMIN); the caller skips the disk-full fault when it
// fails.
func mountTmpfs(dir, size string) (*diskFS, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size="+size+",mode=0700"); err != nil {
		return nil, fmt.Errorf("mount -t tmpfs -o size=%s on %s: %w", size, dir, err)
	}
	return &diskFS{dir: dir, filler: filepath.Join(dir, "filler")}, nil
}

// fill appends to the filler file until the file system has no room left:
// 1 MiB writes, then 4 KiB ones, each until ENOSPC. It returns the bytes
// written. The loops are bounded by the file system's size. Called again
// it takes whatever room was freed since (the spool deletes a segment
// once its messages are settled).
func (d *diskFS) fill() (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.dir, &st); err != nil {
		return 0, err
	}
	limit := int64(st.Blocks) * st.Bsize // never more than the whole file system
	f, err := os.OpenFile(d.filler, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var written int64
	for _, chunk := range []int{1 << 20, 4 << 10} {
		buf := make([]byte, chunk)
		for written <= limit {
			n, err := f.Write(buf)
			written += int64(n)
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			if err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

// free removes the filler file.
func (d *diskFS) free() error {
	err := os.Remove(d.filler)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// unmount unmounts the tmpfs, lazily if something still holds it.
func (d *diskFS) unmount() error {
	if err := syscall.Unmount(d.dir, 0); err != nil {
		return syscall.Unmount(d.dir, syscall.MNT_DETACH)
	}
	return nil
}
