package replica

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/postwarden/postwarden/suppression"
)

// TestWriter: the store the binary hands out on a cluster node writes
// through the stream: a change made through A's writer is read back on A at
// once and reaches B; Remove reports whether there was an entry and keeps
// the store's refusals; Erase returns the tombstone applied here.
func TestWriter(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	a := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "a.db"), cfgFor("a"))
	b := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfgFor("b"))
	w := a.rep.Writer()

	if err := w.SuppressAddress("Ann@Example.com", "", "unsubscribed", "one-click", ""); err != nil {
		t.Fatal(err)
	}
	if r, ok := suppressed(t, a.store, "ann@example.com"); !ok || r != "unsubscribed" {
		t.Fatalf("A: %q %v, want unsubscribed at once", r, ok)
	}
	eventually(t, "B sees the unsubscribe", func() bool { _, ok := suppressed(t, b.store, "ann@example.com"); return ok })
	if found, err := w.Remove("ann@example.com", ""); err != nil || !found {
		t.Fatalf("Remove: %v %v", found, err)
	}
	eventually(t, "B sees the removal", func() bool { _, ok := suppressed(t, b.store, "ann@example.com"); return !ok })
	if found, err := w.Remove("nobody@example.com", ""); err != nil || found {
		t.Fatalf("Remove of nothing: %v %v", found, err)
	}
	if err := w.Restrict("cy@example.org", "objection"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Remove("cy@example.org", ""); !errors.Is(err, suppression.ErrRestricted) {
		t.Fatalf("Remove of a restriction: %v, want ErrRestricted", err)
	}
	if found, err := w.Unrestrict("cy@example.org"); err != nil || !found {
		t.Fatalf("Unrestrict: %v %v", found, err)
	}
	tomb, err := w.Erase("dee@example.net", "req-1", nil)
	if err != nil || tomb.Reason != suppression.Erased {
		t.Fatalf("Erase: %+v %v", tomb, err)
	}
	eventually(t, "B holds the tombstone", func() bool {
		r, ok := suppressed(t, b.store, "dee@example.net")
		return ok && r == "erased"
	})
}
