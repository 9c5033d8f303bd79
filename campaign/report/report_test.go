package report

import (
	"bytes"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/campaign"
	"github.com/postwarden/postwarden/campaign/brakes"
	"github.com/postwarden/postwarden/suppression/audit"
)

// memQueue is the queue as the report reads it, held in memory: the real
// queue's adapter lives in the binary, which the end-to-end test drives.
type memQueue struct {
	record  []byte
	states  map[string]int
	events  map[string]int
	msgs    []Message
	timings []Timing
}

func (q *memQueue) CampaignRecord(string) ([]byte, error)         { return q.record, nil }
func (q *memQueue) CampaignStates(string) (map[string]int, error) { return q.states, nil }
func (q *memQueue) CampaignEvents(string) (map[string]int, error) { return q.events, nil }
func (q *memQueue) CampaignTimings(_, kind string) ([]Timing, error) {
	if kind != "unsubscribe" {
		return nil, nil
	}
	return q.timings, nil
}
func (q *memQueue) CampaignMessages(_ string, fn func(Message) error) error {
	for _, m := range q.msgs {
		if err := fn(m); err != nil {
			return err
		}
	}
	return nil
}

type fixedBrakes struct{ st brakes.Status }

func (b fixedBrakes) Status(string) (brakes.Status, error) { return b.st, nil }

var t0 = time.Date(2026, 5, 4, 9, 0, 0, 0, time.UTC)

// fixture is a campaign of six messages: three delivered (one after a
// deferral), a hard and a soft bounce, one pending; two unsubscribes, an
// audit log with its send, a test send to a masked address, a pause and a
// resume, another campaign's entry and a suspension.
func fixture(t *testing.T) (Config, *memQueue) {
	t.Helper()
	rec := campaign.Record{ID: "spring", List: "news", Subject: "Hi", Recipients: "/c/spring.csv",
		LegalBasis: "legitimate_interest", Audience: "b2b", LIA: "/c/lia.md", LIAHash: strings.Repeat("a", 64),
		LIAHeadings: []string{"# LIA", "## Purpose"}, ExcludeCountries: []string{"US"}, UnknownCountry: "exclude",
		FileHash: strings.Repeat("b", 64), ConfigHash: strings.Repeat("c", 64), PrivacyURL: "https://example.com/privacy",
		RunBy: "pw", RequestedBy: "uid:1000", Started: t0,
		Summary: campaign.Summary{Rows: 9, Invalid: 1, InvalidLines: []string{"spring.csv:4: email: a***@x: bad", `spring.csv:6: email: "n***": missing @`},
			Suppressed: map[string]int{"unsubscribed": 1}, Skipped: map[string]int{"region_excluded": 1}, Enqueued: 6}}
	raw, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	q := &memQueue{record: raw,
		states: map[string]int{"delivered": 3, "bounced": 2, "deferred": 1},
		events: map[string]int{"bounced_hard": 1, "bounced_soft": 1, "unsubscribed": 2},
		msgs: []Message{
			{State: "delivered", Provider: "gmail", History: []Attempt{{Time: at(time.Second), Outcome: "delivered"}}},
			{State: "delivered", Provider: "gmail", History: []Attempt{{Time: at(2 * time.Second), Outcome: "delivered"}}},
			{State: "delivered", Provider: "microsoft", History: []Attempt{{Time: at(time.Second), Outcome: "deferred"}, {Time: at(90 * time.Second), Outcome: "delivered"}}},
			{State: "bounced", Provider: "microsoft", Counted: []string{"bounced_hard"}, History: []Attempt{{Time: at(3 * time.Second), Outcome: "bounced", Reason: "userunknown"}}},
			{State: "bounced", Counted: []string{"bounced_soft"}, History: []Attempt{{Time: at(4 * time.Second), Outcome: "bounced", Reason: "blocked"}}},
			{State: "deferred", Provider: "gmail", History: []Attempt{{Time: at(5 * time.Second), Outcome: "deferred"}}},
		},
		timings: []Timing{{At: at(time.Minute), Took: 4 * time.Millisecond}, {At: at(3 * time.Minute), Took: 1500 * time.Millisecond}},
	}
	log, err := audit.Open(filepath.Join(t.TempDir(), "audit.db"), time.Second, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	for _, e := range []audit.Entry{
		{Time: at(-time.Hour), Who: "uid:1000", Action: "queue.suspend", Target: "provider:gmail", Reason: "before"},
		{Time: at(0), Who: "uid:1000", Action: "campaign.send", Target: "campaign:spring", Details: map[string]string{"file_sha256": rec.FileHash}},
		{Time: at(time.Second), Who: "uid:1000", Action: "campaign.test", Target: "campaign:spring", Details: map[string]string{"to": "a***@acme.example"}},
		{Time: at(2 * time.Second), Who: "system:brakes", Action: "brake.trip", Target: "campaign:spring", Reason: "brake: hard_bounce_rate"},
		{Time: at(3 * time.Second), Who: "uid:1000", Action: "campaign.resume", Target: "campaign:spring"},
		{Time: at(4 * time.Second), Who: "uid:1000", Action: "campaign.send", Target: "campaign:autumn"},
		{Time: at(5 * time.Second), Who: "uid:1000", Action: "queue.suspend", Target: "source:10.0.0.1", Reason: "blocklisted"},
	} {
		if _, err := log.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	cfg := Config{Queue: q, Audit: log, Brakes: fixedBrakes{brakes.Status{Thresholds: brakes.Defaults}},
		Now: func() time.Time { return at(time.Hour) }, Log: zerolog.Nop()}
	return cfg, q
}

func TestBuild(t *testing.T) {
	cfg, _ := fixture(t)
	r, err := Build(cfg, "spring", "uid:1000")
	if err != nil {
		t.Fatal(err)
	}
	c := r.Counts
	if c.Enqueued != 6 || c.Delivered != 3 || c.Pending != 1 || c.Deferred != 1 || c.Bounced != 2 ||
		c.BouncedHard != 1 || c.BouncedSoft != 1 || c.Unsubscribed != 2 || c.Rows != 9 || c.Invalid != 1 ||
		c.Suppressed["unsubscribed"] != 1 || c.Skipped["region_excluded"] != 1 || len(c.InvalidRows) != 2 {
		t.Errorf("counts = %+v", c)
	}
	if p := r.Record; p == nil || p.ConfigHash == "" || p.PrivacyURL == "" || len(p.LIAHeadings) != 2 || p.RequestedBy != "uid:1000" {
		t.Errorf("provenance = %+v", r.Record)
	}
	wantBounces := []Bounce{{Kind: "hard", Reason: "userunknown", Count: 1}, {Kind: "soft", Reason: "blocked", Count: 1}}
	if len(r.Bounces) != 2 || r.Bounces[0] != wantBounces[0] || r.Bounces[1] != wantBounces[1] {
		t.Errorf("bounces = %+v", r.Bounces)
	}
	wantProv := []ProviderOutcomes{{Provider: "gmail", Delivered: 2, Pending: 1}, {Provider: "microsoft", Delivered: 1, Bounced: 1}, {Provider: "unknown", Bounced: 1}}
	if len(r.Providers) != 3 || r.Providers[0] != wantProv[0] || r.Providers[1] != wantProv[1] || r.Providers[2] != wantProv[2] {
		t.Errorf("providers = %+v", r.Providers)
	}
	// Attempts from 09:00:01 to 09:01:30: 5-second buckets keep within 24.
	d := r.Deliveries
	if d.Step != 5*time.Second || len(d.Labels) != 19 || d.Labels[0] != "09:00:00" {
		t.Errorf("deliveries step %v labels %v", d.Step, d.Labels)
	}
	total := 0
	for _, n := range d.Names {
		for _, v := range d.Counts[n] {
			total += v
		}
	}
	if total != 7 || d.Counts["delivered"][0] != 2 || d.Counts["delivered"][18] != 1 || d.Counts["deferred"][1] != 1 {
		t.Errorf("deliveries = %+v (total %d)", d.Counts, total)
	}
	u := r.Unsubscribes
	if u.Timed != 2 || u.Within1 != 1 || u.Median != 4*time.Millisecond || u.Max != 1500*time.Millisecond ||
		u.Latency[0] != 1 || u.Latency[3] != 1 {
		t.Errorf("unsubscribes = %+v", u)
	}
	// The campaign's entries, the suspension after its start; not the
	// other campaign's nor the earlier suspension; the test send's masked
	// address withheld.
	if len(r.Audit) != 4 || len(r.Pauses) != 2 || len(r.Suspensions) != 1 || r.Suspensions[0].Target != "source:10.0.0.1" {
		t.Errorf("audit %d, pauses %d, suspensions %+v", len(r.Audit), len(r.Pauses), r.Suspensions)
	}
	if got := c.InvalidRows[0]; got != "spring.csv:4: email: "+withheld+": bad" {
		t.Errorf("invalid row = %q, want its address withheld", got)
	}
	if got := c.InvalidRows[1]; got != `spring.csv:6: email: "n***": missing @` {
		t.Errorf("invalid row without an address = %q, want it whole", got)
	}
	if got := r.Audit[1].Details["to"]; got != withheld {
		t.Errorf("test send's address = %q, want it withheld", got)
	}
	if r.Brake == nil || len(r.Notes) != 0 {
		t.Errorf("brake %v, notes %q", r.Brake, r.Notes)
	}
}

// A campaign no store knows is ErrNotFound; one without a record (older,
// or known only by its messages) still reports.
func TestBuildNotFoundAndNoRecord(t *testing.T) {
	cfg, q := fixture(t)
	empty := &memQueue{}
	cfg.Queue = empty
	if _, err := Build(cfg, "nope", "x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown campaign: %v", err)
	}
	q.record = nil
	q.msgs = q.msgs[:2] // the rest erased or pruned
	cfg.Queue = q
	r, err := Build(cfg, "spring", "x")
	if err != nil {
		t.Fatal(err)
	}
	if r.Record != nil || r.Counts.Enqueued != 6 || len(r.Notes) != 1 || !strings.Contains(r.Notes[0], "4 of 6") {
		t.Errorf("record %v, counts %+v, notes %q", r.Record, r.Counts, r.Notes)
	}
}

// A record written before the new fields reads, and the report says what
// it lacks.
func TestOldRecord(t *testing.T) {
	cfg, q := fixture(t)
	q.record = []byte(`{"id":"spring","list":"news","subject":"Hi","recipients":"r.csv","legal_basis":"consent","file_hash":"ab","run_by":"pw","started":"2026-05-04T09:00:00Z"}`)
	r, err := Build(cfg, "spring", "x")
	if err != nil {
		t.Fatal(err)
	}
	if r.Record == nil || r.Record.ConfigHash != "" || len(r.Notes) != 1 || !strings.Contains(r.Notes[0], "predates") {
		t.Errorf("record %+v, notes %q", r.Record, r.Notes)
	}
	var buf bytes.Buffer
	if err := r.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "not recorded") {
		t.Error("the page does not say the config hash is not recorded")
	}
}

// The page: every figure under its name, five charts as inline SVG, no
// script, nothing fetched, no address; the JSON round-trips to the same page.
func TestWriteHTML(t *testing.T) {
	cfg, _ := fixture(t)
	r, err := Build(cfg, "spring", "uid:1000")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := r.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	for _, want := range []string{`data-figure="delivered">3<`, `data-figure="bounced_hard">1<`, `data-figure="enqueued">6<`,
		`data-figure="unsubscribed">2<`, "## Purpose", strings.Repeat("c", 64), "https://example.com/privacy", "userunknown",
		`id="chart-deliveries"`, `id="chart-latency"`, "default-src 'none'"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if n := strings.Count(page, "<svg"); n != 5 {
		t.Errorf("%d inline SVG charts, want 5", n)
	}
	lower := strings.ToLower(page)
	for _, bad := range []string{"<script", "javascript:", "<link", "@import", "src=\"http", "href=\"http", "url(http", "@acme.example", "<?xml"} {
		if strings.Contains(lower, bad) {
			t.Errorf("page holds %q", bad)
		}
	}
	raw, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	if err := back.WriteHTML(&again); err != nil {
		t.Fatal(err)
	}
	if again.String() != page {
		t.Error("the page from the report's JSON differs from the page from the report")
	}
}

// With nothing to draw, the page says so instead of a chart.
func TestWriteHTMLEmpty(t *testing.T) {
	r := &Report{Campaign: "c", Counts: CountsOf(map[string]int{"ready": 1}, nil),
		Deliveries: bucket(nil, nil, attemptOutcomes, 24), Unsubscribes: unsubscribesOf(nil, 24)}
	var buf bytes.Buffer
	if err := r.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "<svg") || !strings.Contains(buf.String(), "No delivery attempt is recorded.") {
		t.Errorf("empty report page:\n%s", buf.String())
	}
}

// Buckets widen to keep within the maximum; labels carry the date past a day.
func TestBucket(t *testing.T) {
	times := []time.Time{t0, t0.Add(30 * time.Hour)}
	s := bucket(times, []string{"a", "a"}, []string{"a"}, 24)
	if s.Step != 6*time.Hour || len(s.Labels) != 6 || s.Counts["a"][0] != 1 || s.Counts["a"][5] != 1 || s.Labels[0] != "05-04 06:00" {
		t.Errorf("series = %+v", s)
	}
}
