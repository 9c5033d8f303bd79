package subscribers

import (
	"bytes"
	"errors"
	"iter"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

type rec struct{ k, v []byte }

// export returns s's state as records.
func export(t *testing.T, s *Store) ([]rec, uint64) {
	t.Helper()
	var out []rec
	seq, err := s.ExportState(func(k, v []byte) error {
		out = append(out, rec{bytes.Clone(k), bytes.Clone(v)})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, seq
}

func records(rs []rec) iter.Seq2[[]byte, []byte] {
	return func(yield func([]byte, []byte) bool) {
		for _, r := range rs {
			if !yield(r.k, r.v) {
				return
			}
		}
	}
}

// TestExportLoadState: a store's exported state loads into an empty store
// (same key) with every history, erasure marker and applied sequence; the
// records hold no personal field in clear; an event written after the load
// is its history's latest; a store that holds anything else refuses the
// load, and a malformed record leaves the store empty.
func TestExportLoadState(t *testing.T) {
	src, _ := newStore(t)
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ops := []Op{
		SubscribeOp(Subscription{Address: "Ann.Secret@Example.com", List: "news", Name: "Ann Secret", Company: "Secret Corp", ViaDoubleOptIn: true}),
		ConfirmOp("ann.secret@example.com", "news", "192.0.2.77", "SecretBrowser/1"),
		ImportOp(Candidate{Address: "bo@example.org", List: "news", ConsentedAt: at, IP: "198.51.100.3"}),
		UnsubscribeOp("bo@example.org", "news", "link"),
		SubscribeOp(Subscription{Address: "eve@example.net", List: "news", Name: "Eve"}),
		ImportOp(Candidate{Address: "cy@example.com", List: "offers"}),
	}
	for i := range ops {
		op, _, err := src.CheckOp(ops[i])
		if err != nil {
			t.Fatalf("CheckOp %d: %v", i, err)
		}
		if refused, err := src.ApplyOps([]Applied{{Seq: uint64(10 + i), Op: op}}); err != nil || refused[0] != nil {
			t.Fatalf("ApplyOps %d: %v, %v", i, refused, err)
		}
	}
	if _, err := src.Erase("eve@example.net", "req-9"); err != nil {
		t.Fatal(err)
	}
	rs, seq := export(t, src)
	if seq != 15 {
		t.Fatalf("ExportState at %d; want 15", seq)
	}
	for _, r := range rs {
		for _, secret := range []string{"ann.secret", "Ann Secret", "Secret Corp", "192.0.2.77", "SecretBrowser", "bo@example.org", "eve@example.net"} {
			if bytes.Contains(bytes.ToLower(r.k), bytes.ToLower([]byte(secret))) || bytes.Contains(bytes.ToLower(r.v), bytes.ToLower([]byte(secret))) {
				t.Errorf("record %q holds %q in clear", r.k, secret)
			}
		}
	}

	dst := openAt(t, filepath.Join(t.TempDir(), "joined.db"), testBox(t, 7))
	defer dst.Close()
	bad := append(append([]rec{}, rs...), rec{[]byte("e\x01short"), []byte{codeConfirmed, '{', '}'}})
	if _, err := dst.LoadState(records(bad)); err == nil {
		t.Fatal("LoadState took a malformed event key")
	}
	if ok, err := dst.StateEmpty(); err != nil || !ok {
		t.Fatalf("after a refused load: empty %v, %v", ok, err)
	}
	if h, _ := dst.History("ann.secret@example.com"); len(h) != 0 {
		t.Fatalf("a refused load left %+v", h)
	}
	if got, err := dst.LoadState(records(rs)); err != nil || got != 15 {
		t.Fatalf("LoadState = %d, %v; want 15", got, err)
	}
	for _, addr := range []string{"ann.secret@example.com", "bo@example.org", "eve@example.net", "cy@example.com"} {
		hs, _ := src.History(addr)
		hd, err := dst.History(addr)
		if err != nil || !reflect.DeepEqual(hs, hd) || len(hd) == 0 {
			t.Errorf("%s: loaded history %+v, %v\nwant %+v", addr, hd, err, hs)
		}
	}
	wantState(t, dst, "eve@example.net", "news", StateErased)
	wantConfirmed(t, dst, "ann.secret@example.com", "news", true)
	if got, _ := dst.AppliedSeq(); got != 15 {
		t.Errorf("applied sequence %d; want 15", got)
	}
	var members []string
	if err := dst.List("news", func(s Subscriber) error { members = append(members, s.Address); return nil }); err != nil || len(members) != 2 {
		t.Errorf("news members after the load: %v, %v; want Ann and Bo", members, err)
	}

	// Loaded and nothing applied since: a join run again loads again.
	if _, err := dst.LoadState(records(rs)); err != nil {
		t.Fatalf("LoadState again over a load: %v", err)
	}
	// Written after the load: the latest of its history.
	op, _, err := dst.CheckOp(SubscribeOp(Subscription{Address: "bo@example.org", List: "news", Pending: true}))
	if err != nil {
		t.Fatal(err)
	}
	if refused, err := dst.ApplyOps([]Applied{{Seq: 16, Op: op}}); err != nil || refused[0] != nil {
		t.Fatalf("ApplyOps after the load: %v, %v", refused, err)
	}
	wantState(t, dst, "bo@example.org", "news", StatePending)
	if _, err := dst.LoadState(records(rs)); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("LoadState over an applied op = %v; want ErrNotEmpty", err)
	}
	if _, err := src.LoadState(records(rs)); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("LoadState into the source = %v; want ErrNotEmpty", err)
	}
	local, _ := newStore(t)
	mustSubscribe(t, local, Subscription{Address: "dee@example.com", List: "news"})
	if _, err := local.LoadState(records(rs)); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("LoadState into a store with a local write = %v; want ErrNotEmpty", err)
	}
}
