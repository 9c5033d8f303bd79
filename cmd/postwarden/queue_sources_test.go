package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/queue"
)

// TestQueueByProviderAndSource sends a campaign in mx mode (a loopback DNS
// server, two Microsoft 365 tenants, one of them deferring every recipient)
// and reads the queue by provider and source: each message carries the
// campaign's pool; `queue ls --provider/--source` select by what the
// delivery reported, in JSON and text; `queue stats` and `queue top` count
// pending messages by provider and by source, those with none yet under ""
// ("(unknown)" in text); `queue show` prints pool, source and provider.
// Where the MTA reports the provider (microsoft for these tenants), the test
// checks it; where it reports none yet, it checks the "(unknown)" grouping.
func TestQueueByProviderAndSource(t *testing.T) {
	h := newHarness(t, mtatest.Options{Rcpt: func(rcpt string, n int) error {
		if strings.HasSuffix(rcpt, "@tenant01.example") {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "mailbox busy, try later"}
		}
		return nil
	}})
	domains := h.tenantConfig(2)
	csv, n := tenantCSV(domains, 3)
	h.mustRun(0, "campaign", "send", "--offline", h.campaign("prov-1", csv)) // its loopback DNS publishes no SPF or DMARC

	all := jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--campaign", "prov-1").stdout)
	if len(all) != n {
		t.Fatalf("%d messages, want %d", len(all), n)
	}
	var deferred []msgView
	for _, v := range all {
		if v.Pool != "default" {
			t.Errorf("message %s: pool %q, want the campaign's (default)", v.ID, v.Pool)
		}
		if v.Provider != "" && v.Provider != "microsoft" {
			t.Errorf("message %s to %s: provider %q, want microsoft (or none reported)", v.ID, v.Domain, v.Provider)
		}
		if v.State == queue.StateDeferred {
			deferred = append(deferred, v)
		}
	}
	if len(deferred) != 3 {
		t.Fatalf("%d deferred, want tenant01's 3", len(deferred))
	}
	provider, source := deferred[0].Provider, deferred[0].Source
	for _, v := range deferred {
		if v.Provider != provider || v.Source != source {
			t.Errorf("deferred messages differ: %+v and %+v", deferred[0], v)
		}
	}

	idsOf := func(vs []msgView) []string {
		var ids []string
		for _, v := range vs {
			ids = append(ids, v.ID)
		}
		return ids
	}
	ls := func(args ...string) []string {
		t.Helper()
		return idsOf(jsonLines[msgView](t, h.mustRun(0, append([]string{"--json", "queue", "ls", "--all"}, args...)...).stdout))
	}
	if provider != "" {
		if got := ls("--provider", provider, "--state", "deferred"); !slices.Equal(got, idsOf(deferred)) {
			t.Errorf("ls --provider %s --state deferred = %v, want %v", provider, got, idsOf(deferred))
		}
		if got := ls("--provider", provider, "--domain", domains[0]); len(got) != 3 {
			t.Errorf("ls --provider %s --domain %s: %d, want 3", provider, domains[0], len(got))
		}
		text := h.mustRun(0, "queue", "ls", "--all", "--provider", provider, "--state", "deferred").stdout
		if strings.Count(text, "deferred") != 3 {
			t.Errorf("ls --provider in text:\n%s", text)
		}
	}
	if source != "" {
		if got := ls("--source", source, "--state", "deferred"); !slices.Equal(got, idsOf(deferred)) {
			t.Errorf("ls --source %s --state deferred = %v, want %v", source, got, idsOf(deferred))
		}
	}
	for _, f := range []string{"--provider", "--source"} {
		if got := ls(f, "no-such-name"); len(got) != 0 {
			t.Errorf("ls %s no-such-name lists %v", f, got)
		}
	}

	// queue stats: the JSON fields, the counts, the text.
	raw := h.mustRun(0, "--json", "queue", "stats").stdout
	for _, field := range []string{`"by_provider":`, `"by_source":`} {
		if !strings.Contains(raw, field) {
			t.Errorf("queue stats JSON lacks %s: %s", field, raw)
		}
	}
	var st statsView
	if err := json.Unmarshal([]byte(strings.TrimSpace(raw)), &st); err != nil {
		t.Fatal(err)
	}
	if st.ByProvider[provider] != 3 || st.ProviderStates[provider]["deferred"] != 3 || len(st.ByProvider) != 1 ||
		st.BySource[source] != 3 || st.SourceStates[source]["deferred"] != 3 || len(st.BySource) != 1 {
		t.Errorf("stats by provider %v %v, by source %v %v; want the 3 deferred under %q and %q",
			st.ByProvider, st.ProviderStates, st.BySource, st.SourceStates, provider, source)
	}
	name := func(s string) string {
		if s == "" {
			return "(unknown)"
		}
		return s
	}
	text := h.mustRun(0, "queue", "stats").stdout
	for _, want := range []string{"PROVIDER", "SOURCE", name(provider) + "  ", name(source) + "  "} {
		if !strings.Contains(text, want) {
			t.Errorf("queue stats lacks %q:\n%s", want, text)
		}
	}
	top := h.mustRun(0, "queue", "top").stdout
	for _, want := range []string{"DOMAIN", "PROVIDER", "SOURCE", name(provider)} {
		if !strings.Contains(top, want) {
			t.Errorf("queue top lacks %q:\n%s", want, top)
		}
	}

	// queue show: pool, source, provider.
	show := h.mustRun(0, "queue", "show", deferred[0].ID).stdout
	for _, want := range []string{"pool:      default", "source:    " + name(source), "provider:  " + name(provider)} {
		if !strings.Contains(show, want) {
			t.Errorf("queue show lacks %q:\n%s", want, show)
		}
	}
	if v := jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "show", deferred[0].ID).stdout)[0]; v.Pool != "default" ||
		v.Provider != provider || v.Source != source || len(v.History) == 0 || v.History[len(v.History)-1].Provider != provider {
		t.Errorf("queue show JSON: %+v", v)
	}
}

// The provider and source filters and groupings through the admin socket
// while serve holds the queue: the flags reach the daemon.
func TestQueueProviderFlagsThroughDaemon(t *testing.T) {
	h := newHarness(t, mtatest.Options{Rcpt: deferGlobex})
	file := h.campaign("prov-2", adminCSV)
	h.serve()
	h.mustRun(0, "campaign", "send", file)
	waitFor(t, "globex deferred", func() bool {
		return len(jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--state", "deferred").stdout)) == 4
	})
	// Routes (delivery.routes) have no provider: every pending message is "(unknown)".
	if got := jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--provider", "microsoft").stdout); len(got) != 0 {
		t.Errorf("ls --provider microsoft lists %d routed messages", len(got))
	}
	st := jsonLines[statsView](t, h.mustRun(0, "--json", "queue", "stats").stdout)[0]
	if st.ByProvider[""] != 4 || st.BySource[""] != 4 || st.ProviderStates[""]["deferred"] != 4 {
		t.Errorf("stats by provider %v, by source %v; want the 4 deferred under \"\"", st.ByProvider, st.BySource)
	}
	if text := h.mustRun(0, "queue", "stats").stdout; !strings.Contains(text, "(unknown)") {
		t.Errorf("queue stats does not group the unknown provider:\n%s", text)
	}
	h.mustRun(2, "queue", "ls", "--all", "--provider")
}
