//go:build !linux || !(amd64 || arm64)

package spool

import (
	"errors"
	"os"
)

// aioSyncer is Linux's: elsewhere a segment is synced with fsync(2).
type aioSyncer struct{ broken bool }

var errAIOUnsupported = errors.New("spool: fsync through AIO not supported")

func getAIOSyncer() *aioSyncer { return nil }

func (a *aioSyncer) release() {}

func (a *aioSyncer) sync(*os.File) error { return errAIOUnsupported }

func (a *aioSyncer) close() {}

func (a *aioSyncer) poke() {}
