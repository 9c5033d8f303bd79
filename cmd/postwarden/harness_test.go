package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/configs"
	pwdkim "github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/queue"
)

// harness is a data directory, a server config routing every test domain to
// a loopback SMTP sink, and a way to run the CLI in this process.
type harness struct {
	t        *testing.T
	dir      string
	cfgPath  string
	sink     *mtatest.Sink
	httpAddr string
	// dns is the zone of delivery.resolver, a loopback DNS server: names it
	// does not hold get SERVFAIL, so the preflight's DNS checks warn that
	// they could not check and no query ever leaves the host.
	dns     *mtatest.Zone
	dnsAddr string
}

// testDomains are the recipient domains the campaigns use; all route to the sink.
var testDomains = []string{"acme.example", "globex.example", "initech.example", "umbrella.example"}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// listenAddr is a free loopback address for a server a test node starts
// later. Its port is below Linux's ephemeral range (32768–60999), so the
// outgoing connections the other nodes open meanwhile (routes, clients)
// cannot take it first — freeAddr's port 0 would hand out one from that
// range, and a node's embedded NATS then failed to bind now and then.
// A port is handed out once per test binary: two picks of the same free
// port (the birthday odds over a cluster test's nine were ~0.3 %) gave
// one node's http_listen the port another's cluster_listen took.
func listenAddr(t *testing.T) string {
	t.Helper()
	for range 200 {
		port := 20000 + rand.IntN(12000)
		handedOut.Lock()
		taken := handedOut.ports[port]
		handedOut.ports[port] = true
		handedOut.Unlock()
		if taken {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}
	t.Fatal("no free loopback port below the ephemeral range")
	return ""
}

// handedOut are the ports listenAddr gave.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

func newHarness(t *testing.T, opt mtatest.Options) *harness {
	t.Helper()
	sink, err := mtatest.Start(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	// Unix socket paths are limited to ~108 bytes: keep the data dir short.
	dir, err := os.MkdirTemp("", "pw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	h := &harness{t: t, dir: dir, sink: sink, httpAddr: listenAddr(t)}
	h.dns, h.dnsAddr = mtatest.ServeZone(t)
	h.dns.SetMissing(dns.RcodeServerFailure)
	var routes strings.Builder
	for _, d := range testDomains {
		fmt.Fprintf(&routes, "    %s: %s\n", d, sink.Addr)
	}
	cfg := fmt.Sprintf(`hostname: mail.test.example
data_dir: var
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
  resolver: %[3]s
`, h.httpAddr, routes.String(), h.dnsAddr)
	h.cfgPath = filepath.Join(dir, "postwarden.yaml")
	h.write("postwarden.yaml", cfg)
	h.write("templates/note.html", `<!doctype html><html lang="en"><body>
<p>Hello {{.FirstName}},</p><p>A note for {{.Company}}.</p>
<p><a href="{{.UnsubscribeURL}}">Unsubscribe</a> · <a href="{{.PrivacyURL}}">Privacy</a></p>
</body></html>`)
	h.write("lia.md", "# Legitimate-interest assessment\n\n## Purpose\nProduct news for buyers at companies.\n\n## Necessity\nWork addresses only, no profiling.\n\n## Balancing\nLow impact, one-click unsubscribe in every message.\n")
	h.write("templates/note.txt", "Hello {{.FirstName}},\n\nA note for {{.Company}}.\n\nUnsubscribe: {{.UnsubscribeURL}}\nPrivacy: {{.PrivacyURL}}\n")
	return h
}

// withoutResolver is cfg without the harness's delivery.resolver line, for a
// test that sets its own.
func (h *harness) withoutResolver(cfg string) string {
	return strings.Replace(cfg, "  resolver: "+h.dnsAddr+"\n", "", 1)
}

// mkDataDir makes the data directory, empty, as for a campaign validated
// before the first send: validate refuses a data_dir that is not there.
func (h *harness) mkDataDir() {
	h.t.Helper()
	if err := os.MkdirAll(filepath.Join(h.dir, "var"), 0o700); err != nil {
		h.t.Fatal(err)
	}
}

// write creates a file under the harness folder.
func (h *harness) write(name, content string) string {
	h.t.Helper()
	p := filepath.Join(h.dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return p
}

// campaign writes a campaign file and its recipients CSV, returning the file's path.
func (h *harness) campaign(id, csv string) string {
	h.t.Helper()
	h.write(id+".csv", csv)
	return h.write(id+".yaml", fmt.Sprintf(`id: %[1]s
list: product-news
from: "Ana Ruiz <ana@example.com>"
subject: "{{.FirstName}}, a note about {{.Company}}"
template: templates/note
recipients: %[1]s.csv
legal_basis: legitimate_interest
lia: lia.md
audience: b2b
`, id))
}

// result is one CLI run.
type result struct {
	code           int
	stdout, stderr string
}

// run runs the CLI in this process with the harness config.
func (h *harness) run(args ...string) result {
	h.t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code := run(ctx, append([]string{"-c", h.cfgPath}, args...), strings.NewReader(""), &out, &errb)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// mustRun runs the CLI and fails the test unless it exits with want.
func (h *harness) mustRun(want int, args ...string) result {
	h.t.Helper()
	r := h.run(args...)
	if r.code != want {
		h.t.Fatalf("postwarden %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, want, r.stdout, r.stderr)
	}
	return r
}

// jsonLines decodes --json output.
func jsonLines[T any](t *testing.T, s string) []T {
	t.Helper()
	var out []T
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l == "" {
			continue
		}
		var v T
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("bad JSON line %q: %v", l, err)
		}
		out = append(out, v)
	}
	return out
}

// config loads the harness's server config.
func (h *harness) config() *configs.Server {
	h.t.Helper()
	cfg, err := configs.LoadServer(h.cfgPath)
	if err != nil {
		h.t.Fatal(err)
	}
	return cfg
}

// verifyDKIM checks every DKIM signature of msg against the harness's key.
func (h *harness) verifyDKIM(msg []byte) []*dkim.Verification {
	h.t.Helper()
	cfg := h.config()
	key, _, err := pwdkim.LoadOrCreate(cfg.DKIM[0].KeyFile, cfg.DKIM[0].Domain, cfg.DKIM[0].Selector, cfg.DKIM[0].Type)
	if err != nil {
		h.t.Fatal(err)
	}
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{
		LookupTXT: func(domain string) ([]string, error) {
			if domain != "pw1._domainkey.example.com" {
				return nil, fmt.Errorf("no TXT for %s", domain)
			}
			return []string{key.TXTValue()}, nil
		},
	})
	if err != nil {
		h.t.Fatalf("dkim verify: %v", err)
	}
	return vs
}

// serve runs the daemon in this process until the test ends.
func (h *harness) serve() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := zerolog.New(zerolog.NewTestWriter(h.t)).Level(zerolog.WarnLevel)
	go func() { done <- serve(ctx, h.config(), log) }()
	h.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			h.t.Errorf("serve: %v", err)
		}
	})
	// Wait until the admin socket answers.
	sock := h.config().AdminSocket
	deadline := time.Now().Add(10 * time.Second)
	for daemonClient(sock) == nil {
		if time.Now().After(deadline) {
			h.t.Fatal("serve did not open its admin socket")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The pages answer too (serve opens them before the socket).
	resp, err := http.Get("http://" + h.httpAddr + "/healthz")
	if err != nil {
		h.t.Fatalf("serve's pages do not answer: %v", err)
	}
	resp.Body.Close()
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// bulkRecipient is the i-th generated recipient, spread over testDomains.
func bulkRecipient(i int) string {
	return fmt.Sprintf("rcpt%03d@%s", i, testDomains[i%len(testDomains)])
}

// bulkCSV is a recipients file of n generated recipients.
func bulkCSV(n int) string {
	var csv strings.Builder
	csv.WriteString("email,first_name,company\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&csv, "%s,R%d,Co\n", bulkRecipient(i), i)
	}
	return csv.String()
}

// unsubscribeLink is the http(s) List-Unsubscribe URL of the last message
// the sink received for rcpt (any case) whose bytes contain marker ("" any).
func (h *harness) unsubscribeLink(rcpt, marker string) string {
	h.t.Helper()
	link := ""
	for _, m := range h.sink.Messages() {
		if !strings.EqualFold(m.To[0], rcpt) || !bytes.Contains(m.Data, []byte(marker)) {
			continue
		}
		mr, err := mail.CreateReader(bytes.NewReader(m.Data))
		if err != nil {
			h.t.Fatal(err)
		}
		if mm := unsubURL.FindStringSubmatch(mr.Header.Get("List-Unsubscribe")); mm != nil {
			link = mm[1]
		}
	}
	if link == "" {
		h.t.Fatalf("no List-Unsubscribe URL in a message to %s", rcpt)
	}
	return link
}

// waitDelivered waits until n of the campaign's messages are recorded as
// delivered in the queue. The sink counts a message at DATA, before the
// runner records the outcome, so a sink count alone races the queue.
func (h *harness) waitDelivered(campaign string, n int) {
	h.t.Helper()
	waitFor(h.t, fmt.Sprintf("%d of %s delivered", n, campaign), func() bool {
		got := 0
		for _, v := range jsonLines[msgView](h.t, h.mustRun(0, "--json", "queue", "ls", "--all", "--campaign", campaign).stdout) {
			if v.State == queue.StateDelivered {
				got++
			}
		}
		return got >= n
	})
}
