package admin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A small Chrome DevTools Protocol client for the status page's browser
// test. It talks to Debian's headless Chromium over --remote-debugging-pipe:
// JSON messages, each ended by a NUL byte, that the browser reads on its
// file descriptor 3 and writes on 4. No websocket, no port, no dependency.

// chromiumPath returns the Chromium binary. Without one the test is
// skipped, except in CI (CI set), where .ci/run installs it: there a
// missing browser fails.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed, and CI is set: .ci/run installs it (apt-get install chromium)")
	}
	t.Skip("chromium is not installed (apt-get install chromium); CI runs this test")
	return ""
}

// cdpMessage is a message either way: a command (ID, Method, Params), its
// answer (ID, Result or Error) or an event (Method, Params), each with the
// SessionID of the page it concerns.
type cdpMessage struct {
	ID        int64           `json:"id,omitempty"`
	Method    string          `json:"method,omitempty"`
	Params    json.RawMessage `json:"params,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

type cdpClient struct {
	t   *testing.T
	cmd *exec.Cmd
	w   *os.File // the browser's fd 3

	mu      sync.Mutex
	nextID  int64
	pending map[int64]chan cdpMessage
	onEvent func(cdpMessage) // runs on the reader goroutine: must not block
	stderr  bytes.Buffer
	done    chan struct{} // closed when the browser's fd 4 ends
}

// startChromium starts headless Chromium with the flags that work on this
// machine and a fresh profile; the browser is closed, and killed if it
// lingers, when the test ends. onEvent sees every event.
func startChromium(t *testing.T, onEvent func(cdpMessage)) *cdpClient {
	t.Helper()
	bin := chromiumPath(t)
	profile := t.TempDir() // removed after the browser is gone (cleanups run in reverse)
	toBrowser, browserIn, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	browserOut, fromBrowser, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &cdpClient{t: t, w: browserIn, pending: map[int64]chan cdpMessage{}, onEvent: onEvent, done: make(chan struct{})}
	c.cmd = exec.Command(bin,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-extensions", "--disable-default-apps", "--no-default-browser-check",
		"--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--force-color-profile=srgb",
		"--window-size=1200,800", "--user-data-dir="+profile, "--remote-debugging-pipe", "about:blank")
	c.cmd.ExtraFiles = []*os.File{toBrowser, fromBrowser} // fds 3 and 4
	c.cmd.Stderr = &lockedWriter{mu: &c.mu, w: &c.stderr}
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its helpers share its group
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	toBrowser.Close()
	fromBrowser.Close()
	exited := make(chan struct{})
	go func() {
		c.cmd.Wait()
		close(exited)
	}()
	go c.read(browserOut)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c.call(ctx, "", "Browser.close", nil, nil)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL) // the group this test started
			<-exited
		}
		browserIn.Close()
		browserOut.Close()
	})
	return c
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b, ok := l.w.(*bytes.Buffer); ok && b.Len() > 64<<10 {
		return len(p), nil // enough to tell what went wrong
	}
	return l.w.Write(p)
}

// Stderr returns what the browser printed, for a failure's message.
func (c *cdpClient) Stderr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stderr.String()
}

func (c *cdpClient) read(r io.Reader) {
	defer close(c.done)
	br := bufio.NewReaderSize(r, 1<<20)
	for {
		b, err := br.ReadBytes(0)
		if err != nil {
			return
		}
		var m cdpMessage
		if err := json.Unmarshal(b[:len(b)-1], &m); err != nil {
			continue
		}
		if m.ID == 0 {
			if c.onEvent != nil {
				c.onEvent(m)
			}
			continue
		}
		c.mu.Lock()
		ch := c.pending[m.ID]
		delete(c.pending, m.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- m
		}
	}
}

// call sends method with params to session ("" for the browser) and
// decodes the result into out (nil: dropped); ctx bounds the wait.
func (c *cdpClient) call(ctx context.Context, session, method string, params, out any) error {
	c.mu.Lock()
	c.nextID++
	id := c.nextID
	ch := make(chan cdpMessage, 1)
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()
	m := map[string]any{"id": id, "method": method}
	if params != nil {
		m["params"] = params
	}
	if session != "" {
		m["sessionId"] = session
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	c.mu.Lock()
	_, err = c.w.Write(append(b, 0))
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("%s: writing to the browser: %w", method, err)
	}
	select {
	case a := <-ch:
		if a.Error != nil {
			return fmt.Errorf("%s: %s (%d)", method, a.Error.Message, a.Error.Code)
		}
		if out != nil {
			return json.Unmarshal(a.Result, out)
		}
		return nil
	case <-c.done:
		return fmt.Errorf("%s: the browser went away", method)
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", method, ctx.Err())
	}
}

// cdpPage is one tab, attached in flat mode: its commands carry its
// session ID.
type cdpPage struct {
	c       *cdpClient
	session string
}

// newPage opens a tab of width×height CSS pixels and enables the domains
// whose events the test reads.
func (c *cdpClient) newPage(ctx context.Context, width, height int) (*cdpPage, error) {
	var target struct {
		TargetID string `json:"targetId"`
	}
	if err := c.call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"}, &target); err != nil {
		return nil, err
	}
	var att struct {
		SessionID string `json:"sessionId"`
	}
	if err := c.call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att); err != nil {
		return nil, err
	}
	p := &cdpPage{c: c, session: att.SessionID}
	for _, d := range []string{"Page.enable", "Runtime.enable", "Log.enable"} {
		if err := p.call(ctx, d, nil, nil); err != nil {
			return nil, err
		}
	}
	err := p.call(ctx, "Emulation.setDeviceMetricsOverride", map[string]any{
		"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false,
	}, nil)
	return p, err
}

func (p *cdpPage) call(ctx context.Context, method string, params, out any) error {
	return p.c.call(ctx, p.session, method, params, out)
}

// eval evaluates a JavaScript expression in the page (awaiting a promise)
// and decodes its value into out (nil: dropped).
func (p *cdpPage) eval(ctx context.Context, expr string, out any) error {
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	err := p.call(ctx, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true}, &r)
	if err != nil {
		return err
	}
	if e := r.ExceptionDetails; e != nil {
		return fmt.Errorf("evaluating %s: %s %s", expr, e.Text, e.Exception.Description)
	}
	if out == nil || len(r.Result.Value) == 0 {
		return nil
	}
	return json.Unmarshal(r.Result.Value, out)
}

// waitFor evaluates the boolean expression expr every 100 ms until it is
// true, for at most d.
func (p *cdpPage) waitFor(ctx context.Context, d time.Duration, what, expr string) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var last error
	for {
		var ok bool
		if err := p.eval(ctx, expr, &ok); err == nil && ok {
			return nil
		} else if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("waiting %v for %s: %w (last: %v)", d, what, ctx.Err(), last)
			}
			return fmt.Errorf("waiting %v for %s: %w", d, what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// click presses and releases the left mouse button at the middle of the
// element expr evaluates to, as a person's click: the browser's hit test
// decides what receives it.
func (p *cdpPage) click(ctx context.Context, what, expr string) error {
	var pt struct {
		X, Y  float64
		Found bool
	}
	err := p.eval(ctx, `(() => { const e = `+expr+`; if (!e) return {found: false};
		e.scrollIntoView({block: "center"}); const r = e.getBoundingClientRect();
		return {found: true, x: r.left + r.width / 2, y: r.top + r.height / 2}; })()`, &pt)
	if err != nil {
		return err
	}
	if !pt.Found {
		return fmt.Errorf("click %s: not found", what)
	}
	for _, typ := range []string{"mouseMoved", "mousePressed", "mouseReleased"} {
		ev := map[string]any{"type": typ, "x": pt.X, "y": pt.Y}
		if typ != "mouseMoved" {
			ev["button"], ev["clickCount"] = "left", 1
		}
		if err := p.call(ctx, "Input.dispatchMouseEvent", ev, nil); err != nil {
			return fmt.Errorf("click %s: %w", what, err)
		}
	}
	return nil
}

// typeInto focuses the element expr evaluates to and types text into it,
// as key presses would (input events fire).
func (p *cdpPage) typeInto(ctx context.Context, expr, text string) error {
	if err := p.eval(ctx, `(`+expr+`).focus()`, nil); err != nil {
		return err
	}
	return p.call(ctx, "Input.insertText", map[string]any{"text": text}, nil)
}

// screenshot returns a PNG of the viewport.
func (p *cdpPage) screenshot(ctx context.Context) ([]byte, error) {
	var r struct {
		Data []byte `json:"data"` // base64 in JSON
	}
	if err := p.call(ctx, "Page.captureScreenshot", map[string]any{"format": "png"}, &r); err != nil {
		return nil, err
	}
	if len(r.Data) == 0 {
		return nil, errors.New("Page.captureScreenshot: no data")
	}
	return r.Data, nil
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return strings.ReplaceAll(string(b), "\u2028", `\u2028`)
}
