package optin

import (
	"testing"
	"time"

	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// goldenKey minted goldenTokens with the code of before the shared token
// codec (version 1); confirmation links already mailed must keep working.
var goldenKey = []byte("golden opt-in key, 32 bytes long")

var goldenTokens = []struct {
	claim Claim
	token string
}{
	{Claim{Address: "ana@example.com", List: "news", Issued: time.Unix(1700000000, 0)}, "AdMzzBd4hbi-0QG1C0Y3H48-0h5pIJV366cYwkrz3R9odvdkVVFz3rwZ6yep"},
	{Claim{Address: "李@例え.jp", List: "ニュース", Issued: time.Unix(1750000123, 0)}, "AWB1-5sjjvrOdwCI9v948qkXASraKetADA-seAWSW3vChKC1rS8n0QyNq7MpgROH9XBM"},
}

func TestGoldenTokensStillParse(t *testing.T) {
	tk, err := NewTokens(goldenKey, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range goldenTokens {
		now := g.claim.Issued.Add(30 * time.Minute)
		c, err := tk.Parse(g.token, now)
		if err != nil || c.Address != g.claim.Address || c.List != g.claim.List || !c.Issued.Equal(g.claim.Issued) {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", g.token, c, err, g.claim)
		}
		if _, err := tk.Parse(g.token, g.claim.Issued.Add(2*time.Hour)); err != ErrBadToken {
			t.Errorf("Parse(%q) after its ttl: err = %v, want ErrBadToken", g.token, err)
		}
	}
}

// TestNotAnUnsubscribeToken: opt-in and unsubscribe tokens come from the one
// token key; neither kind parses as the other, old or new.
func TestNotAnUnsubscribeToken(t *testing.T) {
	key := []byte("one token key for both kinds, 32")
	in, err := NewTokens(key, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	un, err := unsubscribe.NewTokens(key, "https://mail.example.com")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	// An unsubscribe claim whose payload is also a well-formed opt-in payload.
	issued := string([]byte{0, 0, 0, 0, 0x65, 0x53, 0xf1, 0x00})
	for _, tok := range []string{
		un.Mint(unsubscribe.Claim{Campaign: issued + "news", List: "a@b.example", Address: ""}),
		un.Mint(unsubscribe.Claim{Address: "a@b.example", List: "news", Campaign: "c1"}),
	} {
		if c, err := in.Parse(tok, now); err != ErrBadToken {
			t.Errorf("unsubscribe token %q parsed as opt-in: %+v, %v", tok, c, err)
		}
	}
	tok := in.Mint(Claim{Address: "a@b.example", List: "news", Issued: now})
	if c, err := un.Parse(tok); err != unsubscribe.ErrBadToken {
		t.Errorf("opt-in token %q parsed as unsubscribe: %+v, %v", tok, c, err)
	}
}
