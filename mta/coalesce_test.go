package mta

import (
	"bytes"
	"io"
	"net"
	"testing"
)

// countingConn counts the writes that reach the network.
type countingConn struct {
	net.Conn
	writes int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes++
	return c.Conn.Write(p)
}

// Writes gather until the client reads (its reply is due) and go out as one;
// past maxCoalesce they go out at once; Close sends what is left.
func TestWriteCoalescer(t *testing.T) {
	client, server := net.Pipe()
	first := "MAIL FROM:<a@example.com>\r\nline one\r\nline two\r\n"
	got := make(chan []byte, 1)
	go func() {
		head := make([]byte, len(first))
		io.ReadFull(server, head)
		server.Write([]byte("250 ok\r\n"))
		rest, _ := io.ReadAll(server)
		got <- append(head, rest...)
	}()
	cc := &countingConn{Conn: client}
	w := &writeCoalescer{Conn: cc}
	var want bytes.Buffer
	for _, s := range []string{"MAIL FROM:<a@example.com>\r\n", "line one\r\n", "line two\r\n"} {
		if _, err := w.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
		want.WriteString(s)
	}
	if cc.writes != 0 {
		t.Fatalf("%d writes before any read, want 0", cc.writes)
	}
	reply := make([]byte, 8)
	if _, err := io.ReadFull(w, reply); err != nil || string(reply) != "250 ok\r\n" {
		t.Fatalf("read the reply: %q, %v", reply, err)
	}
	if cc.writes != 1 {
		t.Fatalf("%d writes after the read, want 1", cc.writes)
	}
	big := bytes.Repeat([]byte("x"), maxCoalesce)
	if _, err := w.Write(big); err != nil {
		t.Fatal(err)
	}
	want.Write(big)
	if cc.writes != 2 {
		t.Fatalf("%d writes after passing maxCoalesce, want 2", cc.writes)
	}
	if _, err := w.Write([]byte("QUIT\r\n")); err != nil {
		t.Fatal(err)
	}
	want.WriteString("QUIT\r\n")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if cc.writes != 3 {
		t.Fatalf("%d writes after Close, want 3", cc.writes)
	}
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("server got %d bytes, want %d", len(b), want.Len())
	}
}
