package jsstore

import "github.com/nats-io/nats.go/jetstream"

// SetMsgWrapper makes Next wrap each message it leases with f.
func (s *Store) SetMsgWrapper(f func(jetstream.Msg) jetstream.Msg) {
	s.mu.Lock()
	s.wrapMsg = f
	s.mu.Unlock()
}

// SetFetchedHook makes Next call f after it fetched a message.
func (s *Store) SetFetchedHook(f func()) {
	s.mu.Lock()
	s.hookFetched = f
	s.mu.Unlock()
}

// RedactURLs is redactURLs.
var RedactURLs = redactURLs
