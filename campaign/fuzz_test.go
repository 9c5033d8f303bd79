package campaign

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// FuzzRecipients checks that no CSV makes the reader panic or loop, and that
// every row read is either checked or refused with a line.
func FuzzRecipients(f *testing.F) {
	f.Add([]byte("email,first_name\nana@acme.example,Ana\n"))
	f.Add([]byte("email\n\"ana@acme.example\"\n\"unclosed\n"))
	f.Add([]byte("\uFEFFEmail , Company,\nbo@x.example,\"a,\"\"b\"\"\nc\",\n"))
	f.Add([]byte("email\r\nx@y.example\r\n\"a\"b,c\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "f.csv")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		rs, err := openRecipients(path)
		if err != nil {
			return
		}
		defer rs.Close()
		_, _ = rs.each(context.Background(), nil, func(r row, rerr *RowError) bool {
			if rerr != nil && rerr.Line < 1 {
				t.Fatalf("row problem without a line: %v", rerr)
			}
			return true
		})
	})
}
