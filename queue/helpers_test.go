package queue

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/bounce"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// smtpErr is a delivery error like go-smtp's *SMTPError.
type smtpErr struct {
	code int
	enh  string
	msg  string
}

func (e *smtpErr) Error() string             { return fmt.Sprintf("%d %s %s", e.code, e.enh, e.msg) }
func (e *smtpErr) Temporary() bool           { return e.code/100 == 4 }
func (e *smtpErr) SMTPStatus() (int, string) { return e.code, e.enh }

// HardBounce asks the real classifier, as mta.DeliveryError does.
func (e *smtpErr) HardBounce() (bool, string) { return hardBounce("", e) }

// permErr is a permanent error that does not say whether it is a hard bounce.
type permErr string

func (e permErr) Error() string   { return string(e) }
func (e permErr) Temporary() bool { return false }

// stagedErr also names the SMTP command that failed, like mta.DeliveryError.
type stagedErr struct {
	smtpErr
	stage string
}

func (e *stagedErr) HardBounce() (bool, string) { return hardBounce(e.stage, &e.smtpErr) }

func hardBounce(stage string, e *smtpErr) (bool, string) {
	v := bounce.Classify(bounce.Failure{Stage: stage, Code: e.code, Enhanced: e.enh, Text: e.msg})
	return v.Hard(), v.Reason
}

// fakeDeliverer returns scripted errors per address (then success) and counts calls.
type fakeDeliverer struct {
	mu     sync.Mutex
	script map[string][]error
	calls  map[string]int // by address
	byID   map[string]int // by queue id
	ok     int            // successful deliveries
	onOK   func(n int)    // called after each success with the running total
	block  chan struct{}  // if set, each Deliver waits on it
	start  chan string    // if set, each Deliver announces its id
	// route, if set, is the source and provider DeliverVia reports for a
	// recipient, given the pool and the preferred source it was handed.
	route func(to, pool, prefer string) (source, provider string)
	asked []via // every DeliverVia call's pool and preferred source, in order
}

// via is what one DeliverVia call was handed.
type via struct{ to, pool, prefer string }

func (f *fakeDeliverer) DeliverVia(ctx, stop context.Context, id, from, to string, body []byte, pool, source string) (string, string, string, string, error) {
	f.mu.Lock()
	f.asked = append(f.asked, via{to, pool, source})
	route := f.route
	f.mu.Unlock()
	err := f.DeliverUntil(ctx, stop, id, from, to, body)
	if route == nil {
		return "", "", "", "", err
	}
	src, prov := route(to, pool, source)
	return src, prov, "", "", err
}

func newFake() *fakeDeliverer {
	return &fakeDeliverer{script: map[string][]error{}, calls: map[string]int{}, byID: map[string]int{}}
}

// DeliverUntil is the delivery itself: the scripted error or success.
func (f *fakeDeliverer) DeliverUntil(ctx, _ context.Context, id, from, to string, body []byte) error {
	if f.start != nil {
		f.start <- id
	}
	if f.block != nil {
		<-f.block
	}
	f.mu.Lock()
	f.calls[to]++
	f.byID[id]++
	var err error
	if s := f.script[to]; len(s) > 0 {
		err, f.script[to] = s[0], s[1:]
	}
	var n int
	if err == nil {
		f.ok++
		n = f.ok
	}
	cb := f.onOK
	f.mu.Unlock()
	if err == nil && cb != nil {
		cb(n)
	}
	return err
}

func (f *fakeDeliverer) count(to string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[to]
}

// suppressCall records one SuppressAddress call.
type suppressCall struct{ addr, list, reason, source, note string }

// fakeSup is a do-not-mail list in memory.
type fakeSup struct {
	mu    sync.Mutex
	list  map[string]string // addr → reason
	calls []suppressCall
}

func newSup() *fakeSup { return &fakeSup{list: map[string]string{}} }

func (s *fakeSup) Check(addr, list string) (string, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.list[addr]
	return r, ok, nil
}

func (s *fakeSup) SuppressAddress(addr, list, reason, source, note string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, suppressCall{addr, list, reason, source, note})
	s.list[addr] = reason
	return nil
}

// clock is a settable clock for RunnerConfig.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now().Add(time.Second)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testBox seals with a fixed key, so a file reopened in a test opens again.
var testBox = func() *sealed.Box {
	b, err := sealed.New(bytes.Repeat([]byte{7}, sealed.KeySize))
	if err != nil {
		panic(err)
	}
	return b
}()

// openTest opens a queue in a fresh temp dir (sealing with testBox unless cfg.Box is set).
func openTest(t testing.TB, cfg Config) *Store {
	t.Helper()
	if cfg.Box == nil {
		cfg.Box = testBox
	}
	if cfg.Path == "" {
		cfg.Path = filepath.Join(t.TempDir(), "queue.db")
	}
	s, err := Open(cfg, zerolog.Nop())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// msg builds a NewMessage for campaign c to address to.
func msg(c, to string) NewMessage {
	return NewMessage{Campaign: c, List: "news", Key: to, From: "bounce@mail.example.com", To: to,
		Body: []byte("Subject: hi\r\n\r\nhello\r\n")}
}

// enqueue enqueues msgs and fails the test on error.
func enqueue(t testing.TB, s *Store, msgs ...NewMessage) EnqueueResult {
	t.Helper()
	res, err := s.Enqueue(msgs)
	if err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	return res
}

// mustGet loads a message and fails the test on error.
func mustGet(t testing.TB, s *Store, id string) Message {
	t.Helper()
	m, err := s.Get(id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return m
}

// drain runs Drain with a generous deadline.
func drain(t testing.TB, r *Runner) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := r.Drain(ctx); err != nil {
		t.Fatalf("Drain: %v", err)
	}
}
