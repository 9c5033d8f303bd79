// Command cluster is postwarden's cluster benchmark (issue 13): the same
// campaign sent on one node and on three nodes of a cluster on this box,
// every node a real `postwarden serve` process with its embedded NATS server
// (routed to the others, replicas 1 for one node, 3 for three), delivering in
// mx mode to one loopback SMTP sink. It reports messages per second (from the
// start of `campaign send` to the last message at the sink), the CPU of each
// process from /proc (utime+stime) per message, and the ratio of total CPU
// per message on three nodes over one (the coordination overhead). On the
// three nodes it then measures the delivery-to-suppression latency: a
// `suppress add` on node 2 (through its admin socket) while a second campaign
// runs, timed until nodes 1 and 3 answer `suppress check` suppressed (polled
// every 5 ms).
//
//	go run ./bench/cluster -n 3000 -k 50
//
// Run it from the repository root. It fails only on errors (a message
// missing at the sink, a node that does not come up), never on speed.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/postwarden/postwarden/mta/mtatest"
)

var (
	flagN        = flag.Int("n", 3000, "recipients in the campaign")
	flagK        = flag.Int("k", 50, "suppression latency samples on three nodes (0: skip)")
	flagLogLevel = flag.String("log-level", "info", "serve's --log-level")
	flagKeep     = flag.Bool("keep", false, "keep the temporary folder (configs, data, logs)")
	flagTimeout  = flag.Duration("timeout", 5*time.Minute, "longest wait for a campaign to reach the sink")
	flagBin      = flag.String("bin", "", "a built postwarden binary (default: go build ./cmd/postwarden)")
	flagNATSBin  = flag.String("nats-bin", "", "a built nats-server binary (default: go build github.com/nats-io/nats-server/v2)")
	flagRuns     = flag.Int("runs", 1, "rounds of every configuration, interleaved; the overhead is the median of the rounds")
)

// domains are the recipient domains; all route to the sink.
var domains = []string{"acme.example", "globex.example", "initech.example", "umbrella.example"}

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/cluster:", err)
		os.Exit(1)
	}
}

func run() error {
	root, err := os.MkdirTemp("", "pwcl")
	if err != nil {
		return err
	}
	if *flagKeep {
		fmt.Fprintln(os.Stderr, "keeping", root)
	} else {
		defer os.RemoveAll(root)
	}
	bin := *flagBin
	if bin == "" {
		bin = filepath.Join(root, "postwarden")
		t := time.Now()
		if out, err := exec.Command("go", "build", "-o", bin, "./cmd/postwarden").CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./cmd/postwarden (run from the repository root): %v\n%s", err, out)
		}
		fmt.Fprintf(os.Stderr, "built in %v\n", time.Since(t).Round(time.Millisecond))
	}
	natsBin := *flagNATSBin
	if natsBin == "" {
		natsBin = filepath.Join(root, "nats-server")
		if out, err := exec.Command("go", "build", "-o", natsBin, "github.com/nats-io/nats-server/v2").CombinedOutput(); err != nil {
			return fmt.Errorf("go build nats-server: %v\n%s", err, out)
		}
	}
	load0 := loadavg()
	// One node without a cluster section (single-node postwarden), one
	// node of a cluster (its NATS a lone nats-server process, counted in
	// the node's CPU: an embedded server refuses JetStream clustering
	// without a second server), three nodes with embedded NATS.
	// Three nodes without a cluster section, each sent a third of the
	// recipients at the same moment, share nothing: what three processes
	// on this box cost over one with no coordination at all, the floor
	// under the three-node cluster's figure.
	var rounds []round
	for i := range max(1, *flagRuns) {
		dir := filepath.Join(root, fmt.Sprintf("round%d", i+1))
		var rd round
		var err error
		if rd.single, err = runCluster(bin, "", filepath.Join(dir, "single"), 1, 0, false); err != nil {
			return fmt.Errorf("1 node, no cluster: %w", err)
		}
		if rd.one, err = runCluster(bin, natsBin, filepath.Join(dir, "one"), 1, 0, false); err != nil {
			return fmt.Errorf("1 node: %w", err)
		}
		if rd.apart, err = runCluster(bin, "", filepath.Join(dir, "apart"), 3, 0, true); err != nil {
			return fmt.Errorf("3 nodes, no cluster: %w", err)
		}
		k := 0
		if i == 0 {
			k = *flagK // the latency probe once: it measures the stream, not the box
		}
		if rd.three, err = runCluster(bin, "", filepath.Join(dir, "three"), 3, k, false); err != nil {
			return fmt.Errorf("3 nodes: %w", err)
		}
		rd.single.label = "1, no `cluster:`"
		rd.one.label = "1, cluster (lone nats-server, replicas 1)"
		rd.apart.label = "3, no `cluster:` (a third each, at once)"
		rd.three.label = "3, cluster (embedded NATS, replicas 3)"
		rounds = append(rounds, rd)
	}
	report(os.Stdout, rounds, load0, loadavg())
	return nil
}

// round is one measurement of every configuration.
type round struct{ single, one, apart, three *result }

// result is what one cluster size measured.
type result struct {
	label     string
	nodes     int
	n         int
	send      time.Duration // campaign send, start to exit
	first     time.Duration // send start to the first RCPT at the sink
	wall      time.Duration // send start to the last message at the sink
	settle    time.Duration // send start to every node's outcomes recorded
	cpu       []float64     // seconds per serve process, send to settled
	idle      []float64     // CPU seconds per process per second before the send
	sendCPU   float64       // the `campaign send` process
	natsCPU   float64       // the lone nats-server process, in cpu[0] too
	streams   []stream      // JetStream streams after the campaign settled
	sessions  int
	dup       int
	addLat    []time.Duration // suppress add on node 2, request to answer
	propLat   []time.Duration // answer to suppressed on every other node
	probeMiss int
}

// stream is one JetStream stream as `cluster status --json` lists it.
type stream struct {
	Name     string `json:"name"`
	Replicas int    `json:"replicas"`
	Messages uint64 `json:"messages"`
	Bytes    uint64 `json:"bytes"`
}

// streamsOf reads the streams from `cluster status --json` on nd.
func streamsOf(bin string, nd *node) []stream {
	out, _ := exec.Command(bin, "-c", nd.cfg, "--json", "cluster", "status").Output()
	var rep struct {
		Streams []stream `json:"streams"`
	}
	_ = json.Unmarshal(bytes.TrimSpace(out), &rep)
	return rep.Streams
}

// node is one serve process and its files.
type node struct {
	name, dir, cfg, sock string
	cmd                  *exec.Cmd
	exited               chan error
	log                  string
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// recorder keeps, per recipient, how often the sink saw it in RCPT TO.
type recorder struct {
	mu    sync.Mutex
	seen  map[string]int
	first time.Time // first RCPT seen
}

func (r *recorder) rcpt(addr string, _ int) error {
	r.mu.Lock()
	if r.first.IsZero() {
		r.first = time.Now()
	}
	r.seen[strings.ToLower(addr)]++
	r.mu.Unlock()
	return nil
}

// runCluster runs one configuration: size nodes with embedded NATS, or,
// when size is 1, a node without a cluster section (natsBin "") or a node
// whose cluster NATS is a lone nats-server process started here (natsBin).
//
// With apart, the size nodes run without a cluster section and each is sent
// its own third of the recipients at once.
func runCluster(bin, natsBin, dir string, size, k int, apart bool) (*result, error) {
	rec := &recorder{seen: map[string]int{}}
	sink, err := mtatest.Start(mtatest.Options{Discard: true, Rcpt: rec.rcpt})
	if err != nil {
		return nil, err
	}
	defer sink.Close()
	nodes := make([]*node, size)
	type addrs struct{ http, nats, route string }
	as := make([]addrs, size)
	for i := range as {
		for _, p := range []*string{&as[i].http, &as[i].nats, &as[i].route} {
			if *p, err = freeAddr(); err != nil {
				return nil, err
			}
		}
	}
	// Unix socket paths are limited to ~108 bytes: the admin socket is set
	// in a short folder of its own.
	sockDir, err := os.MkdirTemp("", "pws")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(sockDir)
	replicas := 1
	if size >= 3 {
		replicas = 3
	}
	clustered := !apart && (size > 1 || natsBin != "")
	var natsProc *node
	if size == 1 && natsBin != "" {
		natsProc = &node{name: "nats-server", dir: filepath.Join(dir, "nats"), log: filepath.Join(dir, "nats", "nats.log")}
		if err := os.MkdirAll(natsProc.dir, 0o700); err != nil {
			return nil, err
		}
		host, port, _ := net.SplitHostPort(as[0].nats)
		if err := natsProc.startCmd(natsBin, "-a", host, "-p", port, "-js", "-sd", filepath.Join(natsProc.dir, "store"), "-n", "bench-nats"); err != nil {
			return nil, err
		}
		defer natsProc.stop()
	}
	for i := range nodes {
		nd := &node{name: fmt.Sprintf("n%d", i+1), dir: filepath.Join(dir, fmt.Sprintf("n%d", i+1))}
		nd.sock = filepath.Join(sockDir, nd.name+".sock")
		nd.cfg = filepath.Join(nd.dir, "postwarden.yaml")
		nd.log = filepath.Join(nd.dir, "serve.log")
		var routes, peers []string
		for _, d := range domains {
			routes = append(routes, fmt.Sprintf("    %s: %s\n", d, sink.Addr))
		}
		for j := range as {
			if j != i {
				peers = append(peers, strconv.Quote("nats://"+as[j].route))
			}
		}
		section := fmt.Sprintf(`cluster:
  node: n%[1]d
  embedded:
    listen: %[2]s
    cluster_listen: %[3]s
    routes: [%[4]s]
  replicas: %[5]d
`, i+1, as[i].nats, as[i].route, strings.Join(peers, ", "), replicas)
		switch {
		case !clustered:
			section = ""
		case natsProc != nil:
			section = fmt.Sprintf("cluster:\n  node: n1\n  nats: nats://%s\n  replicas: 1\n", as[i].nats)
		}
		cfg := fmt.Sprintf(`hostname: mail%[3]d.bench.example
data_dir: var
admin_socket: %[4]s
public_url: http://%[1]s
http_listen: %[1]s
privacy_url: https://example.com/privacy
dkim:
  - {domain: example.com, selector: pw1}
delivery:
  mode: mx
  routes:
%[2]s  retry: [1h]
  max_age: 120h
  concurrency_per_domain: 4
  workers: 4
`, as[i].http, strings.Join(routes, ""), i+1, nd.sock) + section
		files := map[string]string{
			"postwarden.yaml": cfg,
			"templates/note.html": `<!doctype html><html lang="en"><body>
<p>Hello {{.FirstName}},</p><p>A note for {{.Company}}.</p>
<p><a href="{{.UnsubscribeURL}}">Unsubscribe</a> · <a href="{{.PrivacyURL}}">Privacy</a></p>
</body></html>`,
			"templates/note.txt": "Hello {{.FirstName}},\n\nA note for {{.Company}}.\n\nUnsubscribe: {{.UnsubscribeURL}}\nPrivacy: {{.PrivacyURL}}\n",
			"lia.md":             "# Legitimate-interest assessment\n\n## Purpose\nProduct news for buyers at companies.\n\n## Necessity\nWork addresses only, no profiling.\n\n## Balancing\nLow impact, one-click unsubscribe in every message.\n",
		}
		for name, body := range files {
			if err := writeFile(filepath.Join(nd.dir, name), body, 0o644); err != nil {
				return nil, err
			}
		}
		nodes[i] = nd
	}
	// Keys: the DKIM key made by the binary on node 1; it and node 1's
	// token.key and data.key copied to the others before their first start
	// (docs/cluster.md).
	n1 := nodes[0]
	if out, err := exec.Command(bin, "-c", n1.cfg, "dkim", "keygen", "--domain", "example.com", "--selector", "pw1").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("dkim keygen: %v\n%s", err, out)
	}
	shared := []string{"dkim/example.com.pw1.key", "token.key", "data.key"}
	for _, rel := range shared[1:] {
		p := filepath.Join(n1.dir, "var", rel)
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			key := make([]byte, 32)
			rand.Read(key)
			if err := writeFile(p, string(key), 0o600); err != nil {
				return nil, err
			}
		}
	}
	for _, nd := range nodes[1:] {
		for _, rel := range shared {
			b, err := os.ReadFile(filepath.Join(n1.dir, "var", rel))
			if err != nil {
				return nil, err
			}
			if err := writeFile(filepath.Join(nd.dir, "var", rel), string(b), 0o600); err != nil {
				return nil, err
			}
		}
	}

	for _, nd := range nodes {
		if err := nd.start(bin); err != nil {
			return nil, err
		}
	}
	defer func() {
		for _, nd := range nodes {
			nd.stop()
		}
	}()
	if clustered {
		if err := waitHealthy(bin, n1, size); err != nil {
			return nil, err
		}
		if err := waitShares(bin, nodes); err != nil {
			return nil, err
		}
	} else if err := waitServing(n1); err != nil {
		return nil, err
	}
	procs := nodes
	if natsProc != nil { // the lone NATS server is the node's
		procs = append(slices.Clone(nodes), natsProc)
	}

	// Idle CPU over two seconds: what the cluster costs with nothing to do.
	c0 := cpuOf(procs)
	t0 := time.Now()
	time.Sleep(2 * time.Second)
	c1 := cpuOf(procs)
	r := &result{nodes: size, n: *flagN}
	for i := range nodes {
		r.idle = append(r.idle, (c1[i]-c0[i])/time.Since(t0).Seconds())
	}
	if natsProc != nil {
		r.idle[0] += (c1[1] - c0[1]) / time.Since(t0).Seconds()
	}

	senders := nodes[:1]
	if apart {
		senders = nodes
	}
	csvPaths := make([]string, len(senders))
	for i, nd := range senders {
		// The recipients split over the senders, the first taking the rest.
		n := *flagN / len(senders)
		if i == 0 {
			n += *flagN % len(senders)
		}
		if csvPaths[i], err = writeCampaign(nd.dir, "bench-1", fmt.Sprintf("r%d-", i), n); err != nil {
			return nil, err
		}
	}
	cpu0 := cpuOf(procs)
	start := time.Now()
	// --offline: the bench's loopback DNS publishes no SPF, DKIM or DMARC
	// record; it measures delivery, not the preflight's lookups.
	sendErrs := make([]error, len(senders))
	sendCPU := make([]float64, len(senders))
	var sends sync.WaitGroup
	for i, nd := range senders {
		sends.Go(func() {
			send := exec.Command(bin, "-c", nd.cfg, "campaign", "send", "--offline", csvPaths[i])
			out, err := send.CombinedOutput()
			switch {
			case err != nil:
				sendErrs[i] = fmt.Errorf("campaign send on %s: %v\n%s", nd.name, err, out)
			case clustered && !strings.Contains(string(out), "recipients published"):
				sendErrs[i] = fmt.Errorf("campaign send did not publish shares:\n%s", out)
			}
			if send.ProcessState != nil {
				sendCPU[i] = rusageCPU(send.ProcessState)
			}
		})
	}
	sends.Wait()
	if err := errors.Join(sendErrs...); err != nil {
		return nil, err
	}
	r.send = time.Since(start)
	r.sendCPU = sum(sendCPU)
	if err := waitCount(sink, *flagN, *flagTimeout, nodes); err != nil {
		return nil, err
	}
	r.wall = time.Since(start)
	if err := waitSettled(bin, nodes, "bench-1"); err != nil {
		return nil, err
	}
	r.settle = time.Since(start)
	cpu1 := cpuOf(procs)
	for i := range nodes {
		r.cpu = append(r.cpu, cpu1[i]-cpu0[i])
	}
	if natsProc != nil {
		r.natsCPU = cpu1[1] - cpu0[1]
		r.cpu[0] += r.natsCPU
	}
	r.sessions = sink.Sessions()
	r.first = rec.first.Sub(start)
	if clustered {
		r.streams = streamsOf(bin, n1)
	}
	rec.mu.Lock()
	for a, c := range rec.seen {
		if c > 1 {
			r.dup += c - 1
			fmt.Fprintf(os.Stderr, "%s seen %d times at the sink\n", a, c)
		}
	}
	if len(rec.seen) != *flagN {
		rec.mu.Unlock()
		return nil, fmt.Errorf("%d distinct recipients at the sink, want %d", len(rec.seen), *flagN)
	}
	rec.mu.Unlock()

	if k > 0 && size > 1 {
		if err := probe(bin, nodes, sink, r, k); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// probe sends a second campaign from node 1 and, while it runs, suppresses
// k addresses on node 2, timing each until nodes 1 and 3 answer suppressed.
// The addresses are outside the campaign so the campaign's count stays
// exact; the path through the cluster's stream is the same.
func probe(bin string, nodes []*node, sink *mtatest.Sink, r *result, k int) error {
	csvPath, err := writeCampaign(nodes[0].dir, "bench-2", "s", *flagN)
	if err != nil {
		return err
	}
	before := sink.Count()
	send := exec.Command(bin, "-c", nodes[0].cfg, "campaign", "send", "--offline", csvPath)
	if out, err := send.CombinedOutput(); err != nil {
		return fmt.Errorf("campaign send bench-2: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	add, others := nodes[1], []*node{nodes[0]}
	others = append(others, nodes[2:]...)
	warned := false
	for i := range k {
		if !warned && sink.Count()-before >= *flagN {
			warned = true
			fmt.Fprintf(os.Stderr, "probe: campaign bench-2 done after %d samples; the rest run on an idle cluster\n", i)
		}
		addr := fmt.Sprintf("probe%d-%d@%s", i, time.Now().UnixNano()%1e6, domains[i%len(domains)])
		t0 := time.Now()
		code, err := op(ctx, add.sock, "suppress.add", map[string]string{"target": addr, "reason": "manual"})
		if err != nil || code != 0 {
			return fmt.Errorf("suppress add on %s: exit %d: %v", add.name, code, err)
		}
		t1 := time.Now()
		r.addLat = append(r.addLat, t1.Sub(t0))
		var wg sync.WaitGroup
		var mu sync.Mutex
		var last time.Time
		missed := false
		for _, nd := range others {
			wg.Add(1)
			go func() {
				defer wg.Done()
				deadline := t1.Add(10 * time.Second)
				for time.Now().Before(deadline) {
					code, err := op(ctx, nd.sock, "suppress.check", map[string]string{"target": addr, "list": "product-news"})
					if err == nil && code == 0 {
						mu.Lock()
						if now := time.Now(); now.After(last) {
							last = now
						}
						mu.Unlock()
						return
					}
					time.Sleep(5 * time.Millisecond)
				}
				mu.Lock()
				missed = true
				mu.Unlock()
			}()
		}
		wg.Wait()
		if missed {
			r.probeMiss++
			continue
		}
		r.propLat = append(r.propLat, last.Sub(t1))
	}
	return waitCount(sink, before+*flagN, *flagTimeout, nodes)
}

// op runs one admin op over a node's socket and returns its exit code.
func op(ctx context.Context, sock, name string, args any) (int, error) {
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	defer hc.CloseIdleConnections()
	body, _ := json.Marshal(map[string]any{"args": args})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://postwarden/op/"+name, bytes.NewReader(body))
	if err != nil {
		return 2, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 2, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 2, fmt.Errorf("%s: %s", resp.Status, b)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		var l struct {
			Exit  *int   `json:"exit"`
			Error string `json:"error"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return 2, err
		}
		if l.Exit != nil {
			return *l.Exit, nil
		}
	}
	return 2, errors.New("no exit line")
}

func writeFile(p, body string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	return os.WriteFile(p, []byte(body), mode)
}

// writeCampaign writes a campaign of n recipients prefix<i>@domain and
// returns the campaign file's path.
func writeCampaign(dir, id, prefix string, n int) (string, error) {
	var b strings.Builder
	b.WriteString("email,first_name,company\n")
	for i := range n {
		fmt.Fprintf(&b, "%s%d@%s,R%d,Co %d\n", prefix, i, domains[i%len(domains)], i, i%97)
	}
	if err := writeFile(filepath.Join(dir, id+".csv"), b.String(), 0o644); err != nil {
		return "", err
	}
	p := filepath.Join(dir, id+".yaml")
	return p, writeFile(p, fmt.Sprintf(`id: %[1]s
list: product-news
from: "Ana Ruiz <ana@example.com>"
subject: "{{.FirstName}}, a note about {{.Company}}"
template: templates/note
recipients: %[1]s.csv
legal_basis: legitimate_interest
lia: lia.md
audience: b2b
`, id), 0o644)
}

func (nd *node) start(bin string) error {
	return nd.startCmd(bin, "-c", nd.cfg, "--log-level", *flagLogLevel, "serve")
}

func (nd *node) startCmd(bin string, args ...string) error {
	f, err := os.OpenFile(nd.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	nd.cmd = exec.Command(bin, args...)
	nd.cmd.Stdout, nd.cmd.Stderr = f, f
	if err := nd.cmd.Start(); err != nil {
		return err
	}
	nd.exited = make(chan error, 1)
	go func() { nd.exited <- nd.cmd.Wait() }()
	return nil
}

func (nd *node) stop() {
	_ = nd.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-nd.exited:
	case <-time.After(30 * time.Second):
		_ = nd.cmd.Process.Kill()
		<-nd.exited
	}
}

// alive fails when a node's process has exited.
func alive(nodes []*node) error {
	for _, nd := range nodes {
		select {
		case err := <-nd.exited:
			nd.exited <- err
			log, _ := os.ReadFile(nd.log)
			return fmt.Errorf("%s exited: %v\n%s", nd.name, err, tail(string(log), 4000))
		default:
		}
	}
	return nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// waitServing waits until the node's admin socket answers an op.
func waitServing(nd *node) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if err := alive([]*node{nd}); err != nil {
			return err
		}
		if _, err := op(context.Background(), nd.sock, "suppress.check", map[string]string{"target": "nobody@acme.example"}); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s: admin socket never answered", nd.name)
}

// waitShares waits until every node's share worker is up: `cluster status`
// is healthy before the share streams exist (each serve creates them in the
// background, retrying with backoff while JetStream elects), and a campaign
// sent before then waits for the retries. Up means: the share streams and
// bucket are listed, and every node's heartbeat says its share worker is up
// (`shares_up` in `cluster status --json`).
func waitShares(bin string, nodes []*node) error {
	deadline := time.Now().Add(2 * time.Minute)
	want := []string{"KV_pw_shares", "PW_SHARE_DATA", "PW_SHARE_OUTCOMES"}
	for time.Now().Before(deadline) {
		if err := alive(nodes); err != nil {
			return err
		}
		have := map[string]bool{}
		for _, st := range streamsOf(bin, nodes[0]) {
			have[st.Name] = true
		}
		ok := true
		for _, w := range want {
			ok = ok && have[w]
		}
		if ok && sharesUp(bin, nodes[0]) == len(nodes) {
			return nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return errors.New("share workers never up (see the serve logs)")
}

// sharesUp is how many nodes' heartbeats, as n1's `cluster status` lists
// them, say their share worker is up.
func sharesUp(bin string, n1 *node) int {
	out, err := exec.Command(bin, "-c", n1.cfg, "--json", "cluster", "status").Output()
	if err != nil {
		return 0
	}
	var rep struct {
		Nodes []struct {
			Up       bool `json:"up"`
			SharesUp bool `json:"shares_up"`
		} `json:"nodes"`
	}
	if json.Unmarshal(bytes.TrimSpace(out), &rep) != nil {
		return 0
	}
	n := 0
	for _, m := range rep.Nodes {
		if m.Up && m.SharesUp {
			n++
		}
	}
	return n
}

// waitHealthy waits until `cluster status` on node 1 lists size nodes up,
// none stale, every replica caught up.
func waitHealthy(bin string, n1 *node, size int) error {
	deadline := time.Now().Add(time.Minute)
	var last []byte
	for time.Now().Before(deadline) {
		var stderr bytes.Buffer
		c := exec.Command(bin, "-c", n1.cfg, "--json", "cluster", "status")
		c.Stderr = &stderr
		out, err := c.Output()
		last = append(out, stderr.Bytes()...)
		if err == nil {
			var rep struct {
				Healthy bool `json:"healthy"`
				Nodes   []struct {
					Up             bool   `json:"up"`
					Stale          string `json:"stale"`
					ReplicaPending uint64 `json:"replica_pending"`
				} `json:"nodes"`
			}
			if json.Unmarshal(bytes.TrimSpace(out), &rep) == nil && rep.Healthy && len(rep.Nodes) == size {
				ok := true
				for _, m := range rep.Nodes {
					ok = ok && m.Up && m.Stale == "" && m.ReplicaPending == 0
				}
				if ok {
					return nil
				}
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("cluster never healthy; last status:\n%s", last)
}

// waitCount waits until the sink has n messages.
func waitCount(sink *mtatest.Sink, n int, d time.Duration, nodes []*node) error {
	deadline := time.Now().Add(d)
	for i := 0; sink.Count() < n; i++ {
		if time.Now().After(deadline) {
			return fmt.Errorf("sink has %d of %d after %v", sink.Count(), n, d)
		}
		if i%200 == 0 {
			if err := alive(nodes); err != nil {
				return err
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// waitSettled waits until no node holds an active message of the campaign
// (every outcome recorded).
func waitSettled(bin string, nodes []*node, id string) error {
	deadline := time.Now().Add(time.Minute)
	for _, nd := range nodes {
		for {
			out, err := exec.Command(bin, "-c", nd.cfg, "--json", "queue", "ls", "--campaign", id, "--state", "active").Output()
			if err == nil && len(bytes.TrimSpace(out)) == 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s still has active messages of %s: %v", nd.name, id, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// clockTick is USER_HZ, 100 on every Linux this runs on.
const clockTick = 100

// cpuOf reads utime+stime of each node's process, in seconds.
func cpuOf(nodes []*node) []float64 {
	out := make([]float64, len(nodes))
	for i, nd := range nodes {
		out[i] = procCPU(nd.cmd.Process.Pid)
	}
	return out
}

func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	// After "pid (comm) ": state is field 3 of stat(5), utime 14, stime 15.
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / clockTick
}

func rusageCPU(ps *os.ProcessState) float64 {
	return (ps.UserTime() + ps.SystemTime()).Seconds()
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:3], " ")
}

func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }

func sum(v []float64) float64 {
	t := 0.0
	for _, x := range v {
		t += x
	}
	return t
}

func report(w io.Writer, rounds []round, loadBefore, loadAfter string) {
	host, _ := os.Hostname()
	cores := 0
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		cores = strings.Count(string(b), "\nprocessor") + 1
	}
	first := rounds[0]
	fmt.Fprintf(w, "postwarden bench/cluster: %d recipients, %d domains, mx delivery to one loopback sink (discard), %s, %d CPUs, %d round(s); load average before %s, after %s\n\n",
		first.one.n, len(domains), host, cores, len(rounds), loadBefore, loadAfter)
	fmt.Fprintln(w, "| nodes | campaign send | first at sink | last at sink | msg/s | outcomes recorded | serve CPU per node (s) | idle CPU per node (ms/s) | CPU/msg per node (µs) | send CLI CPU/msg (µs) | total CPU/msg (µs) | sink sessions | duplicates |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	total := map[*result]float64{}
	for n, rd := range rounds {
		for _, r := range []*result{rd.single, rd.one, rd.apart, rd.three} {
			var cpu, idle, per []string
			for i := range r.cpu {
				cpu = append(cpu, fmt.Sprintf("%.2f", r.cpu[i]))
				idle = append(idle, fmt.Sprintf("%.0f", r.idle[i]*1000))
				per = append(per, fmt.Sprintf("%.0f", r.cpu[i]/float64(r.n)*1e6))
			}
			t := (sum(r.cpu) + r.sendCPU) / float64(r.n) * 1e6
			total[r] = t
			label := r.label
			if len(rounds) > 1 {
				label = fmt.Sprintf("%s, round %d", label, n+1)
			}
			fmt.Fprintf(w, "| %s | %.2f s | %.2f s | %.2f s | %.0f | %.2f s | %s | %s | %s | %.0f | %.0f | %d | %d |\n",
				label, r.send.Seconds(), r.first.Seconds(), r.wall.Seconds(), float64(r.n)/r.wall.Seconds(), r.settle.Seconds(),
				strings.Join(cpu, " / "), strings.Join(idle, " / "), strings.Join(per, " / "),
				r.sendCPU/float64(r.n)*1e6, t, r.sessions, r.dup)
		}
	}
	// serve is the serve processes' CPU per message alone: three
	// `campaign send` processes (one per node apart) cost more than one
	// for what they start up, not for what the nodes do.
	serve := map[*result]float64{}
	for r := range total {
		serve[r] = sum(r.cpu) / float64(r.n)
	}
	ratios := func(of map[*result]float64, num, den func(round) *result) string {
		var v []float64
		var each []string
		for _, rd := range rounds {
			x := of[num(rd)] / of[den(rd)]
			v = append(v, x)
			each = append(each, fmt.Sprintf("%.2f", x))
		}
		if len(v) == 1 {
			return fmt.Sprintf("**%.2f**", v[0])
		}
		return fmt.Sprintf("**%.2f** (median; rounds %s)", median(v), strings.Join(each, ", "))
	}
	single := func(rd round) *result { return rd.single }
	one := func(rd round) *result { return rd.one }
	apart := func(rd round) *result { return rd.apart }
	three := func(rd round) *result { return rd.three }
	fmt.Fprintf(w, "\ncoordination overhead, total CPU per message 3 nodes / 1 node: %s against one cluster node, %s against one node without `cluster:` (target < 1.15)\n", ratios(total, three, one), ratios(total, three, single))
	fmt.Fprintf(w, "serve CPU per message, three nodes without a cluster (a third each) over one: %s (what three processes on this box cost with nothing shared); the three-node cluster over them: %s\n", ratios(serve, apart, single), ratios(serve, three, apart))
	if first.one.natsCPU > 0 {
		fmt.Fprintf(w, "(the one cluster node's CPU includes its lone nats-server process: %.2f s, %.0f µs/msg)\n", first.one.natsCPU, first.one.natsCPU/float64(first.one.n)*1e6)
	}
	fmt.Fprintln(w, "\nJetStream streams after the campaign (messages per campaign message; each stored `replicas` times):")
	fmt.Fprintln(w, "\n| stream | 1 cluster node: msgs/msg, bytes/msg | 3 nodes: replicas, msgs/msg, bytes/msg |")
	fmt.Fprintln(w, "|---|---|---|")
	for _, st := range first.three.streams {
		o := ""
		for _, s1 := range first.one.streams {
			if s1.Name == st.Name {
				o = fmt.Sprintf("%.2f, %.0f", float64(s1.Messages)/float64(first.one.n), float64(s1.Bytes)/float64(first.one.n))
			}
		}
		fmt.Fprintf(w, "| %s | %s | %d, %.2f, %.0f |\n", st.Name, o, st.Replicas, float64(st.Messages)/float64(first.three.n), float64(st.Bytes)/float64(first.three.n))
	}
	if three := first.three; len(three.propLat) > 0 || three.probeMiss > 0 {
		fmt.Fprintf(w, "\ndelivery-to-suppression latency, 3 nodes, %d samples during a second %d-recipient campaign (suppress add on n2 via its admin socket; until n1 and n3 both answer suppressed, polled every 5 ms):\n\n", len(three.propLat)+three.probeMiss, three.n)
		fmt.Fprintln(w, "| measure | p50 | p90 | p99 | max |")
		fmt.Fprintln(w, "|---|---|---|---|---|")
		for _, row := range []struct {
			name string
			ds   []time.Duration
		}{{"suppress add on n2 (request → answer)", three.addLat}, {"answer on n2 → suppressed on n1 and n3", three.propLat}} {
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", row.name, ms(pct(row.ds, .5)), ms(pct(row.ds, .9)), ms(pct(row.ds, .99)), ms(pct(row.ds, 1)))
		}
		if three.probeMiss > 0 {
			fmt.Fprintf(w, "\n%d samples never seen suppressed within 10 s\n", three.probeMiss)
		}
	}
}

// median is the middle of v (the mean of the two middle values of an even
// count).
func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}
