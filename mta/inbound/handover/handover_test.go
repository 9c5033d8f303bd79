package handover

import (
	"bytes"
	"context"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/bounce"
	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// Real parts on loopback: nats-server in-process with JetStream on a temp
// store dir, outboxes in temp dirs. Waits poll with generous deadlines.

const wait = 20 * time.Second

const (
	tag1 = "0a0b0c01" // node 1's tag: it holds the messages
	tag2 = "0a0b0c02" // node 2's tag: it receives the reports
	addr = "complainer@example.org"
	qid  = "0190d4c3a1b2c3d4"
)

// startNATS runs a JetStream server on 127.0.0.1:port (-1: a random one).
func startNATS(t *testing.T, storeDir string, port int) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true,
		StoreDir: storeDir, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	s.Start()
	if !s.ReadyForConnections(wait) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// freePort returns a loopback port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// connect opens a JetStream client that reconnects forever, even if the
// server is not up yet.
func connect(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func testBox(t *testing.T) *sealed.Box {
	t.Helper()
	box, err := sealed.New(bytes.Repeat([]byte{7}, sealed.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return box
}

// applied records what a node applied; fail makes the next n calls fail.
type applied struct {
	mu   sync.Mutex
	got  []payload
	fail int
}

func (a *applied) Apply(queueID string, reps []bounce.Report) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fail > 0 {
		a.fail--
		return os.ErrDeadlineExceeded
	}
	a.got = append(a.got, payload{QueueID: queueID, Reports: reps})
	return nil
}

func (a *applied) list() []payload {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]payload(nil), a.got...)
}

// node starts a hand-over for tag with its outbox in dir.
func node(t *testing.T, js jetstream.JetStream, tag, dir string, a Applier) *Handover {
	t.Helper()
	h, err := New(js, testBox(t), Config{Tag: tag, Dir: dir, RetryMax: 500 * time.Millisecond,
		PublishTimeout: 500 * time.Millisecond, AckWait: 2 * time.Second}, a, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	h.Start(context.Background())
	t.Cleanup(h.Close)
	return h
}

func complaint() []bounce.Report {
	return []bounce.Report{{Recipient: addr, Kind: bounce.KindComplaint, FeedbackType: "abuse",
		VERP: []string{"bounce+abc@bounce.example.com"}}}
}

// eventually polls cond until wait.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// streamMsgs is how many messages PW_REPORTS holds.
func streamMsgs(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	st, err := js.Stream(context.Background(), DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// A report received by node 2 about node 1's message is applied by node 1
// alone, after a failed Apply is retried, and leaves the stream once
// applied; nothing personal is on a subject or unsealed in the store.
func TestHandedReportAppliedByItsNode(t *testing.T) {
	storeDir := t.TempDir()
	srv := startNATS(t, storeDir, -1)
	js := connect(t, srv.ClientURL())
	a1, a2 := &applied{fail: 1}, &applied{}
	n1 := node(t, js, tag1, t.TempDir(), a1)
	n2 := node(t, js, tag2, t.TempDir(), a2)
	eventually(t, "the stream", func() bool { _, err := js.Stream(context.Background(), DefaultStream); return err == nil })

	// Spy on every subject the reports take.
	nc := js.Conn()
	var subjMu sync.Mutex
	var subjects []string
	sub, err := nc.Subscribe(DefaultSubject+".>", func(m *nats.Msg) {
		subjMu.Lock()
		subjects = append(subjects, m.Subject)
		subjMu.Unlock()
		if bytes.Contains(m.Data, []byte(addr)) || bytes.Contains(m.Data, []byte(qid)) {
			t.Errorf("payload on %s is not sealed", m.Subject)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	if n2.Mine(tag1) || !n1.Mine(tag1) {
		t.Fatal("Mine")
	}
	if err := n2.Hand(tag1, qid, complaint()); err != nil {
		t.Fatalf("Hand: %v", err)
	}
	if st := n2.Stats(); st.Handed != 1 || st.Kept != 0 {
		t.Errorf("node 2 stats %+v: want handed to the stream directly", st)
	}
	eventually(t, "node 1 applying the report", func() bool { return len(a1.list()) == 1 })
	got := a1.list()[0]
	if got.QueueID != qid || len(got.Reports) != 1 || got.Reports[0].Recipient != addr || got.Reports[0].Kind != bounce.KindComplaint {
		t.Errorf("node 1 applied %+v", got)
	}
	eventually(t, "node 1 counting it applied", func() bool { return n1.Stats().Applied == 1 })
	if st := n1.Stats(); st.Failed != 1 || st.Applied != 1 {
		t.Errorf("node 1 stats %+v: want one failure retried, then applied", st)
	}
	eventually(t, "the applied report leaving the stream", func() bool { return streamMsgs(t, js) == 0 })
	if l := a2.list(); len(l) != 0 {
		t.Errorf("node 2 applied %+v; the message is node 1's", l)
	}
	// Its consumer deleted (say, by an operator), node 1 sets it up again.
	if err := js.DeleteConsumer(context.Background(), DefaultStream, "reports-"+tag1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := n2.Hand(tag1, qid, complaint()); err != nil {
		t.Fatalf("Hand: %v", err)
	}
	eventually(t, "node 1 applying after its consumer was deleted", func() bool { return len(a1.list()) == 2 })

	want := DefaultSubject + "." + tag1 + "." + addrIndex(t)
	subjMu.Lock()
	for _, s := range subjects {
		if s != want {
			t.Errorf("subject %q; want only %s (node tag, keyed index)", s, want)
		}
	}
	subjMu.Unlock()
	noClear(t, storeDir)
}

// A report handed while NATS is out of reach is kept in the outbox; a node
// killed then and restarted with the same outbox hands it over once NATS
// is up, and node 1, itself started late, applies it once.
func TestOutboxSurvivesRestart(t *testing.T) {
	port := freePort(t)
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	outbox := t.TempDir()
	js := connect(t, url) // nothing listens yet
	a := &applied{}
	n2, err := New(js, testBox(t), Config{Tag: tag2, Dir: outbox, PublishTimeout: 300 * time.Millisecond, RetryMax: 300 * time.Millisecond}, a, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	n2.Start(context.Background())
	start := time.Now()
	if err := n2.Hand(tag1, qid, complaint()); err != nil {
		t.Fatalf("Hand while cut off: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Hand took %v while cut off", d)
	}
	if st := n2.Stats(); st.Kept != 1 || st.Outbox != 1 {
		t.Errorf("stats %+v: want the report kept", st)
	}
	n2.Close() // as if killed: the outbox stays
	files, _ := os.ReadDir(outbox)
	if len(files) != 1 {
		t.Fatalf("outbox holds %d files, want 1", len(files))
	}
	noClear(t, outbox)

	storeDir := t.TempDir()
	startNATS(t, storeDir, port)
	js2 := connect(t, url)
	n2b := node(t, js2, tag2, outbox, &applied{})
	eventually(t, "the outbox handed over", func() bool { return n2b.Stats().Outbox == 0 })
	if files, _ := os.ReadDir(outbox); len(files) != 0 {
		t.Errorf("outbox still holds %d files", len(files))
	}
	if n := streamMsgs(t, js2); n != 1 {
		t.Errorf("stream holds %d messages, want 1 (waiting for node 1)", n)
	}
	// Node 1 comes up now: its durable consumer finds the report.
	a1 := &applied{}
	n1 := node(t, js2, tag1, t.TempDir(), a1)
	eventually(t, "node 1 applying the kept report", func() bool { return len(a1.list()) == 1 })
	if a1.list()[0].QueueID != qid {
		t.Errorf("applied %+v", a1.list())
	}
	// Restarted, node 1 gets nothing again: the report was acknowledged.
	n1.Close()
	a1b := &applied{}
	node(t, js2, tag1, t.TempDir(), a1b)
	time.Sleep(500 * time.Millisecond)
	if l := a1b.list(); len(l) != 0 {
		t.Errorf("restarted node 1 applied %+v again", l)
	}
	noClear(t, storeDir)
}

// noClear fails if any file under dir holds the address or the queue id.
func noClear(t *testing.T, dir string) {
	t.Helper()
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		if bytes.Contains(b, []byte(addr)) || bytes.Contains(b, []byte(qid)) || bytes.Contains(b, []byte(strings.Split(addr, "@")[0])) {
			t.Errorf("%s holds the address or queue id in clear", p)
		}
		return nil
	})
}

// addrIndex is the keyed index of addr under testBox.
func addrIndex(t *testing.T) string {
	t.Helper()
	a, err := address.Parse(addr)
	if err != nil {
		t.Fatal(err)
	}
	return testBox(t).IndexHex(a.Key())
}

// An erasure removes the person's reports from the stream, whichever node
// they are for, and from the outboxes, and leaves other people's: a report
// waiting for a node that is down (72 h at most) or kept on a node cut off
// no longer holds them once they are erased.
func TestEraseReports(t *testing.T) {
	storeDir := t.TempDir()
	srv := startNATS(t, storeDir, -1)
	js := connect(t, srv.ClientURL())
	other := []bounce.Report{{Recipient: "someone.else@example.org", Kind: bounce.KindComplaint}}
	// Node 2 runs; node 1, whose messages the reports are about, is down.
	n2 := node(t, js, tag2, t.TempDir(), &applied{})
	eventually(t, "the stream", func() bool { _, err := js.Stream(context.Background(), DefaultStream); return err == nil })
	for _, reps := range [][]bounce.Report{complaint(), complaint(), other} {
		if err := n2.Hand(tag1, qid, reps); err != nil {
			t.Fatal(err)
		}
	}
	// Node 3 is cut off: its reports wait in its outbox.
	outbox := t.TempDir()
	cut := connect(t, "nats://127.0.0.1:"+strconv.Itoa(freePort(t)))
	n3, err := New(cut, testBox(t), Config{Tag: "0a0b0c03", Dir: outbox, PublishTimeout: 200 * time.Millisecond}, &applied{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	for _, reps := range [][]bounce.Report{complaint(), other} {
		if err := n3.Hand(tag1, qid, reps); err != nil {
			t.Fatal(err)
		}
	}
	if streamMsgs(t, js) != 3 || n3.Stats().Outbox != 2 {
		t.Fatalf("before: %d in the stream, %d in node 3's outbox; want 3 and 2", streamMsgs(t, js), n3.Stats().Outbox)
	}
	if _, err := n2.EraseIndex(context.Background(), "not-an-index"); err == nil {
		t.Error("EraseIndex took a malformed index")
	}
	idx := addrIndex(t)
	if n, err := n2.EraseIndex(context.Background(), idx); err != nil || n != 0 {
		t.Fatalf("EraseIndex on node 2 = %d, %v", n, err)
	}
	if got := streamMsgs(t, js); got != 1 {
		t.Errorf("%d reports left in the stream; want the other person's 1", got)
	}
	if n, err := n3.EraseOutbox(idx); err != nil || n != 1 || n3.Stats().Outbox != 1 {
		t.Errorf("EraseOutbox on node 3 = %d, %v, outbox %d; want 1 removed, 1 left", n, err, n3.Stats().Outbox)
	}
	if n, err := EraseOutbox(filepath.Join(t.TempDir(), "none"), idx); err != nil || n != 0 {
		t.Errorf("EraseOutbox of a missing folder = %d, %v", n, err)
	}
	// Node 1 comes up: it applies the other person's report only.
	a1 := &applied{}
	node(t, js, tag1, t.TempDir(), a1)
	eventually(t, "node 1 applying what is left", func() bool { return len(a1.list()) == 1 })
	time.Sleep(300 * time.Millisecond)
	if l := a1.list(); len(l) != 1 || l[0].Reports[0].Recipient == addr {
		t.Errorf("node 1 applied %+v; want only the other person's report", l)
	}
}
