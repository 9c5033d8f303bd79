package campaign

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// dictQueue is a fakeQueue that also keeps compression dictionaries.
type dictQueue struct {
	*fakeQueue
	samples [][]byte
	err     error
}

func (q *dictQueue) PutDictionary(sample []byte) (uint32, error) {
	if q.err != nil {
		return 0, q.err
	}
	q.samples = append(q.samples, bytes.Clone(sample))
	return 0xd1c7, nil
}

func TestSendStoresDictionary(t *testing.T) {
	spec := testSpec(t, mixedCSV)
	q := &dictQueue{fakeQueue: newFakeQueue()}
	deps := testDeps(q.fakeQueue, &fakeSuppressions{})
	deps.Queue, deps.Dictionary = q, q
	sum, err := Send(context.Background(), spec, deps, nil)
	if err != nil || sum.Enqueued != 3 {
		t.Fatalf("Send = %+v, %v", sum, err)
	}
	if len(q.samples) != 1 {
		t.Fatalf("%d dictionaries stored, want 1", len(q.samples))
	}
	for _, m := range q.msgs {
		if m.Dict != 0xd1c7 {
			t.Errorf("message to %s has dictionary %x, want d1c7", m.To, m.Dict)
		}
	}
	sample := q.samples[0]
	// (Ana Ruiz is also the sender, in From.)
	for _, personal := range []string{"ana@", "Acme", "Fred", "bob@", "Stone", "fred@", "Quinn", "Zeta", "gold"} {
		if bytes.Contains(sample, []byte(personal)) {
			t.Errorf("the dictionary sample holds %q from the recipients file", personal)
		}
	}
	p := parseMessage(t, sample)
	real := parseMessage(t, q.get(t, spec.ID, "ana@example.com").Body)
	if to := p.header.Get("To"); !strings.Contains(to, sampleAddress) {
		t.Errorf("sample To = %q", to)
	}
	want := "<" + (fakeLinks{}).UnsubscribeURL(sampleAddress, spec.List, spec.ID) + ">"
	if got := p.header.Get("List-Unsubscribe"); got != want {
		t.Errorf("sample List-Unsubscribe = %q, want %q", got, want)
	}
	for _, h := range []string{"From", "Reply-To", "List-Id", "List-Unsubscribe-Post", "MIME-Version"} {
		if p.header.Get(h) != real.header.Get(h) {
			t.Errorf("sample %s = %q, a message has %q", h, p.header.Get(h), real.header.Get(h))
		}
	}
	if !strings.Contains(p.text, spec.PrivacyURL) || len(p.header.Get("Message-Id")) != len(real.header.Get("Message-Id")) {
		t.Errorf("sample lacks the privacy link or a Message-ID of the usual shape:\n%s", sample)
	}

	// A re-run, later, stores the same sample: the queue keeps one dictionary.
	later := time.Date(2026, 10, 2, 9, 0, 0, 0, time.UTC)
	deps.Now = func() time.Time { return later }
	if _, err := Send(context.Background(), spec, deps, nil); err != nil {
		t.Fatal(err)
	}
	if len(q.samples) != 2 || !bytes.Equal(q.samples[0], q.samples[1]) {
		t.Errorf("a re-run stored another sample:\n%s\n---\n%s", q.samples[0], q.samples[1])
	}
}

func TestSendDictionaryErrorStops(t *testing.T) {
	spec := testSpec(t, mixedCSV)
	q := &dictQueue{fakeQueue: newFakeQueue(), err: errors.New("disk full")}
	deps := testDeps(q.fakeQueue, &fakeSuppressions{})
	deps.Queue, deps.Dictionary = q, q
	if _, err := Send(context.Background(), spec, deps, nil); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Send with a failing dictionary store: %v", err)
	}
	if q.len() != 0 {
		t.Fatalf("%d messages enqueued after the dictionary failed", q.len())
	}
}

// Without Deps.Dictionary no dictionary is stored, even when the queue
// could keep one: the power is wired, never guessed.
func TestSendWithoutDictionary(t *testing.T) {
	spec := testSpec(t, mixedCSV)
	q := &dictQueue{fakeQueue: newFakeQueue()}
	deps := testDeps(q.fakeQueue, &fakeSuppressions{})
	deps.Queue = q
	sum, err := Send(context.Background(), spec, deps, nil)
	if err != nil || sum.Enqueued != 3 {
		t.Fatalf("Send = %+v, %v", sum, err)
	}
	if len(q.samples) != 0 {
		t.Fatalf("%d dictionaries stored, want none", len(q.samples))
	}
	for _, m := range q.msgs {
		if m.Dict != 0 {
			t.Errorf("message to %s has dictionary %x, want none", m.To, m.Dict)
		}
	}
}
