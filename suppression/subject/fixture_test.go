package subject_test

import (
	"bytes"
	"crypto/rand"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/retention"
	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/subject"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

// fixture is a data directory of real stores in a temp dir and a real
// capture folder, wired as the binary wires them.
type fixture struct {
	dir, outbox string
	box         *sealed.Box
	q           *queue.Store
	supp        *suppression.Store
	subs        *subscribers.Store
	audit       *audit.Log
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir()}
	f.outbox = filepath.Join(f.dir, "outbox")
	if err := os.Mkdir(f.outbox, 0o700); err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	rand.Read(key)
	var err error
	if f.box, err = sealed.New(key); err != nil {
		t.Fatal(err)
	}
	log := zerolog.Nop()
	if f.q, err = queue.Open(queue.Config{Path: f.path("queue"), Box: f.box}, log); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.q.Close() })
	if f.supp, err = suppression.Open(suppression.Config{Path: f.path("suppression"), Box: f.box}, log); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.supp.Close() })
	if f.subs, err = subscribers.Open(subscribers.Config{Path: f.path("subscribers"), Box: f.box}, log); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.subs.Close() })
	if f.audit, err = audit.Open(f.path("audit"), 0, log); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.audit.Close() })
	return f
}

func (f *fixture) path(store string) string { return filepath.Join(f.dir, store+".db") }

func (f *fixture) deps() subject.Deps {
	return subject.Deps{Queue: queueAdapter{f.q}, Suppression: f.supp, Subscribers: f.subs, Audit: f.audit,
		Outbox: mta.NewOutbox(f.outbox), Index: f.box, Log: zerolog.Nop(), Stores: []retention.Store{
			{Name: "queue", Path: f.path("queue"), DB: f.q},
			{Name: "suppression", Path: f.path("suppression"), DB: f.supp},
			{Name: "subscribers", Path: f.path("subscribers"), DB: f.subs},
		}}
}

// person puts addr (named name) in every store: a confirmed sign-up, a
// suppression on another list, an audit entry naming them by index, a
// queued message with its capture file, and a capture file whose queue
// record is gone. It returns the queue id.
func (f *fixture) person(t *testing.T, addr, name, campaign string) string {
	t.Helper()
	if _, err := f.subs.Subscribe(subscribers.Subscription{Address: addr, List: "news", Name: name, Company: "Acme",
		Source: "form", IP: "203.0.113.9", ConsentText: "yes please"}); err != nil {
		t.Fatal(err)
	}
	if err := f.supp.SuppressAddress(addr, "offers", "unsubscribed", "test", ""); err != nil {
		t.Fatal(err)
	}
	ref, err := subject.Ref(f.box, addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.audit.Append(audit.Entry{Who: "local:test", Action: "suppress.add", Target: ref, Reason: "unsubscribed"}); err != nil {
		t.Fatal(err)
	}
	body := []byte("To: " + name + " <" + addr + ">\r\nSubject: hello\r\n\r\nDear " + name + ",\r\n")
	res, err := f.q.Enqueue([]queue.NewMessage{{Campaign: campaign, List: "news", Key: campaign + addr, From: "news@sender.example", To: addr, Body: body}})
	if err != nil {
		t.Fatal(err)
	}
	id := res.IDs[0]
	f.capture(t, id, body)
	f.capture(t, "pruned"+campaign, body)
	return id
}

func (f *fixture) capture(t *testing.T, id string, body []byte) {
	t.Helper()
	if err := os.WriteFile(mta.NewOutbox(f.outbox).Path(id), body, 0o600); err != nil {
		t.Fatal(err)
	}
}

// entries is the whole audit log.
func (f *fixture) entries(t *testing.T) []audit.Entry {
	t.Helper()
	var all []audit.Entry
	if err := f.audit.List(time.Time{}, func(e audit.Entry) error { all = append(all, e); return nil }); err != nil {
		t.Fatal(err)
	}
	return all
}

// scan reports every file under dir whose raw bytes hold a needle, in any case.
func scan(t *testing.T, dir string, needles ...string) []string {
	t.Helper()
	var hits []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, n := range needles {
			if bytes.Contains(bytes.ToLower(b), bytes.ToLower([]byte(n))) {
				hits = append(hits, filepath.Base(p)+": "+n)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

// queueAdapter adapts queue.Store to subject.Queue, as cmd/postwarden does.
type queueAdapter struct{ q *queue.Store }

func (a queueAdapter) MessagesFor(addr string) ([]subject.Message, error) {
	msgs, err := a.q.MessagesFor(addr)
	var out []subject.Message
	for _, m := range msgs {
		out = append(out, subject.Message{ID: m.ID, Campaign: m.Campaign, List: m.List, State: string(m.State),
			Created: m.Created, Updated: m.Updated, Reply: m.LastReply, Reason: m.Reason})
	}
	return out, err
}

func (a queueAdapter) EraseRecipientIndex(ix, reason string) (subject.Erased, error) {
	r, err := a.q.EraseRecipientIndex(ix, reason)
	return subject.Erased{IDs: r.IDs, Cancelled: r.Cancelled, Scrubbed: r.Scrubbed}, err
}

// subscribersConfirmed is a confirmed sign-up of addr to "news".
func subscribersConfirmed(addr string) subscribers.Subscription {
	return subscribers.Subscription{Address: addr, List: "news", Source: "form"}
}
