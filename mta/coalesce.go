package mta

import "net"

// maxCoalesce bounds what a writeCoalescer holds before it writes.
const maxCoalesce = 64 << 10

// writeCoalescer gathers what the SMTP client writes and sends it when the
// client next reads, since a reply is then due, or when maxCoalesce bytes
// have gathered. go-smtp's 4 KB bufio.Writer would otherwise turn a 22 KB
// DATA into six write calls, each waking the receiver. Without PIPELINING
// the client reads after every command, so nothing is left waiting unsent.
// A failed write surfaces at the next Read, in the same SMTP stage.
type writeCoalescer struct {
	net.Conn
	buf []byte
}

func (w *writeCoalescer) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	if len(w.buf) >= maxCoalesce {
		if err := w.flush(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (w *writeCoalescer) Read(p []byte) (int, error) {
	if err := w.flush(); err != nil {
		return 0, err
	}
	return w.Conn.Read(p)
}

// Close sends what is gathered (a QUIT, say) before closing.
func (w *writeCoalescer) Close() error {
	w.flush()
	return w.Conn.Close()
}

func (w *writeCoalescer) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.Conn.Write(w.buf)
	w.buf = w.buf[:0]
	return err
}
