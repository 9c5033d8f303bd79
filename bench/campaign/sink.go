package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// sink is the receiver every domain is routed to. It counts accepted messages
// and lets a caller wait for a count to be reached.
type sink struct {
	kind string // "postfix smtp-sink" or "go-smtp (mta/mtatest, in-process)"
	addr string

	mu      sync.Mutex
	count   int64
	waiters []waiter
	stop    func()
	errs    bytes.Buffer
}

type waiter struct {
	target int64
	ch     chan time.Time
}

// update records a new count and releases the waiters it satisfies.
func (s *sink) update(n int64) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if n <= s.count {
		return
	}
	s.count = n
	kept := s.waiters[:0]
	for _, w := range s.waiters {
		if n >= w.target {
			w.ch <- now
		} else {
			kept = append(kept, w)
		}
	}
	s.waiters = kept
}

// Count is how many messages the sink has accepted so far.
func (s *sink) Count() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// when returns a channel that receives the time the count reaches target.
func (s *sink) when(target int64) <-chan time.Time {
	ch := make(chan time.Time, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.count >= target {
		ch <- time.Now()
		return ch
	}
	s.waiters = append(s.waiters, waiter{target, ch})
	return ch
}

func (s *sink) Close() { s.stop() }

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// startSink starts Postfix's smtp-sink when kind allows and it is installed,
// else the in-process go-smtp sink.
func startSink(kind string) (*sink, error) {
	if kind != "go" {
		if path, err := exec.LookPath("smtp-sink"); err == nil {
			s, err := startSMTPSink(path)
			if err == nil || kind == "smtp-sink" {
				return s, err
			}
			fmt.Fprintf(os.Stderr, "bench: smtp-sink did not start (%v); using the go-smtp sink\n", err)
		} else if kind == "smtp-sink" {
			return nil, fmt.Errorf("smtp-sink not installed (Debian package postfix)")
		}
	}
	ms, err := mtatest.Start(mtatest.Options{Discard: true})
	if err != nil {
		return nil, err
	}
	s := &sink{kind: "go-smtp (mta/mtatest, in-process, Discard)", addr: ms.Addr}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.update(int64(ms.Count()))
			}
		}
	}()
	s.stop = func() { cancel(); ms.Close() }
	return s, nil
}

// startSMTPSink runs `smtp-sink -c -u USER 127.0.0.1:PORT 1024` and parses
// its running counters ("sess=N quit=N mesg=N\r", printed when a message's
// "." is received) from stdout.
func startSMTPSink(path string) (*sink, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var lastErr error
	for _, user := range userChoices() {
		args := []string{"-c"}
		if user != "" {
			args = append(args, "-u", user)
		}
		args = append(args, addr, "1024")
		cmd := exec.Command(path, args...)
		s := &sink{kind: "postfix smtp-sink (" + path + " " + joinArgs(args) + ")", addr: addr}
		cmd.Stderr = &s.errs
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		go s.parseCounters(out)
		if waitListening(addr, exited) {
			s.stop = func() { _ = cmd.Process.Kill(); <-exited }
			return s, nil
		}
		lastErr = fmt.Errorf("%s %v: %s", path, args, bytes.TrimSpace(s.errs.Bytes()))
	}
	return nil, lastErr
}

// userChoices: as root smtp-sink insists on -u; try postfix, then nobody.
func userChoices() []string {
	if os.Geteuid() == 0 {
		return []string{"postfix", "nobody", ""}
	}
	return []string{""}
}

func joinArgs(a []string) string {
	var b bytes.Buffer
	for i, s := range a {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s)
	}
	return b.String()
}

// waitListening waits until addr accepts a connection or the process exits.
func waitListening(addr string, exited <-chan struct{}) bool {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			// Say QUIT so the probe leaves no half-open session behind.
			_ = c.SetDeadline(time.Now().Add(time.Second))
			br := bufio.NewReader(c)
			_, _ = br.ReadString('\n')
			_, _ = c.Write([]byte("QUIT\r\n"))
			_, _ = br.ReadString('\n')
			c.Close()
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func (s *sink) parseCounters(r io.Reader) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		rec, err := br.ReadBytes('\r')
		if i := bytes.Index(rec, []byte("mesg=")); i >= 0 {
			v := rec[i+5:]
			j := 0
			for j < len(v) && v[j] >= '0' && v[j] <= '9' {
				j++
			}
			if n, perr := strconv.ParseInt(string(v[:j]), 10, 64); perr == nil {
				s.update(n)
			}
		}
		if err != nil {
			return
		}
	}
}
