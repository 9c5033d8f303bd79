package campaign

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/postwarden/postwarden/configs"
)

// sent lists the keys the queue holds, sorted.
func (q *fakeQueue) sent() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []string
	for _, m := range q.msgs {
		out = append(out, m.Key)
	}
	slices.Sort(out)
	return out
}

// expand turns exclude_countries entries into the set configs would give.
func expand(t *testing.T, entries ...string) map[string]bool {
	t.Helper()
	set, unknown := configs.ExpandCountries(entries)
	if len(unknown) > 0 {
		t.Fatalf("unknown entries %q", unknown)
	}
	return set
}

func TestSendLegalBasisTable(t *testing.T) {
	const countries = "email,first_name,company,country\n" +
		"de@acme.example,A,Acme,DE\n" +
		"us@acme.example,B,Acme,US\n" +
		"germany@acme.example,C,Acme,Germany\n" +
		"lower@acme.example,D,Acme,de\n" +
		"greece@acme.example,E,Acme,EL\n" +
		"blank@acme.example,F,Acme,\n" +
		"narnia@acme.example,G,Acme,Narnia\n" +
		"gb@acme.example,H,Acme,GB\n" +
		"uk@acme.example,I,Acme,United Kingdom\n" +
		"no@acme.example,J,Acme,Norway\n" +
		"is@acme.example,K,Acme,is\n" +
		"ch@acme.example,L,Acme,Switzerland\n" +
		"usa@acme.example,M,Acme,U.S.A.\n"
	const noCountry = "email,first_name,company\nann@acme.example,Ann,Acme\nbob@beta.example,Bob,Beta\n"
	all := func(keys ...string) []string { slices.Sort(keys); return keys }

	tests := []struct {
		name    string
		csv     string
		exclude []string
		unknown string
		consent map[string]bool // nil: legitimate interest
		sup     map[string]string
		sent    []string
		skipped map[string]int
		supp    map[string]int
	}{
		{name: "b2b free-mail skip", csv: "email,first_name,company\n" +
			"ann@gmail.com,Ann,-\nbob@acme.example,Bob,Acme\nCAROL@GMail.COM,Carol,-\ndan@mail.gmail.com,Dan,-\n",
			sent:    all("bob@acme.example", "dan@mail.gmail.com"), // exact domain match only
			skipped: map[string]int{SkipNotB2B: 2}},
		{name: "EU excluded, unknown country excluded by default", csv: countries, exclude: []string{"EU"},
			sent: all("us@acme.example", "gb@acme.example", "uk@acme.example", "no@acme.example", "is@acme.example",
				"ch@acme.example", "usa@acme.example"),
			skipped: map[string]int{SkipRegion: 6}}, // DE, Germany, de, EL, blank, Narnia
		{name: "EU excluded, unknown country included", csv: countries, exclude: []string{"eu"}, unknown: UnknownInclude,
			sent: all("us@acme.example", "blank@acme.example", "narnia@acme.example", "gb@acme.example", "uk@acme.example",
				"no@acme.example", "is@acme.example", "ch@acme.example", "usa@acme.example"),
			skipped: map[string]int{SkipRegion: 4}},
		{name: "UK group", csv: countries, exclude: []string{"UK"}, unknown: UnknownInclude,
			sent: all("de@acme.example", "us@acme.example", "germany@acme.example", "lower@acme.example", "greece@acme.example",
				"blank@acme.example", "narnia@acme.example", "no@acme.example", "is@acme.example", "ch@acme.example", "usa@acme.example"),
			skipped: map[string]int{SkipRegion: 2}},
		{name: "EEA group", csv: countries, exclude: []string{"EEA"}, unknown: UnknownInclude,
			sent: all("us@acme.example", "blank@acme.example", "narnia@acme.example", "gb@acme.example", "uk@acme.example",
				"ch@acme.example", "usa@acme.example"),
			skipped: map[string]int{SkipRegion: 6}},
		{name: "no country column, default exclude", csv: noCountry, exclude: []string{"EU"},
			skipped: map[string]int{SkipRegion: 2}},
		{name: "no country column, include", csv: noCountry, exclude: []string{"EU"}, unknown: UnknownInclude,
			sent: all("ann@acme.example", "bob@beta.example"), skipped: map[string]int{}},
		{name: "no exclusion sends every country", csv: noCountry,
			sent: all("ann@acme.example", "bob@beta.example"), skipped: map[string]int{}},
		{name: "unknown_country exclude without exclusions", csv: countries[:strings.Index(countries, "germany@")],
			unknown: UnknownExclude, sent: all("de@acme.example", "us@acme.example"), skipped: map[string]int{}},
		{name: "consent", csv: "email,company,country\n" +
			"yes@gmail.com,-,US\nno@acme.example,Acme,US\nunsub@acme.example,Acme,US\nde@acme.example,Acme,DE\n",
			exclude: []string{"EU"},
			consent: map[string]bool{"yes@gmail.com": true, "unsub@acme.example": true, "de@acme.example": true},
			sup:     map[string]string{"unsub@acme.example": "unsubscribed"},
			sent:    all("yes@gmail.com"), // free mail is no obstacle under consent
			skipped: map[string]int{SkipRegion: 1, SkipNoConsent: 1},
			supp:    map[string]int{"unsubscribed": 1}},
		{name: "order: region before b2b before suppression", csv: "email,country\n" +
			"a@gmail.com,DE\nb@gmail.com,US\nc@acme.example,FR\nd@acme.example,US\n",
			exclude: []string{"EU"}, sup: map[string]string{"a@gmail.com": "manual", "b@gmail.com": "manual", "c@acme.example": "manual", "d@acme.example": "manual"},
			skipped: map[string]int{SkipRegion: 2, SkipNotB2B: 1}, supp: map[string]int{"manual": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := testSpec(t, tt.csv)
			if tt.exclude != nil {
				spec.ExcludeCountries = expand(t, tt.exclude...)
			}
			spec.UnknownCountry = tt.unknown
			q := newFakeQueue()
			sup := &fakeSuppressions{reasons: tt.sup}
			deps := testDeps(q, sup)
			if tt.consent != nil {
				spec.LegalBasis, spec.LIA, spec.FreeMail = Consent, "", nil
				sup.consent = tt.consent
			}
			sum, err := Send(context.Background(), spec, deps, nil)
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			if got := q.sent(); !slices.Equal(got, tt.sent) {
				t.Errorf("sent %q\nwant %q", got, tt.sent)
			}
			if tt.supp == nil {
				tt.supp = map[string]int{}
			}
			rows := strings.Count(tt.csv, "\n") - 1
			if !maps.Equal(sum.Skipped, tt.skipped) && !(len(sum.Skipped) == 0 && len(tt.skipped) == 0) ||
				!maps.Equal(sum.Suppressed, tt.supp) || sum.Rows != rows || sum.Invalid != 0 || sum.Enqueued != len(tt.sent) {
				t.Errorf("summary = %+v, want skipped %v suppressed %v enqueued %d of %d rows", sum, tt.skipped, tt.supp, len(tt.sent), rows)
			}
			// Rows the region and free-mail filters skip never reach the
			// gate; every other row asks it once, on the campaign's list and basis.
			skipped := 0
			for _, n := range sum.Skipped {
				skipped += n
			}
			want := rows - skipped + sum.Skipped[SkipNoConsent]
			if sup.checked.Load() != int64(want) {
				t.Errorf("gate checks = %d, want %d", sup.checked.Load(), want)
			}
			if want > 0 && (!sup.lists[spec.List] || len(sup.lists) != 1 || !sup.bases[spec.LegalBasis] || len(sup.bases) != 1) {
				t.Errorf("gate asked on lists %v bases %v, want %s under %s", sup.lists, sup.bases, spec.List, spec.LegalBasis)
			}

			// Validate counts the same region and free-mail skips, with no store to ask.
			vsum, errs := Validate(context.Background(), spec)
			if len(errs) != 0 {
				t.Fatalf("Validate: %v", errs)
			}
			wantSkipped := maps.Clone(tt.skipped)
			delete(wantSkipped, SkipNoConsent)
			if len(wantSkipped) == 0 {
				wantSkipped = map[string]int{}
			}
			if !maps.Equal(vsum.Skipped, wantSkipped) || len(vsum.Suppressed) != 0 {
				t.Errorf("Validate summary = %+v, want skipped %v", vsum, wantSkipped)
			}
		})
	}
}

// A gate error under the consent basis stops the run and names the row.
func TestSendConsentStoreError(t *testing.T) {
	spec := testSpec(t, "email\nana@example.com\n")
	spec.LegalBasis, spec.LIA, spec.FreeMail = Consent, "", nil
	q := newFakeQueue()
	deps := testDeps(q, &fakeSuppressions{err: errors.New("disk on fire")})
	_, err := Send(context.Background(), spec, deps, nil)
	if err == nil || !strings.Contains(err.Error(), spec.Recipients+":2: suppression check: disk on fire") {
		t.Fatalf("err = %v", err)
	}
	if q.len() != 0 {
		t.Errorf("queue holds %d messages", q.len())
	}
}

func TestLegalBasisSpecRefused(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Spec)
		want string
	}{
		{"li without lia", func(s *Spec) { s.LIA = "" }, "lia: legitimate_interest needs a legitimate-interest assessment"},
		{"li b2c", func(s *Spec) { s.Audience = "b2c" }, `audience "b2c": legitimate_interest covers b2b audiences only`},
		{"li without free-mail list", func(s *Spec) { s.FreeMail = nil }, "free-mail list: legitimate_interest needs"},
		{"no legal basis", func(s *Spec) { s.LegalBasis = "" }, `legal_basis "": want legitimate_interest or consent`},
		{"group not expanded", func(s *Spec) { s.ExcludeCountries = map[string]bool{"EU": true} }, `exclude_countries: "EU" is not an ISO 3166-1 alpha-2 code`},
		{"bad unknown policy", func(s *Spec) { s.UnknownCountry = "maybe" }, `unknown_country "maybe": want exclude or include`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := testSpec(t, "email\nana@example.com\n")
			tt.edit(&spec)
			q := newFakeQueue()
			_, err := Send(context.Background(), spec, testDeps(q, &fakeSuppressions{}), nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Send err = %v, want %q", err, tt.want)
			}
			if q.len() != 0 {
				t.Errorf("queue holds %d messages", q.len())
			}
			_, errs := Validate(context.Background(), spec)
			if len(errs) != 1 || !strings.HasPrefix(errs[0].Error(), tt.want) {
				t.Errorf("Validate errs = %q, want one %q", errs, tt.want)
			}
		})
	}
	// Consent needs neither an LIA, nor b2b, nor the free-mail list.
	spec := testSpec(t, "email\nana@gmail.com\n")
	spec.LegalBasis, spec.LIA, spec.Audience, spec.FreeMail = Consent, "", "b2c", nil
	if _, errs := Validate(context.Background(), spec); len(errs) != 0 {
		t.Errorf("consent spec: %q", errs)
	}
}

func TestLegalBasisRecord(t *testing.T) {
	spec := testSpec(t, "email,country\nana@acme.example,FR\nbob@gmail.com,US\ncy@acme.example,ch\n")
	spec.ExcludeCountries = map[string]bool{"fr": true, "UK": true, "DE": true}
	q := newFakeQueue()
	deps := testDeps(q, &fakeSuppressions{})
	recs := &fakeRecords{}
	deps.Records = recs
	sum, err := Send(context.Background(), spec, deps, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Enqueued != 1 || !maps.Equal(sum.Skipped, map[string]int{SkipRegion: 1, SkipNotB2B: 1}) {
		t.Errorf("summary = %+v", sum)
	}
	if len(recs.recs) != 2 {
		t.Fatalf("records put = %d", len(recs.recs))
	}
	for i, raw := range recs.recs {
		var r Record
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatal(err)
		}
		if r.LegalBasis != LegitimateInterest || r.LIA != spec.LIA || r.LIAHash != "beef" || r.Audience != AudienceB2B ||
			r.RunBy == "" || !slices.Equal(r.ExcludeCountries, []string{"DE", "FR", "GB"}) || r.UnknownCountry != UnknownExclude {
			t.Errorf("record %d = %s", i, raw)
		}
		if i == 1 && (!maps.Equal(r.Summary.Skipped, sum.Skipped) || r.Summary.Suppressed == nil) {
			t.Errorf("end record summary = %+v", r.Summary)
		}
	}
	if !strings.Contains(string(recs.recs[1]), `"skipped":{"not_b2b":1,"region_excluded":1}`) {
		t.Errorf("end record = %s", recs.recs[1])
	}
}

// TestCampaignFileToSend loads real campaign files with configs, builds the
// Spec the way cmd/postwarden does, and sends.
func TestCampaignFileToSend(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("lia.md", "# Purpose\nNews.\n# Necessity\nWork mail.\n# Balancing\nLow impact.\n")
	write("fm.txt", "# ours\nmailbox.example\n")
	write("r.csv", "email,country\nann@acme.example,US\nbob@gmail.com,US\ncy@mailbox.example,US\ndee@acme.example,Deutschland\neve@acme.example,\n")
	head := "id: c1\nlist: news\nfrom: \"Ana <ana@example.com>\"\nsubject: Hi\ntemplate: t\nrecipients: r.csv\n"
	tests := []struct {
		name, extra string
		sent        []string
		skipped     map[string]int
	}{
		{"li, built-in list", "legal_basis: legitimate_interest\nlia: lia.md\naudience: b2b\nexclude_countries: [EU]\nunknown_country: include\n",
			[]string{"ann@acme.example", "cy@mailbox.example", "eve@acme.example"}, map[string]int{SkipNotB2B: 1, SkipRegion: 1}},
		{"li, own list", "legal_basis: legitimate_interest\nlia: lia.md\naudience: b2b\nfreemail_list: fm.txt\nexclude_countries: [eea]\n",
			[]string{"ann@acme.example", "bob@gmail.com"}, map[string]int{SkipNotB2B: 1, SkipRegion: 2}},
		{"consent", "legal_basis: consent\n",
			[]string{"ann@acme.example", "bob@gmail.com", "cy@mailbox.example", "dee@acme.example", "eve@acme.example"}, map[string]int{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := configs.LoadCampaign(write("c.yaml", head+tt.extra))
			if err != nil {
				t.Fatal(err)
			}
			spec := testSpec(t, "email\n")
			spec.Recipients = c.Recipients
			// The wiring cmd/postwarden does:
			spec.LegalBasis, spec.LIA, spec.Audience, spec.LIAHash = c.LegalBasis, c.LIA, c.Audience, c.LIAHash()
			spec.ExcludeCountries, spec.UnknownCountry, spec.FreeMail = c.ExcludedCountries(), c.UnknownCountry, c.FreeMail

			q := newFakeQueue()
			deps := testDeps(q, &fakeSuppressions{consent: map[string]bool{"ann@acme.example": true, "bob@gmail.com": true,
				"cy@mailbox.example": true, "dee@acme.example": true, "eve@acme.example": true}})
			sum, err := Send(context.Background(), spec, deps, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := q.sent(); !slices.Equal(got, tt.sent) || !maps.Equal(sum.Skipped, tt.skipped) {
				t.Errorf("sent %q skipped %v, want %q %v", got, sum.Skipped, tt.sent, tt.skipped)
			}
		})
	}
}
