package campaign

import (
	"context"
	"testing"
)

// fakeMailto mints a mailto URI, or none for one campaign.
type fakeMailto struct{}

func (fakeMailto) UnsubscribeMailto(addr, list, campaign string) string {
	return "mailto:unsub+" + list + "@bounce.example.com"
}

// Deps.Mailto lists its URI after the https URL in List-Unsubscribe
// (RFC 2369 §3.2); without it only the https URL is listed.
func TestSendMailtoUnsubscribe(t *testing.T) {
	for _, c := range []struct {
		name   string
		mailto MailtoLinks
		extra  string
	}{
		{"with", fakeMailto{}, ", <mailto:unsub+product-news@bounce.example.com>"},
		{"without", nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			spec := testSpec(t, mixedCSV)
			q := newFakeQueue()
			deps := testDeps(q, &fakeSuppressions{})
			deps.Mailto = c.mailto
			if _, err := Send(context.Background(), spec, deps, nil); err != nil {
				t.Fatal(err)
			}
			p := parseMessage(t, q.get(t, spec.ID, "fred@example.com").Body)
			want := "<" + fakeLinks{}.UnsubscribeURL("FRED@example.com", spec.List, spec.ID) + ">" + c.extra
			if got := p.header.Get("List-Unsubscribe"); got != want {
				t.Errorf("List-Unsubscribe = %q, want %q", got, want)
			}
		})
	}
}
