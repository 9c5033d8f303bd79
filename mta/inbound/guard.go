package inbound

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression/httplimit"
)

// limitListener refuses connections beyond max in all, or beyond perIP
// from one client address, with 421 (RFC 5321 §3.1: the sender retries).
type limitListener struct {
	net.Listener
	max, perIP int
	hostname   string
	domain     string        // bounce domain, for the bare postmaster rewrite
	idle       time.Duration // read timeout while message data flows
	peek       int           // longest command line held whole (go-smtp's line limit)
	log        zerolog.Logger

	mu      sync.Mutex
	n       map[string]int
	total   int
	closing bool
	linger  sync.WaitGroup // closes still draining the client's bytes
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := httplimit.PeerIP(c.RemoteAddr())
		l.mu.Lock()
		reply := ""
		switch {
		case l.total >= l.max:
			reply = "Too many connections, try again later"
		case l.n[ip] >= l.perIP:
			reply = "Too many connections from your address, try again later"
		default:
			l.n[ip]++
			l.total++
		}
		l.mu.Unlock()
		if reply != "" {
			l.log.Warn().Str("ip", ip).Int("max", l.max).Int("max_per_ip", l.perIP).Msg("inbound connection limit reached")
			go refuse(c, l.hostname, reply)
			continue
		}
		return &guardConn{Conn: c, l: l, ip: ip}, nil
	}
}

// release forgets one of ip's connections.
func (l *limitListener) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.n[ip] <= 1 {
		delete(l.n, ip)
	} else {
		l.n[ip]--
	}
}

// shutdown makes later closes immediate and waits for those lingering.
func (l *limitListener) shutdown() {
	l.mu.Lock()
	l.closing = true
	l.mu.Unlock()
	l.linger.Wait()
}

// refuse greets with 421 and closes (RFC 5321 §3.1, §3.8).
func refuse(c net.Conn, hostname, text string) {
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, "421 4.7.0 "+hostname+" "+text+"\r\n")
	_ = c.Close()
}

// Lingering close: after the last reply the client's unread bytes are
// drained for a moment, so that closing does not reset the connection and
// destroy that reply before the client reads it.
const (
	lingerTime  = 500 * time.Millisecond
	lingerBytes = 1 << 20
)

// guardConn is one accepted connection as go-smtp sees it. Outside message
// data it hands go-smtp one command line per Read, so that it never reads
// ahead of the protocol state, and rewrites the bare `RCPT
// TO:<postmaster>`, which go-smtp's path parser refuses, into
// postmaster@<bounce domain> (RFC 5321 §4.5.1 requires it accepted).
// Message data passes through untouched: DATA from the server's 354 to the
// end-of-data line (tracked with go-smtp's own state machine), BDAT for the
// chunk size its command names. While data flows each read may wait the
// idle timeout (RFC 5321 §4.5.3.2.7); a timeout kills the connection so
// that the rest of the message is never read as commands.
type guardConn struct {
	net.Conn
	l  *limitListener
	ip string

	mu       sync.Mutex // guards mode, set by Write
	dataMode bool       // between 354 and the end of data
	dead     bool       // a data timeout: reads end

	in       []byte // read from the network, not yet looked at
	pend     []byte // a command line looked at, not yet all handed on
	pendRaw  int64  // BDAT chunk size that follows pend
	buf      []byte // read buffer in command mode
	midLine  bool   // the last byte handed on in command mode was not '\n'
	raw      int64  // BDAT chunk bytes still to pass through
	dstate   int    // DATA end-of-data state machine
	once     sync.Once
	closeErr error
}

// DATA end-of-data states, as go-smtp's dataReader.
const (
	stBeginLine = iota
	stDot
	stDotCR
	stCR
	stData
)

func (c *guardConn) Write(b []byte) (int, error) {
	// RFC 5321 §4.1.1.4: message data follows the 354 reply. go-smtp writes
	// each reply line in one Write.
	if bytes.HasPrefix(b, []byte("354")) {
		c.mu.Lock()
		c.dataMode, c.dstate = true, stBeginLine
		c.mu.Unlock()
	}
	return c.Conn.Write(b)
}

func (c *guardConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	data, dead := c.dataMode, c.dead
	c.mu.Unlock()
	if dead {
		return 0, io.EOF
	}
	if len(c.pend) > 0 { // the rest of a command line (go-smtp's buffer was short)
		n := copy(b, c.pend)
		c.pend = c.pend[n:]
		if len(c.pend) == 0 {
			c.raw, c.pendRaw = c.pendRaw, 0
		}
		return n, nil
	}
	if data || c.raw > 0 {
		return c.readData(b, data)
	}
	for {
		if i := bytes.IndexByte(c.in, '\n'); i >= 0 {
			line := c.in[:i+1]
			out, raw := line, int64(0)
			if !c.midLine {
				out, raw = c.command(line)
			}
			c.pend, c.pendRaw = append([]byte(nil), out...), raw
			c.in = c.in[i+1:]
			c.midLine = false
			return c.Read(b)
		}
		// A line longer than go-smtp accepts is not looked at: go-smtp
		// refuses it (500) and closes.
		if len(c.in) >= c.l.peek {
			n := copy(b, c.in)
			c.in = c.in[n:]
			c.midLine = true
			return n, nil
		}
		if c.buf == nil {
			c.buf = make([]byte, 4096)
		}
		n, err := c.Conn.Read(c.buf)
		c.in = append(c.in, c.buf[:n]...)
		if n == 0 && err != nil {
			if len(c.in) > 0 { // a last line without its end
				n := copy(b, c.in)
				c.in = c.in[n:]
				c.midLine = true
				return n, nil
			}
			return 0, err
		}
	}
}

// readData passes message bytes through: a BDAT chunk's remaining bytes, or
// DATA up to and including its end-of-data line.
func (c *guardConn) readData(b []byte, data bool) (int, error) {
	if c.raw > 0 && int64(len(b)) > c.raw {
		b = b[:c.raw]
	}
	var n int
	if len(c.in) > 0 {
		n = copy(b, c.in)
		c.in = c.in[n:]
	} else {
		if c.l.idle > 0 {
			_ = c.Conn.SetReadDeadline(time.Now().Add(c.l.idle))
		}
		var err error
		n, err = c.Conn.Read(b)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.mu.Lock()
				c.dead = true
				c.mu.Unlock()
			}
			if n == 0 {
				return 0, err
			}
		}
	}
	if c.raw > 0 {
		c.raw -= int64(n)
		return n, nil
	}
	if !data {
		return n, nil
	}
	for i := 0; i < n; i++ {
		if c.endOfData(b[i]) {
			// The bytes after the end of data are commands again.
			c.in = append(append([]byte(nil), b[i+1:n]...), c.in...)
			c.mu.Lock()
			c.dataMode = false
			c.mu.Unlock()
			c.midLine = false
			return i + 1, nil
		}
	}
	return n, nil
}

// endOfData runs go-smtp's dataReader state machine over one byte and
// reports whether it ended the data (<CRLF>.<CRLF>, RFC 5321 §4.1.1.4).
func (c *guardConn) endOfData(ch byte) bool {
	switch c.dstate {
	case stBeginLine:
		switch ch {
		case '.':
			c.dstate = stDot
		case '\r':
			c.dstate = stCR
		default:
			c.dstate = stData
		}
	case stDot:
		if ch == '\r' {
			c.dstate = stDotCR
		} else {
			c.dstate = stData
		}
	case stDotCR:
		if ch == '\n' {
			return true
		}
		c.dstate = stData
	case stCR:
		if ch == '\n' {
			c.dstate = stBeginLine
		} else {
			c.dstate = stData
		}
	case stData:
		if ch == '\r' {
			c.dstate = stCR
		}
	}
	return false
}

// command looks at one whole command line: a BDAT line is followed by a
// chunk of the size returned, to pass through; a bare postmaster RCPT is
// rewritten.
func (c *guardConn) command(line []byte) ([]byte, int64) {
	if size, ok := bdatSize(line); ok {
		return line, size
	}
	if out, ok := rewritePostmaster(line, c.l.domain); ok {
		return out, 0
	}
	return line, 0
}

// bdatSize parses a BDAT command exactly as go-smtp does (parseCmd, then
// handleBdat): go-smtp reads the chunk whenever the size parses.
func bdatSize(line []byte) (int64, bool) {
	s := strings.TrimRight(string(line), "\r\n")
	if len(s) < 6 || !strings.EqualFold(s[:4], "BDAT") || s[4] != ' ' {
		return 0, false
	}
	args := strings.Fields(s[5:])
	if len(args) == 0 || len(args) > 2 || (len(args) == 2 && !strings.EqualFold(args[1], "LAST")) {
		return 0, false
	}
	n, err := strconv.ParseUint(args[0], 10, 32)
	if err != nil {
		return 0, false
	}
	return int64(n), true
}

// rewritePostmaster turns `RCPT TO:<postmaster>` (any case, optional
// parameters) into `RCPT TO:<postmaster@domain>`: RFC 5321 §4.5.1 (and
// §4.1.1.3) require the bare reserved mailbox accepted, and go-smtp's path
// parser wants a domain.
func rewritePostmaster(line []byte, domain string) ([]byte, bool) {
	s := strings.TrimRight(string(line), "\r\n")
	if len(s) < 5 || !strings.EqualFold(s[:5], "RCPT ") {
		return nil, false
	}
	arg := strings.TrimSpace(s[5:])
	if len(arg) < 3 || !strings.EqualFold(arg[:3], "TO:") {
		return nil, false
	}
	path := strings.TrimSpace(arg[3:])
	const pm = "<postmaster>"
	if len(path) < len(pm) || !strings.EqualFold(path[:len(pm)], pm) {
		return nil, false
	}
	rest := path[len(pm):]
	if rest != "" && rest[0] != ' ' {
		return nil, false
	}
	return []byte("RCPT TO:<postmaster@" + domain + ">" + rest + "\r\n"), true
}

// Close releases the connection's slot once it is really closed, after
// draining what the client still sends for a moment (lingering close).
func (c *guardConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		closing := c.l.closing
		if !closing {
			c.l.linger.Add(1)
		}
		c.l.mu.Unlock()
		tc, ok := c.Conn.(*net.TCPConn)
		if closing || !ok {
			c.closeErr = c.Conn.Close()
			c.l.release(c.ip)
			return
		}
		c.closeErr = tc.CloseWrite()
		go func() {
			defer c.l.linger.Done()
			_ = tc.SetReadDeadline(time.Now().Add(lingerTime))
			_, _ = io.CopyN(io.Discard, tc, lingerBytes)
			_ = tc.Close()
			c.l.release(c.ip)
		}()
	})
	return c.closeErr
}
