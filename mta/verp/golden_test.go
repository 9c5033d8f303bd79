package verp

import (
	"strings"
	"testing"
)

// goldenKey minted goldenAddresses with the code of before the shared token
// codec (id || HMAC(key, "verp" || id)[:10]); bounces of mail already sent
// must still name their message.
var goldenKey = []byte("golden verp key, 32 bytes long!!")

var goldenAddresses = []struct{ id, addr string }{
	{"0190d4c3a1b2c3d4", "bounce+gaytsmdegrrtgyjrmizggm3egtcnmti7dcuvmefjxm@bounce.example.com"},
	{"x", "bounce+pcqcjmxk7se62eddhq@bounce.example.com"},
	{"ffffffffffffffffffffffff", "bounce+mztgmztgmztgmztgmztgmztgmztgmztgmztgmzuyhhe74mh3cm32vza@bounce.example.com"},
}

func TestGoldenAddressesStillParse(t *testing.T) {
	c, err := New(goldenKey, "bounce.example.com")
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range goldenAddresses {
		if a := c.Address(g.id); a == g.addr {
			t.Errorf("Address(%q) is still the old format", g.id)
		}
		for _, spelled := range []string{g.addr, strings.ToUpper(g.addr), "<" + g.addr + ">"} {
			if id, err := c.Parse(spelled); err != nil || id != g.id {
				t.Errorf("Parse(%q) = %q, %v; want %q", spelled, id, err, g.id)
			}
		}
	}
}
