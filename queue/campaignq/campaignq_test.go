package campaignq

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/campaign"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression/sealed"
)

func openQueue(t *testing.T) *queue.Store {
	t.Helper()
	box, err := sealed.New(bytes.Repeat([]byte{7}, sealed.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.Open(queue.Config{Path: filepath.Join(t.TempDir(), "queue.db"), Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

func msg(to, body string) campaign.Message {
	return campaign.Message{Campaign: "spring", List: "news", Key: to, From: "news@sender.example", To: to,
		Body: []byte("Subject: hi\r\n\r\n" + body + "\r\n"), Pool: "warm-1"}
}

// TestAdapterEnqueue enqueues twice through the Adapter into a real queue:
// the second call adds only the new recipient and counts the repeats as
// duplicates, and every added message reads back as it went in.
func TestAdapterEnqueue(t *testing.T) {
	q := openQueue(t)
	a := Adapter{Q: q}
	var _ campaign.Queue = a

	added, dups, err := a.Enqueue([]campaign.Message{msg("ana@a.example", "one"), msg("bo@b.example", "two")})
	if err != nil || added != 2 || dups != 0 {
		t.Fatalf("first Enqueue = %d added, %d duplicates, %v; want 2, 0, nil", added, dups, err)
	}
	added, dups, err = a.Enqueue([]campaign.Message{msg("ana@a.example", "one again"), msg("bo@b.example", "two again"), msg("cy@c.example", "three")})
	if err != nil || added != 1 || dups != 2 {
		t.Fatalf("second Enqueue = %d added, %d duplicates, %v; want 1, 2, nil", added, dups, err)
	}

	want := map[string]string{"ana@a.example": "one", "bo@b.example": "two", "cy@c.example": "three"}
	got := map[string]bool{}
	err = q.List(queue.Filter{Campaign: "spring"}, func(m queue.Message) error {
		body, err := q.Body(m.ID)
		if err != nil {
			return err
		}
		w, ok := want[m.To]
		switch {
		case !ok:
			t.Errorf("unexpected message to %s", m.To)
		case m.List != "news" || m.From != "news@sender.example" || m.Key != m.To || m.Pool != "warm-1":
			t.Errorf("message %s = list %q, from %q, key %q, pool %q", m.ID, m.List, m.From, m.Key, m.Pool)
		case !bytes.Contains(body, []byte("\r\n\r\n"+w+"\r\n")):
			t.Errorf("body of the message to %s = %q, want the first one enqueued (%q)", m.To, body, w)
		}
		got[m.To] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("read back %d messages (%v), want %d", len(got), got, len(want))
	}
}
