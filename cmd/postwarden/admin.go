package main

// The admin protocol. Every CLI verb that touches a store is an op: a named
// function that reads JSON arguments and writes a stream of JSON lines. The
// same op runs in two places:
//   - in the daemon, reached over the admin socket (HTTP over a unix socket,
//     mode 0600), because bbolt's file lock admits one process;
//   - in the CLI process itself when no daemon answers on the socket.
// Both paths produce the same lines, so the CLI prints them the same way.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/postwarden/postwarden/cmd/internal/sockfile"
)

// line is one line of an op's output stream. Exactly one field is set,
// and the last line of a stream is always Exit.
type line struct {
	Record   json.RawMessage `json:"record,omitempty"`
	Progress *progress       `json:"progress,omitempty"`
	Note     string          `json:"note,omitempty"`
	Exit     *int            `json:"exit,omitempty"`
	Error    string          `json:"error,omitempty"`
}

// progress reports how far a long op is: reading a file (Rows, Bytes of
// Total), then, with Phase "deliver", delivering what it enqueued.
type progress struct {
	Rows  int   `json:"rows"`
	Bytes int64 `json:"bytes"`
	Total int64 `json:"total"`

	Phase     string  `json:"phase,omitempty"` // "deliver"
	Delivered int     `json:"delivered,omitempty"`
	Deferred  int     `json:"deferred,omitempty"`
	Bounced   int     `json:"bounced,omitempty"`
	Pending   int     `json:"pending,omitempty"` // not finished yet
	Rate      float64 `json:"rate,omitempty"`    // messages finished a second
	ETA       float64 `json:"eta_s,omitempty"`   // seconds until nothing is pending, at Rate
}

// request is what the CLI sends for one op.
type request struct {
	Args   json.RawMessage `json:"args"`
	Reveal bool            `json:"reveal,omitempty"`
	// Who is set by whoever runs the op: the peer's uid on the socket, or
	// the local user; never taken from the client.
	Who string `json:"-"`
}

// out is where an op writes its lines.
type out struct {
	mu   sync.Mutex
	sink func(line) error
}

// Record emits one result record.
func (o *out) Record(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode record: %w", err)
	}
	return o.emit(line{Record: b})
}

// Note emits a human-readable remark (printed on stderr by the CLI).
func (o *out) Note(format string, a ...any) error {
	return o.emit(line{Note: fmt.Sprintf(format, a...)})
}

// Progress emits a progress update.
func (o *out) Progress(p progress) error { return o.emit(line{Progress: &p}) }

func (o *out) emit(l line) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.sink(l)
}

// exitError carries an exit status: 1 for a "no" or "not found" answer,
// 2 for errors.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// no returns an exit-1 answer ("not suppressed", "not found").
func no(format string, a ...any) error {
	return &exitError{code: 1, msg: fmt.Sprintf(format, a...)}
}

// exitCode maps an op's error to the process exit status.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 2
}

// opFunc is one admin operation.
type opFunc func(ctx context.Context, e *env, req request, o *out) error

// opSpec says how an op may run.
type opSpec struct {
	fn opFunc
	// localOnly ops never go over the socket (they touch no bbolt store).
	localOnly bool
	// creates: run without the daemon, the op may create the data directory
	// and, in a fresh one, the stores and keys; other ops need them to exist.
	creates bool
}

// runOp runs an op in this process and reports its final status line.
func runOp(ctx context.Context, name string, e *env, req request, sink func(line) error) int {
	spec, ok := ops[name]
	if !ok {
		code := 2
		_ = sink(line{Exit: &code, Error: fmt.Sprintf("unknown op %q", name)})
		return code
	}
	o := &out{sink: sink}
	var err error
	if req.Reveal && e != nil && e.audit != nil {
		// Showing addresses in clear is itself an access to personal data.
		err = e.record(req, "reveal", "op:"+name, "", nil)
	}
	if err == nil {
		err = spec.fn(ctx, e, req, o)
	}
	code := exitCode(err)
	l := line{Exit: &code}
	if err != nil {
		l.Error = err.Error()
	}
	_ = o.emit(l)
	return code
}

// adminServer serves ops on the admin socket.
type adminServer struct {
	env  *env
	log  zerolog.Logger
	ln   net.Listener
	srv  *http.Server
	path string
}

type connKey struct{}

// listenAdmin creates the socket (mode 0600, its folder 0700) and serves it.
// Only a stale socket at the path is replaced (sockfile.Listen).
func listenAdmin(path string, e *env, log zerolog.Logger) (*adminServer, error) {
	ln, err := sockfile.Listen(path)
	if errors.Is(err, sockfile.ErrInUse) {
		return nil, fmt.Errorf("admin_socket %s: another postwarden serve is running", path)
	}
	if err != nil {
		return nil, fmt.Errorf("admin_socket: %w", err)
	}
	a := &adminServer{env: e, log: log, ln: ln, path: path}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /op/{name}", a.handle)
	a.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
	go func() {
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("admin socket stopped")
		}
	}()
	return a, nil
}

// Close stops taking admin requests and removes the socket.
func (a *adminServer) Close(ctx context.Context) error {
	err := a.srv.Shutdown(ctx)
	_ = os.Remove(a.path)
	return err
}

// peerUID reads the uid of the process on the other end of a unix socket.
func peerUID(c net.Conn) string {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return "unknown"
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return "unknown"
	}
	var cred *unix.Ucred
	_ = raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil || cred == nil {
		return "unknown"
	}
	return fmt.Sprintf("uid:%d", cred.Uid)
}

func (a *adminServer) handle(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var req request
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<20)).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
		req.Who = peerUID(c)
	}
	spec, ok := ops[name]
	if !ok || spec.localOnly {
		http.Error(w, fmt.Sprintf("unknown op %q", name), http.StatusNotFound)
		return
	}
	a.log.Info().Str("who", req.Who).Str("op", name).Bool("reveal", req.Reveal).Msg("admin request")
	w.Header().Set("Content-Type", "application/x-ndjson")
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	code := runOp(r.Context(), name, a.env, req, func(l line) error {
		if err := enc.Encode(l); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	})
	a.log.Info().Str("who", req.Who).Str("op", name).Int("exit", code).Msg("admin request done")
}

// daemonClient returns an HTTP client bound to the admin socket when a
// daemon answers there, or nil when none does.
func daemonClient(path string) *http.Client {
	c, err := net.DialTimeout("unix", path, 500*time.Millisecond)
	if err != nil {
		return nil
	}
	c.Close()
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

// callDaemon runs an op in the daemon and feeds each line to sink.
func callDaemon(ctx context.Context, hc *http.Client, name string, req request, sink func(line) error) (int, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return 2, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://postwarden/op/"+name, bytes.NewReader(body))
	if err != nil {
		return 2, err
	}
	resp, err := hc.Do(hr)
	if err != nil {
		return 2, fmt.Errorf("admin socket: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 2, fmt.Errorf("admin socket: %s: %s", resp.Status, msg)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return 2, fmt.Errorf("admin socket: bad reply line: %w", err)
		}
		if l.Exit != nil {
			_ = sink(l)
			return *l.Exit, nil
		}
		if err := sink(l); err != nil {
			return 2, err
		}
	}
	if err := sc.Err(); err != nil {
		return 2, fmt.Errorf("admin socket: %w", err)
	}
	return 2, errors.New("admin socket: the daemon closed the stream without a status")
}
