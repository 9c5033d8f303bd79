package replica

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postwarden/postwarden/suppression"
)

// importFiles writes the same CSV of rows addresses to one file per node
// (each node reads its own copy, named alike: the base name is part of the
// default source, so of the import's identity) and returns their paths.
func importFiles(t *testing.T, dir string, rows int, nodes ...string) []string {
	t.Helper()
	var sb strings.Builder
	sb.WriteString("email\n")
	for i := range rows {
		fmt.Fprintf(&sb, "w%d@example.net\n", i)
	}
	var paths []string
	for _, n := range nodes {
		p := filepath.Join(dir, n, "supp.csv")
		if err := os.Mkdir(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(sb.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// gateAuditor is a stepAuditor whose first step waits until the other
// import returned (or a bound passed): the two imports overlap whatever
// their order.
type gateAuditor struct {
	*stepAuditor
	other  <-chan struct{}
	waited bool
}

func (g *gateAuditor) AuditImport(st suppression.ImportStep) error {
	if !g.waited {
		g.waited = true
		select {
		case <-g.other:
		case <-time.After(3 * time.Second):
		}
	}
	return g.stepAuditor.AuditImport(st)
}

// TestImportOneRunInCluster: the same file with the same defaults imported
// on two nodes at the same moment runs on one of them; the other is
// refused, naming the node that holds the import's lock, and neither
// audits nor publishes anything. The stream holds every row once and the
// run's records once, and the audit steps are those of one run.
func TestImportOneRunInCluster(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	js := connect(t, srv.ClientURL())
	nodes := []*node{
		startNode(t, js, box, filepath.Join(dir, "a.db"), cfgFor("a")),
		startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfgFor("b")),
	}
	names := []string{"a", "b"}
	for _, n := range nodes {
		eventually(t, "caught up", caughtUp(n))
	}
	const rows = 2500 // three batches
	paths := importFiles(t, dir, rows, names...)
	def := suppression.Entry{Reason: suppression.Manual}

	done := []chan struct{}{make(chan struct{}), make(chan struct{})}
	auds := make([]*gateAuditor, 2)
	pubs := make([]*countingPub, 2)
	res := make([]suppression.ImportResult, 2)
	errs := make([]error, 2)
	start := make(chan struct{})
	for i, n := range nodes {
		auds[i] = &gateAuditor{stepAuditor: &stepAuditor{steps: map[string]suppression.ImportStep{}}, other: done[1-i]}
		pubs[i] = &countingPub{Store: n.rep.Writer()}
		go func() {
			defer close(done[i])
			<-start
			res[i], errs[i] = n.store.ImportFileVia(paths[i], def, auds[i], pubs[i])
		}()
	}
	close(start)
	<-done[0]
	<-done[1]

	if (errs[0] == nil) == (errs[1] == nil) {
		t.Fatalf("imports on a and b returned %v and %v; want one run, one refusal", errs[0], errs[1])
	}
	win, lose := 0, 1
	if errs[0] != nil {
		win, lose = 1, 0
	}
	var running *suppression.ImportRunningError
	if !errors.As(errs[lose], &running) || running.Node != names[win] {
		t.Fatalf("refusal on %s = %v; want the import running on node %s", names[lose], errs[lose], names[win])
	}
	want := regexp.MustCompile(`^import ` + regexp.QuoteMeta(paths[lose]) + `: an import of this file with these defaults is running on node ` +
		names[win] + ` \(its lock lapses within (29|30)s unless renewed\)$`)
	if !want.MatchString(errs[lose].Error()) {
		t.Errorf("refusal reads %q; want it to match %s", errs[lose], want)
	}
	r := res[win]
	if r.Rows != rows || r.Added != rows || r.Batches != 3 || r.Resumed != 0 {
		t.Errorf("import on %s = %+v; want %d rows added in 3 batches", names[win], r, rows)
	}
	if len(auds[lose].calls) != 0 || len(pubs[lose].keys) != 0 {
		t.Errorf("refused node %s audited %v and published %v; want nothing", names[lose], auds[lose].calls, pubs[lose].keys)
	}
	if want := []string{r.Run + "/1", r.Run + "/2", r.Run + "/3", r.Run + "/done"}; !slices.Equal(auds[win].calls, want) {
		t.Errorf("%s audited %v; want %v", names[win], auds[win].calls, want)
	}
	// Rows once each, and one run's records: start, 1, 2, 3, done.
	if got := streamLast(t, js); got != rows+5 {
		t.Errorf("stream holds %d; want %d rows and 5 run records", got, rows)
	}
	for i, n := range nodes {
		eventually(t, names[i]+" holds every row", func() bool { c, _ := n.store.Count(); return c == rows })
	}
}

// TestImportAfterLockReleased: an import releases its lock when it
// returns, with an error or not: the same import on another node right
// after (well within the lock's TTL) runs, resuming the interrupted run,
// then, once that run is done, as a new run that resumes nothing.
func TestImportAfterLockReleased(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	js := connect(t, srv.ClientURL())
	a := startNode(t, js, box, filepath.Join(dir, "a.db"), cfgFor("a"))
	b := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfgFor("b"))
	eventually(t, "A caught up", caughtUp(a))
	const rows = 2500
	paths := importFiles(t, dir, rows, "a", "b")
	def := suppression.Entry{Reason: suppression.Manual}

	audA := &stepAuditor{steps: map[string]suppression.ImportStep{}, killAt: 3}
	if _, err := a.store.ImportFileVia(paths[0], def, audA, a.rep.Writer()); err == nil {
		t.Fatal("the interrupted import succeeded")
	}
	run := audA.steps[audA.calls[0]].Run
	res, err := b.store.ImportFileVia(paths[1], def, &stepAuditor{steps: map[string]suppression.ImportStep{}}, b.rep.Writer())
	if err != nil || res.Run != run || res.Resumed != 2 {
		t.Fatalf("import on B after A failed = %+v, %v; want A's run %s resumed after 2 batches", res, err, run)
	}
	aud := &stepAuditor{steps: map[string]suppression.ImportStep{}}
	again, err := a.store.ImportFileVia(paths[0], def, aud, a.rep.Writer())
	if err != nil || again.Run == run || again.Resumed != 0 || again.Batches != 3 {
		t.Fatalf("import on A after B finished = %+v, %v; want a new run of 3 batches, none resumed", again, err)
	}
	if want := []string{again.Run + "/1", again.Run + "/2", again.Run + "/3", again.Run + "/done"}; !slices.Equal(aud.calls, want) {
		t.Errorf("A audited %v; want %v", aud.calls, want)
	}
}

// leakLock is a node's writer whose import never releases its lock, as a
// node killed -9 mid-import leaves it; lock is the lock taken.
type leakLock struct {
	*Store
	lock suppression.ImportLock
	key  string
}

func (l *leakLock) LockImport(key string) (suppression.ImportLock, error) {
	lk, err := l.Store.LockImport(key)
	if err != nil {
		return nil, err
	}
	l.lock, l.key = lk, key
	return kept{lk}, nil
}

// kept is a lock whose Release does nothing.
type kept struct{ suppression.ImportLock }

func (kept) Release() {}

// TestImportLockLapses: a node killed mid-import leaves its lock behind.
// While the node lives it renews the lock past its TTL; once it is gone
// (its replica closed: no renewal, no release) the lock lapses within the
// TTL and the same import on another node, refused until then, resumes
// the interrupted run. The dead holder's late release leaves alone the
// lock another node took since.
func TestImportLockLapses(t *testing.T) {
	const ttl = 2 * time.Second // renewed every ~0.7 s: room for a loaded machine
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	cfgA, cfgB := cfgFor("a"), cfgFor("b")
	cfgA.ImportLockTTL, cfgB.ImportLockTTL = ttl, ttl
	a := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "a.db"), cfgA)
	b := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfgB)
	eventually(t, "A caught up", caughtUp(a))
	const rows = 2500
	paths := importFiles(t, dir, rows, "a", "b")
	def := suppression.Entry{Reason: suppression.Manual}

	leak := &leakLock{Store: a.rep.Writer()}
	audA := &stepAuditor{steps: map[string]suppression.ImportStep{}, killAt: 3}
	if _, err := a.store.ImportFileVia(paths[0], def, audA, leak); err == nil {
		t.Fatal("the interrupted import succeeded")
	}
	run := audA.steps[audA.calls[0]].Run
	importB := func() (suppression.ImportResult, error) {
		return b.store.ImportFileVia(paths[1], def, &stepAuditor{steps: map[string]suppression.ImportStep{}}, b.rep.Writer())
	}
	// A lives: its lock outlasts the TTL.
	for end := time.Now().Add(ttl + ttl/2); time.Now().Before(end); time.Sleep(ttl / 5) {
		var running *suppression.ImportRunningError
		if _, err := importB(); !errors.As(err, &running) || running.Node != "a" {
			t.Fatalf("import on B while A holds the lock: %v; want it refused, running on node a", err)
		}
	}
	if err := leak.lock.Held(); err != nil {
		t.Fatalf("A's lock, renewed: %v", err)
	}

	a.rep.Close() // A is gone: its lock is neither renewed nor released
	gone := time.Now()
	if leak.lock.Held() == nil {
		t.Error("A's lock is held after its replica closed")
	}
	var (
		res suppression.ImportResult
		err error
	)
	for {
		res, err = importB()
		var running *suppression.ImportRunningError
		if !errors.As(err, &running) {
			break
		}
		if time.Since(gone) > 5*ttl {
			t.Fatalf("import on B still refused %s after A went: %v", time.Since(gone), err)
		}
		time.Sleep(ttl / 10)
	}
	if err != nil || res.Run != run || res.Resumed != 2 || res.Batches != 3 {
		t.Fatalf("import on B once A's lock lapsed = %+v, %v; want A's run %s resumed after 2 batches", res, err, run)
	}
	t.Logf("B ran %s after A's replica closed (TTL %s)", time.Since(gone).Round(10*time.Millisecond), ttl)

	held, err := b.rep.LockImport(context.Background(), leak.key)
	if err != nil {
		t.Fatalf("B takes the lock: %v", err)
	}
	defer held.Release()
	leak.lock.Release() // A's, late: the lock is B's now
	var running *suppression.ImportRunningError
	if _, err := a.rep.LockImport(context.Background(), leak.key); !errors.As(err, &running) || running.Node != "b" {
		t.Errorf("after A's late release the lock reads %v; want still B's", err)
	}
	if err := held.Held(); err != nil {
		t.Errorf("B's lock after A's late release: %v", err)
	}
}

// closeAfter is a node's writer that closes the node's replica once the
// record of batch n is published: the import's lock is no longer renewed.
type closeAfter struct {
	*Store
	n   int
	rep *Replica
}

func (c *closeAfter) PublishImportRun(key string, m suppression.Mutation) error {
	err := c.Store.PublishImportRun(key, m)
	if err == nil && strings.HasSuffix(key, fmt.Sprintf("/%d", c.n)) {
		c.rep.Close()
	}
	return err
}

// TestImportStopsWithoutLock: an import whose lock is no longer held (its
// replica closed, so nothing renews it) stops before its next batch,
// neither audited nor published, and returns why; its lock released, the
// same import on another node resumes the run at once.
func TestImportStopsWithoutLock(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	a := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "a.db"), cfgFor("a"))
	b := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfgFor("b"))
	eventually(t, "A caught up", caughtUp(a))
	paths := importFiles(t, dir, 2500, "a", "b")
	def := suppression.Entry{Reason: suppression.Manual}

	audA := &stepAuditor{steps: map[string]suppression.ImportStep{}}
	_, err := a.store.ImportFileVia(paths[0], def, audA, &closeAfter{Store: a.rep.Writer(), n: 1, rep: a.rep})
	if err == nil || !strings.Contains(err.Error(), "batch 2: stopped, interrupted") || !strings.Contains(err.Error(), "replica closed") {
		t.Fatalf("import on A, its replica closed after batch 1: %v; want it stopped before batch 2", err)
	}
	run := audA.steps[audA.calls[0]].Run
	if want := []string{run + "/1"}; !slices.Equal(audA.calls, want) {
		t.Errorf("A audited %v; want %v", audA.calls, want)
	}
	res, err := b.store.ImportFileVia(paths[1], def, &stepAuditor{steps: map[string]suppression.ImportStep{}}, b.rep.Writer())
	if err != nil || res.Run != run || res.Resumed != 1 || res.Batches != 3 {
		t.Fatalf("import on B = %+v, %v; want A's run %s resumed after 1 batch", res, err, run)
	}
}

// TestImportLockNATSDown: NATS out of reach, a cluster import fails before
// it audits anything, saying so, as it would at catching up with the
// stream.
func TestImportLockNATSDown(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	js := connect(t, srv.ClientURL())
	a := startNode(t, js, box, filepath.Join(dir, "a.db"), cfgFor("a"))
	eventually(t, "A caught up", caughtUp(a))
	paths := importFiles(t, dir, 10, "a")
	srv.Shutdown()
	srv.WaitForShutdown()
	eventually(t, "A disconnected", func() bool { return !js.Conn().IsConnected() })

	aud := &stepAuditor{steps: map[string]suppression.ImportStep{}}
	_, err := a.store.ImportFileVia(paths[0], suppression.Entry{Reason: suppression.Manual}, aud, a.rep.Writer())
	if err == nil || !strings.Contains(err.Error(), "lock the import: not connected to NATS") {
		t.Fatalf("import with NATS down: %v; want it refused, not connected", err)
	}
	if len(aud.calls) != 0 {
		t.Errorf("audited %v with NATS down; want nothing", aud.calls)
	}
}

// TestImportLockTakenOverAfterRestart: a node killed mid-import and
// restarted at once takes over the lock its previous process left (only
// one process opens a node's store), resuming the run without waiting out
// the TTL; another node is still refused until then.
func TestImportLockTakenOverAfterRestart(t *testing.T) {
	srv := startNATS(t, t.TempDir(), -1)
	box, dir := testBox(t), t.TempDir()
	a := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "a.db"), cfgFor("a"))
	b := startNode(t, connect(t, srv.ClientURL()), box, filepath.Join(dir, "b.db"), cfgFor("b"))
	eventually(t, "A caught up", caughtUp(a))
	const rows = 2500
	paths := importFiles(t, dir, rows, "a", "b")
	def := suppression.Entry{Reason: suppression.Manual}

	leak := &leakLock{Store: a.rep.Writer()}
	audA := &stepAuditor{steps: map[string]suppression.ImportStep{}, killAt: 2}
	if _, err := a.store.ImportFileVia(paths[0], def, audA, leak); err == nil {
		t.Fatal("the interrupted import succeeded")
	}
	run := audA.steps[audA.calls[0]].Run
	a.stop() // killed: the lock stays, unrenewed, for up to 30 s
	var running *suppression.ImportRunningError
	if _, err := b.store.ImportFileVia(paths[1], def, &stepAuditor{steps: map[string]suppression.ImportStep{}}, b.rep.Writer()); !errors.As(err, &running) || running.Node != "a" {
		t.Fatalf("import on B while A's lock stands: %v; want refused, running on node a", err)
	}

	a = startNode(t, connect(t, srv.ClientURL()), box, a.path, cfgFor("a"))
	eventually(t, "A caught up again", caughtUp(a))
	started := time.Now()
	res, err := a.store.ImportFileVia(paths[0], def, &stepAuditor{steps: map[string]suppression.ImportStep{}}, a.rep.Writer())
	if err != nil || res.Run != run || res.Resumed != 1 || res.Batches != 3 {
		t.Fatalf("import on A restarted = %+v, %v; want its run %s resumed after 1 batch, the lock taken over", res, err, run)
	}
	t.Logf("A resumed %s after its restart", time.Since(started).Round(time.Millisecond))
	if _, err := b.store.ImportFileVia(paths[1], def, &stepAuditor{steps: map[string]suppression.ImportStep{}}, b.rep.Writer()); err != nil {
		t.Errorf("import on B once A released the lock: %v", err)
	}
}
