package unsubscribe

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/postwarden/postwarden/suppression/token"
)

// goldenKey minted goldenTokens with the code of before the shared token
// codec (version 1, whose MAC did not cover the version byte). Tokens in
// mail already sent must keep working, in links and in mailto addresses.
var goldenKey = []byte("golden unsubscribe key, 32 bytes")

var goldenTokens = []struct {
	claim         Claim
	token, mailto string
}{
	{Claim{Address: "ana@example.com", List: "news", Campaign: "c1"}, "AfyleCvA3ekMx_gPh5P-jzQSfVzJEZPdqLe4gdVWQiHTPGTwDAsP8A", "mailto:unsubscribe+ah6kk6blydo6sdgh7ahype76r42be7k4zeizhxniw64idvkwiiq5gpde6agawd7q@bounce.example.com?subject=unsubscribe"},
	{Claim{Address: "Ana.Ruiz@Example.COM", List: "", Campaign: ""}, "AeRPv4QfEtO5KVSWHwtEpfRc5OqTKgiDacz9hOxrWzn-aDw6XT7_", "mailto:unsubscribe+ahse7p4ed4jnhojjkslb6c2eux2fzzhksmvara3jzt6yj3dllm4742b4hjot57y@bounce.example.com?subject=unsubscribe"},
	{Claim{Address: "jörg@xn--mller-kva.example", List: "Neuigkeiten – März", Campaign: "kampagne/ü"}, "ASsvzEpjYg5D2D-1WcdtEwahZs0xUZqHYn8Gz9paiAm5HT4i9SF46TRd3TwFxwdU_OP7Q8QpQFwe9gSaYWD5GHErzUb5PmXbyezhwGMo", "mailto:unsubscribe+aevs7tckmnra4q6yh62vtr3ncmdkczwngfizvb3cp4dm7ws2rae3shj6el2sc6hjgro52pafy4dvj7hd7nb4ikkalqppmbe2mfqpsgdrfpgun6j6mxn4t3hbybrsq@bounce.example.com?subject=unsubscribe"},
}

func TestGoldenTokensStillParse(t *testing.T) {
	tk, err := NewTokens(goldenKey, "https://mail.example.com")
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range goldenTokens {
		if c, err := tk.Parse(g.token); err != nil || c != g.claim {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", g.token, c, err, g.claim)
		}
		// Minted again, the claim gets the current version, which parses too.
		tok := tk.Mint(g.claim)
		if raw, _ := base64.RawURLEncoding.DecodeString(tok); len(raw) == 0 || raw[0] != token.Version {
			t.Errorf("Mint(%+v) = %q; want a version 2 token", g.claim, tok)
		} else if c, err := tk.Parse(tok); err != nil || c != g.claim {
			t.Errorf("Parse(%q) = %+v, %v", tok, c, err)
		}
		local := strings.TrimPrefix(g.mailto[:strings.IndexByte(g.mailto, '@')], "mailto:")
		if c, err := tk.ParseMailto(local); err != nil || c != g.claim {
			t.Errorf("ParseMailto(%q) = %+v, %v; want %+v", local, c, err, g.claim)
		}
	}
}
