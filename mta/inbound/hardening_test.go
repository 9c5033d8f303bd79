package inbound_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postwarden/postwarden/mta/inbound"
)

// socketAddr matches an IP:port, as Go's net errors print them.
var socketAddr = regexp.MustCompile(`\d+\.\d+\.\d+\.\d+:\d+|\[[0-9a-fA-F:]+\]:\d+`)

// rawConn is an SMTP conversation typed by hand.
type rawConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

// dialRaw connects from 127.0.0.1 and reads the greeting.
func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawConn{t: t, c: c, r: bufio.NewReader(c)}
	if g := rc.reply(); !strings.HasPrefix(g, "220 ") {
		t.Fatalf("greeting %q", g)
	}
	return rc
}

// reply reads one reply (all its lines); "" when the connection ends first.
func (rc *rawConn) reply() string {
	rc.t.Helper()
	_ = rc.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var out strings.Builder
	for {
		line, err := rc.r.ReadString('\n')
		out.WriteString(line)
		if err != nil {
			return out.String()
		}
		if len(line) >= 4 && line[3] == ' ' {
			return out.String()
		}
	}
}

// cmd sends one line and returns the reply.
func (rc *rawConn) cmd(line string) string {
	rc.t.Helper()
	rc.write(line + "\r\n")
	return rc.reply()
}

func (rc *rawConn) write(s string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, s); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

// expect fails unless reply starts with want.
func expect(t *testing.T, what, reply, want string) {
	t.Helper()
	if !strings.HasPrefix(reply, want) {
		t.Errorf("%s: reply %q, want %q…", what, reply, want)
	}
	if socketAddr.MatchString(reply) {
		t.Errorf("%s: reply %q names a socket address", what, reply)
	}
}

// RFC 5321 §4.5.1: RCPT TO:<postmaster> without a domain is accepted, and
// the message is handled as mail to postmaster@bounce_domain: a report in
// it that carries one of our VERP addresses acts.
func TestBarePostmaster(t *testing.T) {
	w := newWorld(t, inbound.Config{})
	carol := w.codec.Address(w.ids["carol@initech.example"])
	if step, err := w.send("feedback@isp.example", "postmaster", fixture(t, "arf-abuse.eml", carol)); err != nil {
		t.Fatalf("bare postmaster: %s: %v", step, err)
	}
	w.checkSupp("carol@initech.example", "", "complaint")

	rc := dialRaw(t, w.srv.Addr())
	expect(t, "EHLO", rc.cmd("EHLO mx.example.net"), "250")
	expect(t, "MAIL", rc.cmd("MAIL FROM:<>"), "250")
	expect(t, "RCPT PostMaster", rc.cmd("RCPT TO: <PostMaster>"), "250")
	expect(t, "RCPT postmaster of another domain", rc.cmd("RCPT TO:<postmaster@example.org>"), "550 5.7.1")
	expect(t, "DATA", rc.cmd("DATA"), "354")
	// Message data is never rewritten: a line like the command passes as it is.
	rc.write("Subject: report\r\n\r\nRCPT TO:<postmaster>\r\n.\r\n")
	expect(t, "end of data", rc.reply(), "250")

	// A BDAT chunk holding the same line keeps its size: a rewrite would
	// push the chunk's last bytes into the command stream.
	expect(t, "MAIL 2", rc.cmd("MAIL FROM:<>"), "250")
	expect(t, "RCPT 2", rc.cmd("RCPT TO:<postmaster>"), "250")
	chunk := "Subject: report\r\n\r\nRCPT TO:<postmaster>\r\n"
	rc.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(chunk), chunk))
	expect(t, "BDAT", rc.reply(), "250")
	expect(t, "NOOP after BDAT", rc.cmd("NOOP"), "250")
}

// A client that stops sending in the middle of the data gets 421 4.4.2
// (RFC 5321 §4.2.5: a transient failure is 4yz) naming no socket address,
// and the connection closes: the rest of its data is never read as commands.
func TestDataTimeoutIsTemporary(t *testing.T) {
	w := newWorld(t, inbound.Config{ReadTimeout: 300 * time.Millisecond})
	rc := dialRaw(t, w.srv.Addr())
	expect(t, "EHLO", rc.cmd("EHLO mx.example.net"), "250")
	expect(t, "MAIL", rc.cmd("MAIL FROM:<>"), "250")
	expect(t, "RCPT", rc.cmd("RCPT TO:<"+w.codec.Address(w.ids["dave@globex.example"])+">"), "250")
	expect(t, "DATA", rc.cmd("DATA"), "354")
	rc.write("Subject: slow\r\n\r\nhalf a ")
	expect(t, "stalled data", rc.reply(), "421 4.4.2 ")
	// Whatever comes later is not a command.
	_, _ = io.WriteString(rc.c, "line\r\n.\r\nMAIL FROM:<>\r\n")
	if rest, _ := io.ReadAll(rc.r); strings.Contains(string(rest), "250") {
		t.Errorf("after the timeout the server still answered: %q", rest)
	}
}

// Lines longer than RFC 5321's 1000 octets (and go-smtp's default 2000)
// are taken (§4.5.3.1: receivers impose as few limits as possible); a line
// over MaxLineLength gets §4.5.3.1.9's "500 Line too long", without the
// internal error text.
func TestLongLines(t *testing.T) {
	w := newWorld(t, inbound.Config{})
	ana := w.codec.Address(w.ids["ana@acme.example"])
	body := fixture(t, "postfix-5.1.1.eml", ana)
	long := append(append([]byte(nil), body...), []byte("X-Note: "+strings.Repeat("x", 3000)+"\n")...)
	if step, err := w.send("", ana, long); err != nil {
		t.Fatalf("3000-octet line: %s: %v", step, err)
	}
	w.checkSupp("ana@acme.example", "", "hard_bounce")

	bob := w.codec.Address(w.ids["bob@acme.example"])
	rc := dialRaw(t, w.srv.Addr())
	expect(t, "EHLO", rc.cmd("EHLO mx.example.net"), "250")
	expect(t, "MAIL", rc.cmd("MAIL FROM:<>"), "250")
	expect(t, "RCPT", rc.cmd("RCPT TO:<"+bob+">"), "250")
	expect(t, "DATA", rc.cmd("DATA"), "354")
	rc.write("Subject: x\r\n\r\n" + strings.Repeat("y", inbound.DefaultMaxLineLength+10) + "\r\n.\r\n")
	expect(t, "over-long line", rc.reply(), "500 5.6.0 Line too long")
	w.checkSupp("bob@acme.example", "", "")
}

// The connection cap counts every client address together.
func TestGlobalConnectionCap(t *testing.T) {
	w := newWorld(t, inbound.Config{MaxConns: 3})
	var open []*smtp.Client
	for i := range 3 {
		c, err := dialFrom(w.srv.Addr(), i)
		if err == nil {
			err = c.Hello("mx.example.net")
		}
		if err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
		open = append(open, c)
	}
	c, err := dialFrom(w.srv.Addr(), 3)
	if err == nil {
		err = c.Hello("mx.example.net")
		c.Close()
	}
	if n, e := code(err); n != 421 || e != (smtp.EnhancedCode{4, 7, 0}) {
		t.Errorf("fourth connection from a fourth address: %v, want 421 4.7.0", err)
	}
	for _, c := range open {
		c.Close()
	}
	if cl, err := dialEventually(w.srv.Addr()); err != nil {
		t.Errorf("after the others closed: %v", err)
	} else {
		cl.Close()
	}
}

// dialFrom connects from loopback address 127.0.0.(2+i%200).
func dialFrom(addr string, i int) (*smtp.Client, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%200))}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return smtp.NewClient(c), nil
}

// 100 clients on 30 addresses send a 300 kB message each, all at once: the
// server never holds more than MaxBytesInFlight of message data, and every
// message it does not take gets a 4yz, so its sender retries. (The same
// load at 10 MB a message, against the daemon's RSS, is cmd/postwarden's
// TestInboundMemoryBound; 1 GB through -race here would take minutes.) Clients write all their data,
// then wait for each other before ending it.
func TestBytesInFlightCap(t *testing.T) {
	const clients, addrs, size = 100, 30, 300_000
	const cap = 3 << 20
	w := newWorld(t, inbound.Config{MaxBytesInFlight: cap, MaxMessageBytes: 1 << 20})
	body := bigMessage(size)

	outcomes := runBig(t, w.srv.Addr(), "postmaster@"+domain, clients, addrs, body)
	accepted, refused := 0, 0
	for i, err := range outcomes {
		n, _ := code(err)
		switch {
		case err == nil:
			accepted++
		case n/100 == 4:
			refused++
			var se *smtp.SMTPError
			if errors.As(err, &se) && socketAddr.MatchString(se.Message) {
				t.Errorf("client %d: reply %q names a socket address", i, se.Message)
			}
		default:
			t.Errorf("client %d: %v, want 250 or a 4yz", i, err)
		}
	}
	st := w.srv.Stats()
	t.Logf("accepted %d, refused %d (4yz), peak bytes in flight %d MiB", accepted, refused, st.PeakBytesInFlight>>20)
	if st.PeakBytesInFlight > cap {
		t.Errorf("peak bytes in flight %d > cap %d", st.PeakBytesInFlight, cap)
	}
	if accepted == 0 || refused == 0 {
		t.Errorf("accepted %d, refused %d: the cap was not exercised", accepted, refused)
	}
	if st.BytesInFlight != 0 {
		t.Errorf("bytes in flight after the last message: %d", st.BytesInFlight)
	}
}

// runBig has n clients on addrs loopback addresses send body to rcpt at
// once: each writes all of its data, then all wait for each other, then
// each ends its data, so all messages are in the server at the same time.
// It returns each client's error (nil for 250).
func runBig(t *testing.T, addr, rcpt string, n, addrs int, body []byte) []error {
	t.Helper()
	out := make([]error, n)
	var sent, done sync.WaitGroup
	sent.Add(n)
	done.Add(n)
	release := make(chan struct{})
	for i := range n {
		go func() {
			defer done.Done()
			arrived := false
			arrive := func() {
				if !arrived {
					arrived = true
					sent.Done()
				}
			}
			defer arrive()
			c, err := dialFrom(addr, i%addrs)
			if err != nil {
				out[i] = err
				return
			}
			defer c.Close()
			if err = c.Hello("mx.example.net"); err == nil {
				if err = c.Mail("", nil); err == nil {
					err = c.Rcpt(rcpt, nil)
				}
			}
			var wc io.WriteCloser
			if err == nil {
				wc, err = c.Data()
			}
			if err == nil {
				_, err = wc.Write(body)
			}
			arrive()
			<-release
			if err == nil {
				err = wc.Close()
			}
			out[i] = err
		}()
	}
	sent.Wait()
	close(release)
	done.Wait()
	return out
}

// bigMessage is a message of about size bytes in 100-octet CRLF lines.
func bigMessage(size int) []byte {
	line := []byte(strings.Repeat("0123456789", 9) + "01234567\r\n")
	body := append([]byte("Subject: big\r\n\r\n"), bytes.Repeat(line, size/len(line))...)
	return body
}
