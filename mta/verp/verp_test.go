package verp

import (
	"errors"
	"strings"
	"testing"
)

func codec(t *testing.T, key string) *Codec {
	t.Helper()
	c, err := New([]byte(key), "Bounce.Example.COM.")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRoundTrip(t *testing.T) {
	c := codec(t, "0123456789abcdef0123456789abcdef")
	for _, id := range []string{"0190d4c3a1b2c3d4", "x", strings.Repeat("f", 24)} {
		a := c.Address(id)
		if !strings.HasPrefix(a, "bounce+") || !strings.HasSuffix(a, "@bounce.example.com") {
			t.Fatalf("Address(%q) = %q", id, a)
		}
		if a != strings.ToLower(a) {
			t.Errorf("Address(%q) = %q is not lower-case", id, a)
		}
		if local := a[:strings.IndexByte(a, '@')]; len(local) > 64 {
			t.Errorf("local part of %q is %d octets (RFC 5321 §4.5.3.1.1: 64)", a, len(local))
		}
		for _, spelled := range []string{a, strings.ToUpper(a), "<" + a + ">", " " + a} {
			got, err := c.Parse(spelled)
			if err != nil || got != id {
				t.Errorf("Parse(%q) = %q, %v; want %q", spelled, got, err, id)
			}
		}
	}
}

func TestRejects(t *testing.T) {
	c := codec(t, "0123456789abcdef0123456789abcdef")
	other := codec(t, "another key, another key, 32 byt")
	good := c.Address("0190d4c3a1b2c3d4")
	tok := good[len("bounce+"):strings.IndexByte(good, '@')]
	flip := []byte(tok)
	if flip[3] == 'a' {
		flip[3] = 'b'
	} else {
		flip[3] = 'a'
	}
	cases := map[string]error{
		other.Address("0190d4c3a1b2c3d4"):                    ErrForged,
		"bounce+" + string(flip) + "@bounce.example.com":     ErrForged,
		"bounce+" + tok[:len(tok)-1] + "@bounce.example.com": ErrForged,
		"bounce+" + tok + "1@bounce.example.com":             ErrForged,
		"bounce+@bounce.example.com":                         ErrNotVERP,
		"bounce+" + tok + "@example.com":                     ErrNotVERP,
		"unsubscribe+" + tok + "@bounce.example.com":         ErrNotVERP,
		"bounce+" + tok: ErrNotVERP,
		"":              ErrNotVERP,
	}
	for addr, want := range cases {
		if id, err := c.Parse(addr); !errors.Is(err, want) || id != "" {
			t.Errorf("Parse(%q) = %q, %v; want %v", addr, id, err, want)
		}
	}
}

func TestNew(t *testing.T) {
	if _, err := New([]byte("short"), "bounce.example.com"); err == nil {
		t.Error("short key accepted")
	}
	if _, err := New(make([]byte, 32), "not a domain"); err == nil {
		t.Error("bad domain accepted")
	}
}

func FuzzParse(f *testing.F) {
	c, err := New([]byte("0123456789abcdef0123456789abcdef"), "bounce.example.com")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(c.Address("0190d4c3a1b2c3d4"))
	f.Add("bounce+@bounce.example.com")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := c.Parse(s)
		if err == nil && c.Address(id) != strings.ToLower(strings.Trim(strings.TrimSpace(s), "<>")) {
			// Any accepted spelling must be the canonical address up to case.
			if !strings.EqualFold(c.Address(id), strings.Trim(strings.TrimSpace(s), "<>")) {
				t.Errorf("Parse(%q) accepted a non-canonical spelling of %q", s, c.Address(id))
			}
		}
	})
}

// A cluster node's token names its node; tokens without one still parse
// (old tokens, single nodes), and both stay within 64 octets.
func TestRouteNamesTheNode(t *testing.T) {
	c := codec(t, "0123456789abcdef0123456789abcdef")
	id := "0190d4c3a1b2c3d4"
	a := c.AddressFrom(id, "mta1")
	if local := a[:strings.IndexByte(a, '@')]; len(local) > 64 {
		t.Errorf("local part of %q is %d octets (RFC 5321 §4.5.3.1.1: 64)", a, len(local))
	}
	for _, spelled := range []string{a, strings.ToUpper(a), "<" + a + ">"} {
		got, node, err := c.Route(spelled)
		if err != nil || got != id || node != NodeTag("mta1") {
			t.Errorf("Route(%q) = %q, %q, %v; want %q, %q", spelled, got, node, err, id, NodeTag("mta1"))
		}
		if got, err := c.Parse(spelled); err != nil || got != id {
			t.Errorf("Parse(%q) = %q, %v; want %q", spelled, got, err, id)
		}
	}
	if NodeTag("mta1") == NodeTag("mta2") || len(NodeTag("mta1")) != 8 {
		t.Errorf("tags %q %q", NodeTag("mta1"), NodeTag("mta2"))
	}
	old := c.Address(id)
	if got, node, err := c.Route(old); err != nil || got != id || node != "" {
		t.Errorf("Route(old token) = %q, %q, %v; want %q, \"\"", got, node, err, id)
	}
	if strings.Contains(strings.ToLower(a), "mta1") {
		t.Errorf("the node name shows in %q", a)
	}
}
