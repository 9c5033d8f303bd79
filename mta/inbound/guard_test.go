package inbound

import (
	"io"
	"net"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// guardConn hands on the same stream whatever the reader's buffer size:
// the postmaster rewrite happens on whole command lines only, a BDAT chunk
// passes untouched (a line in it like the command is not rewritten), and
// DATA passes untouched up to its end, after which commands are looked at
// again.
func TestGuardConnStream(t *testing.T) {
	long := "RCPT TO:<" + strings.Repeat("a", 5000) + "@bounce.example.com>\r\n"
	in := "EHLO x\r\nRCPT TO:<postmaster>\r\nBDAT 22" + strings.Repeat(" ", 40) + "\r\nRCPT TO:<postmaster>\r\n" + long +
		"DATA\r\nRCPT TO:<postmaster>\r\n.\r\nrcpt to:<Postmaster>\r\n"
	want := "EHLO x\r\nRCPT TO:<postmaster@bounce.example.com>\r\nBDAT 22" + strings.Repeat(" ", 40) + "\r\nRCPT TO:<postmaster>\r\n" + long +
		"DATA\r\nRCPT TO:<postmaster>\r\n.\r\nRCPT TO:<postmaster@bounce.example.com>\r\n"
	for _, size := range []int{1, 3, 7, 64, 4096} {
		client, server := net.Pipe()
		l := &limitListener{domain: "bounce.example.com", peek: 64<<10 + 2, n: map[string]int{"p": 1}, total: 1, log: zerolog.Nop()}
		g := &guardConn{Conn: server, l: l, ip: "p"}
		go func() {
			_, _ = io.WriteString(client, in)
			client.Close()
		}()
		var got strings.Builder
		buf := make([]byte, size)
		for {
			if strings.HasSuffix(got.String(), "DATA\r\n") {
				_, _ = g.Write([]byte("354 Go ahead\r\n")) // the pipe is closed: only the mode change counts
			}
			n, err := g.Read(buf)
			got.Write(buf[:n])
			if err != nil {
				break
			}
		}
		if got.String() != want {
			t.Errorf("buffer %d:\ngot  %q\nwant %q", size, got.String(), want)
		}
		g.Close()
	}
}
