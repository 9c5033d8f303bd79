package main

import (
	"bytes"
	"crypto/rand"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/bounce"
	"github.com/postwarden/postwarden/mta/inbound"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// openTestQueue opens a queue store in a temporary folder with a fresh
// data key.
func openTestQueue(t *testing.T) (*sealed.Box, *queue.Store) {
	t.Helper()
	key := make([]byte, sealed.KeySize)
	rand.Read(key)
	box, err := sealed.New(key)
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.Open(queue.Config{Path: filepath.Join(t.TempDir(), "queue.db"), Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return box, q
}

// suppressCalls records what a handed report would suppress.
type suppressCalls struct {
	mu  sync.Mutex
	got []string
}

func (s *suppressCalls) SuppressAddress(addr, list, reason, source, note string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, addr+" "+reason)
	return nil
}

// A report handed over by another node for a message erased here since
// (subject erase between the bounce and its hand-over; a message not in
// flight leaves no record) is dropped as one for an unknown message: Apply
// returns nil so the stream does not retry it, and nothing is suppressed by
// it. A message not erased takes the same report. (A message erased in
// flight keeps a scrubbed record; queue.RecordBounce refuses it with
// ErrErased: TestEraseActiveRecoveredAsCancelled in queue.)
func TestHandedReportForErasedMessage(t *testing.T) {
	box, q := openTestQueue(t)
	const gone, kept = "erased.person@acme.example", "kept.person@acme.example"
	res, err := q.Enqueue([]queue.NewMessage{
		{Campaign: "c1", List: "news", Key: "c1/1", From: "ana@example.com", To: gone, Body: []byte("Subject: x\r\n\r\nhi\r\n")},
		{Campaign: "c1", List: "news", Key: "c1/2", From: "ana@example.com", To: kept, Body: []byte("Subject: x\r\n\r\nhi\r\n")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.EraseRecipientIndex(box.IndexHex(gone), "DSR-7"); err != nil {
		t.Fatal(err)
	}
	supp := &suppressCalls{}
	var logged bytes.Buffer // the erased message must take the unknown message's path
	local, err := inbound.NewLocal(inbound.Deps{Bounces: queueBounces{q}, Suppressor: supp}, zerolog.New(&logged))
	if err != nil {
		t.Fatal(err)
	}
	hard := func(to string) []bounce.Report {
		return []bounce.Report{{Recipient: to, Action: "failed", Status: "5.1.1", Kind: bounce.KindHard}}
	}
	if err := local.Apply(res.IDs[0], hard(gone)); err != nil {
		t.Errorf("report for the erased message: %v; want dropped (nil)", err)
	}
	if len(supp.got) != 0 {
		t.Errorf("the erased message's report suppressed %v", supp.got)
	}
	if !strings.Contains(logged.String(), "inbound report for an unknown message dropped") {
		t.Errorf("the erased message was not taken for an unknown one; log:\n%s", logged.String())
	}
	if m, err := q.Get(res.IDs[0]); err == nil && (!m.Erased || m.To != "") {
		t.Errorf("the erased message after the report: %+v", m)
	}
	if err := local.Apply(res.IDs[1], hard(kept)); err != nil {
		t.Fatal(err)
	}
	if len(supp.got) != 1 || supp.got[0] != kept+" hard_bounce" {
		t.Errorf("the kept message's report suppressed %v; want %s hard_bounce", supp.got, kept)
	}
}
