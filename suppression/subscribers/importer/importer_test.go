package importer

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/gate"
	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

// Compile-time: the real stores satisfy what the importer declares.
var (
	_ Store = (*subscribers.Store)(nil)
	_ Gate  = (*gate.Gate)(nil)
)

// stores are real suppression and consent stores in a temp dir.
type stores struct {
	supp *suppression.Store
	subs *subscribers.Store
	dir  string
}

func newStores(t *testing.T) *stores {
	t.Helper()
	dir := t.TempDir()
	box, err := sealed.New(bytes.Repeat([]byte{9}, sealed.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	supp, err := suppression.Open(suppression.Config{Path: filepath.Join(dir, "suppression.db"), Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { supp.Close() })
	subs, err := subscribers.Open(subscribers.Config{Path: filepath.Join(dir, "subscribers.db"), Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { subs.Close() })
	return &stores{supp: supp, subs: subs, dir: dir}
}

func (s *stores) config() Config { return Config{Store: s.subs, Gate: gate.New(s.supp, s.subs)} }

func (s *stores) write(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(s.dir, name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (s *stores) state(t *testing.T, addr, list string) string {
	t.Helper()
	st, err := s.subs.Status(addr, list)
	if err != nil {
		t.Fatalf("Status(%s): %v", addr, err)
	}
	if st.State == "" {
		return "none"
	}
	return st.State
}

const header = "email,name,company,consented_at,ip,source\n"

// TestImport counts every kind of row: consent, legitimate interest,
// suppressed by each reason, invalid rows with file:line; the gate wins.
func TestImport(t *testing.T) {
	s := newStores(t)
	for _, e := range []suppression.Entry{
		{Target: "erin@acme.example", Reason: suppression.Erased},
		{Target: "frank@acme.example", Reason: suppression.HardBounce},
		{Target: "@umbrella.example", Reason: suppression.Complaint},
		{Target: "olga@acme.example", List: "news", Reason: suppression.Unsubscribed},
		{Target: "olga@acme.example", List: "other", Reason: suppression.Manual},
	} {
		if err := s.supp.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	path := s.write(t, "contacts.csv", header+
		"ana@acme.example,Ana,Acme,2025-01-02,192.0.2.1,fair\n"+ // 2
		"erin@acme.example,Erin,Acme,2025-01-02T10:00:00Z,192.0.2.2,fair\n"+ // 3
		"frank@acme.example,Frank,Acme,,,\n"+ // 4
		"zed@umbrella.example,Zed,Umbrella,2025-01-02,,\n"+ // 5
		"olga@acme.example,Olga,Acme,,,\n"+ // 6
		"hank@globex.example,Hank,Globex,,,\n"+ // 7
		"not-an-address,X,Y,,,\n"+ // 8
		"ivy@globex.example,Ivy,Globex,yesterday,,\n") // 9
	sum, err := Import(context.Background(), s.config(), path, "news", "crm-2025")
	if err != nil {
		t.Fatal(err)
	}
	want := Summary{File: path, List: "news", Rows: 8, Consent: 1, LegitimateInterest: 1, Suppressed: 4,
		SuppressedBy: map[string]int{"erased": 1, "hard_bounce": 1, "complaint": 1, "unsubscribed": 1}}
	errs := sum.Errors
	sum.Errors = nil
	if !reflect.DeepEqual(sum, want) {
		t.Errorf("summary\n got %+v\nwant %+v", sum, want)
	}
	if len(errs) != 2 || !strings.HasPrefix(errs[0], path+":8: email:") || !strings.HasPrefix(errs[1], path+":9: consented_at \"yesterday\"") {
		t.Errorf("row errors: %q", errs)
	}
	for addr, st := range map[string]string{"ana@acme.example": "confirmed", "hank@globex.example": "legitimate_interest",
		"erin@acme.example": "none", "frank@acme.example": "none", "zed@umbrella.example": "none", "olga@acme.example": "none"} {
		if got := s.state(t, addr, "news"); got != st {
			t.Errorf("%s: state %s, want %s", addr, got, st)
		}
	}
	// The evidence: the run's source with the row's, the IP with a consent time.
	var got subscribers.Subscriber
	_ = s.subs.List("news", func(sub subscribers.Subscriber) error {
		if sub.Address == "ana@acme.example" {
			got = sub
		}
		return nil
	})
	if got.Name != "Ana" || got.Company != "Acme" {
		t.Errorf("ana's record: %+v", got)
	}
	h, err := s.subs.History("ana@acme.example")
	if err != nil || len(h) != 1 || len(h[0].Events) != 1 {
		t.Fatalf("ana's history: %+v, %v", h, err)
	}
	if ev := h[0].Events[0]; ev.Source != "import:crm-2025/fair" || ev.IP != "192.0.2.1" ||
		!ev.Time.Equal(time.Date(2025, 1, 2, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("ana's evidence: %+v", ev)
	}
	// No consent time, no IP kept.
	if h, err := s.subs.History("hank@globex.example"); err != nil || len(h) != 1 || h[0].Events[0].IP != "" {
		t.Errorf("hank's history: %+v, %v", h, err)
	}
}

// TestImportExistingAndConsentHistory: a second run finds everyone already
// on the list; whoever unsubscribed or was erased in the consent store stays out.
func TestImportExistingAndConsentHistory(t *testing.T) {
	s := newStores(t)
	path := s.write(t, "a.csv", header+"ana@acme.example,,,,,\nbob@acme.example,,,2025-01-02,,\n")
	if _, err := Import(context.Background(), s.config(), path, "news", ""); err != nil {
		t.Fatal(err)
	}
	sum, err := Import(context.Background(), s.config(), path, "news", "")
	if err != nil {
		t.Fatal(err)
	}
	if sum.Rows != 2 || sum.Existing != 2 || sum.Consent+sum.LegitimateInterest+sum.Suppressed != 0 {
		t.Errorf("second run: %+v", sum)
	}
	if err := s.subs.Unsubscribe("ana@acme.example", "news", "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.subs.Erase("bob@acme.example", "req-1"); err != nil {
		t.Fatal(err)
	}
	sum, err = Import(context.Background(), s.config(), path, "news", "")
	if err != nil {
		t.Fatal(err)
	}
	if sum.Suppressed != 2 || sum.SuppressedBy["unsubscribed"] != 1 || sum.SuppressedBy["erased"] != 1 {
		t.Errorf("after unsubscribe and erasure: %+v", sum)
	}
}

// TestImportMasksUnlessReveal: row errors hide addresses unless Reveal.
func TestImportMasksUnlessReveal(t *testing.T) {
	s := newStores(t)
	path := s.write(t, "m.csv", header+"ana@@acme.example,,,,,\n\"bad\"quote@acme.example,,,,,\n")
	sum, err := Import(context.Background(), s.config(), path, "news", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Errors) != 2 || strings.Contains(strings.Join(sum.Errors, "\n"), "ana@") ||
		!strings.HasPrefix(sum.Errors[0], path+":2: ") || !strings.HasPrefix(sum.Errors[1], path+":3: ") {
		t.Errorf("masked errors: %q", sum.Errors)
	}
	cfg := s.config()
	cfg.Reveal = true
	sum, err = Import(context.Background(), cfg, path, "news", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Errors) != 2 || !strings.Contains(sum.Errors[0], "ana@@acme.example") {
		t.Errorf("revealed errors: %q", sum.Errors)
	}
}

// TestImportBatches: rows commit in batches, progress after each, the
// result the same as in one batch.
func TestImportBatches(t *testing.T) {
	s := newStores(t)
	var b strings.Builder
	b.WriteString("Email,Name\n")
	for _, l := range []string{"a", "b", "c", "d", "e"} {
		b.WriteString(l + "@acme.example," + l + "\n")
	}
	path := s.write(t, "b.csv", b.String())
	cfg := s.config()
	cfg.Batch = 2
	var progress []int
	cfg.Progress = func(rows int) { progress = append(progress, rows) }
	sum, err := Import(context.Background(), cfg, path, "news", "")
	if err != nil {
		t.Fatal(err)
	}
	if sum.Rows != 5 || sum.LegitimateInterest != 5 || len(sum.Errors) != 0 {
		t.Errorf("summary: %+v", sum)
	}
	if !reflect.DeepEqual(progress, []int{2, 4, 5}) {
		t.Errorf("progress: %v", progress)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Import(ctx, cfg, path, "other", ""); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled import: %v", err)
	}
	if st := s.state(t, "a@acme.example", "other"); st != "none" {
		t.Errorf("a cancelled import wrote: %s", st)
	}
}

// TestImportRefusesFile: a missing file or a header without an address
// column stops the import, naming the file.
func TestImportRefusesFile(t *testing.T) {
	s := newStores(t)
	missing := filepath.Join(s.dir, "missing.csv")
	if _, err := Import(context.Background(), s.config(), missing, "news", ""); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: %v", err)
	}
	path := s.write(t, "h.csv", "name,company\nAna,Acme\n")
	if _, err := Import(context.Background(), s.config(), path, "news", ""); err == nil || !strings.Contains(err.Error(), "h.csv:1:") {
		t.Errorf("header without address: %v", err)
	}
}

func TestParseConsentTime(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Time
		bad  bool
	}{
		{"", time.Time{}, false},
		{"2025-01-02", time.Date(2025, 1, 2, 0, 0, 0, 0, time.UTC), false},
		{"2025-01-02T10:00:00Z", time.Date(2025, 1, 2, 10, 0, 0, 0, time.UTC), false},
		{"yesterday", time.Time{}, true},
		{"02/01/2025", time.Time{}, true},
	} {
		got, err := parseConsentTime(tc.in)
		if (err != nil) != tc.bad || !got.Equal(tc.want) {
			t.Errorf("parseConsentTime(%q) = %v, %v", tc.in, got, err)
		}
	}
}
