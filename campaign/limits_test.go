package campaign

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// writeCSV writes head, a field of n bytes of fill (quoted when quote), then
// tail, streaming, so the test itself holds no copy of the big field.
func writeCSV(t *testing.T, head string, n int, fill byte, quote bool, tail string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "big.csv")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	w.WriteString(head)
	if quote {
		w.WriteByte('"')
	}
	chunk := []byte(strings.Repeat(string(fill), 4096))
	for left := n; left > 0; left -= len(chunk) {
		w.Write(chunk[:min(left, len(chunk))])
	}
	if quote {
		w.WriteByte('"')
	}
	w.WriteString(tail)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// allocated returns the bytes fn allocated.
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// A field over (64<<10) stops the read with an error naming the file,
// the line and the column, having read little more than the cap: an 8 MB
// field costs well under 8 MB of allocations, in Validate and in Send. Nothing
// of it or after it is enqueued.
func TestCSVFieldOverCap(t *testing.T) {
	const head = "email,first_name,company\nana@acme.example,Ana,Acme\nbob@acme.example,Bob,"
	for _, tc := range []struct {
		name  string
		fill  byte
		quote bool
	}{
		{"bare", 'x', false},
		{"quoted with line breaks", '\n', true}, // one field over many physical lines
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := testSpec(t, "")
			spec.Recipients = writeCSV(t, head, 8<<20, tc.fill, tc.quote, "\ncy@acme.example,Cy,Initech\n")
			want := fmt.Sprintf("%s:3: column 3 (company): field longer than %d bytes", spec.Recipients, (64 << 10))

			var errs []error
			var sum Summary
			if a := allocated(func() { sum, errs = Validate(context.Background(), spec) }); a > 4<<20 {
				t.Errorf("Validate allocated %d bytes for an 8 MB field", a)
			}
			var re RowError
			if len(errs) != 1 || !strings.HasPrefix(errs[0].Error(), want) || !errors.As(errs[0], &re) || re.Line != 3 {
				t.Fatalf("Validate: %v, want one error %q", errs, want)
			}
			if sum.Rows != 1 {
				t.Errorf("Validate read %d rows, want the 1 before the long field", sum.Rows)
			}

			q := newFakeQueue()
			var err error
			if a := allocated(func() { sum, err = Send(context.Background(), spec, testDeps(q, &fakeSuppressions{}), nil) }); a > 8<<20 {
				t.Errorf("Send allocated %d bytes for an 8 MB field", a)
			}
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("Send: %v, want %q", err, want)
			}
			if q.len() != sum.Enqueued || q.len() > 1 {
				t.Errorf("queue holds %d, summary %d enqueued; want at most the 1 row before the long field", q.len(), sum.Enqueued)
			}
		})
	}
}

// Quoted fields just under the cap, holding commas, quote pairs and line
// breaks, pass whole; a row of many small fields over (1<<20) is refused.
func TestCSVFieldCapFollowsQuotes(t *testing.T) {
	inner := strings.Repeat(`a,"" b`+"\n", ((64<<10)-2)/8)
	spec := testSpec(t, "email,first_name,notes\nana@acme.example,Ana,\""+inner+"\"\nbob@acme.example,\"Bob\",\"\"\n")
	sum, errs := Validate(context.Background(), spec)
	if len(errs) != 0 || sum.Rows != 2 {
		t.Fatalf("Validate: %d rows, %v", sum.Rows, errs)
	}

	many := strings.Repeat("x,", (1<<20)/2+1)
	spec = testSpec(t, "email,first_name\nana@acme.example,Ana\n"+many+"\n")
	_, errs = Validate(context.Background(), spec)
	want := fmt.Sprintf("%s:3: row: row longer than %d bytes", spec.Recipients, (1 << 20))
	if len(errs) != 1 || !strings.HasPrefix(errs[0].Error(), want) {
		t.Fatalf("Validate: %v, want %q", errs, want)
	}
}
