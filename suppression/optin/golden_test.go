package optin

import (
	"testing"
	"time"
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
