package spool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	crashChildEnv  = "SPOOL_CRASH_CHILD_DIR"
	crashAckAllEnv = "SPOOL_CRASH_ACK_ALL"
	crashZeroEnv   = "SPOOL_CRASH_ZERO_AHEAD"
)

// TestCrashChild is the child of TestCrash: it appends from 16 goroutines
// and prints "S id" once Append has returned; half of the goroutines (all
// with SPOOL_CRASH_ACK_ALL set, so that settled segments are deleted while
// the parent may kill the child) then Ack the message and print "A id" once
// Ack has returned. With SPOOL_CRASH_ZERO_AHEAD set it writes zeros ahead
// of its records (FileOptions.ZeroAhead), as the sidecar does. It runs
// until it is killed.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("run by TestCrash only")
	}
	opts := FileOptions{SegmentSize: 64 << 10}
	if os.Getenv(crashZeroEnv) != "" {
		opts.ZeroAhead = 16 << 10
	}
	s, err := OpenFile(dir, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	ackAll := os.Getenv(crashAckAllEnv) != ""
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := 0; ; i++ {
				m := &Message{Route: "crash", Body: fmt.Appendf(nil, "goroutine %d message %d", g, i)}
				if err := s.Append(context.Background(), m); err != nil {
					fmt.Fprintln(os.Stderr, "child: Append:", err)
					os.Exit(3)
				}
				mu.Lock()
				os.Stdout.WriteString("S " + m.ID + "\n")
				mu.Unlock()
				if g%2 == 1 && !ackAll {
					continue
				}
				if err := s.Ack(m.ID); err != nil {
					fmt.Fprintln(os.Stderr, "child: Ack:", err)
					os.Exit(3)
				}
				mu.Lock()
				os.Stdout.WriteString("A " + m.ID + "\n")
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	dir := t.TempDir()
	total := 0
	for round := range 5 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
		if round%2 == 1 {
			cmd.Env = append(cmd.Env, crashAckAllEnv+"=1")
		}
		if round != 1 { // one round appends as a store without it would
			cmd.Env = append(cmd.Env, crashZeroEnv+"=1")
		}
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var acked []string
		settled := map[string]bool{}
		done := make(chan struct{})
		started := make(chan struct{}) // closed at the child's first "S" line
		go func() {
			defer close(done)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				line := sc.Text()
				if len(line) != 26 {
					continue // the last line may be cut by the kill
				}
				switch id := line[2:]; line[0] {
				case 'S':
					if len(acked) == 0 {
						close(started)
					}
					acked = append(acked, id)
				case 'A':
					settled[id] = true
				}
			}
		}()
		// The kill lands a while into the child's appends: the delay
		// counts from its first acknowledged append, not from its start,
		// which takes longer on a loaded machine.
		select {
		case <-started:
		case <-done: // the child stopped by itself; its stderr says why
		case <-time.After(30 * time.Second):
		}
		time.Sleep(time.Duration(150+50*round) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-done
		_ = cmd.Wait()

		s, err := OpenFile(dir, FileOptions{SegmentSize: 64 << 10})
		if err != nil {
			t.Fatalf("round %d: OpenFile() after SIGKILL = %v, want nil", round, err)
		}
		missing, resurrected := 0, 0
		for _, id := range acked {
			_, _, err := s.Get(id)
			switch {
			case settled[id] && !errors.Is(err, ErrNotFound):
				resurrected++
				if resurrected < 5 {
					t.Errorf("round %d: Get(%s) settled before SIGKILL = %v, want %v", round, id, err, ErrNotFound)
				}
			case !settled[id] && errors.Is(err, ErrNotFound):
				// Acked after its "S" line but before the kill, without
				// its "A" line: fine.
			case !settled[id] && err != nil, settled[id] && err == nil:
				missing++
				if missing < 5 {
					t.Errorf("round %d: Get(%s) appended before SIGKILL = %v, want nil", round, id, err)
				}
			}
		}
		st := s.Stats()
		if st.CorruptRecords != 0 {
			t.Errorf("round %d: Stats().CorruptRecords = %d, want 0 (a crash only tears the tail)", round, st.CorruptRecords)
		}
		total += len(acked)
		t.Logf("round %d: %d appended, %d settled, %d stored, %d segments, torn tail %v", round, len(acked), len(settled), st.Total.Pending, st.Segments, st.TornTail)
		if len(acked) == 0 {
			t.Errorf("round %d: child acknowledged nothing", round)
		}
		if _, err := s.Purge("", Pending); err != nil {
			t.Fatalf("round %d: Purge() = %v, want nil", round, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
