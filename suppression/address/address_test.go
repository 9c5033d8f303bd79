package address

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in, local, domain, key string
		err                    string // substring of the error; "" = must parse
	}{
		{in: "ana@example.com", local: "ana", domain: "example.com", key: "ana@example.com"},
		{in: "  Ana.Ruiz@Example.COM \t", local: "Ana.Ruiz", domain: "example.com", key: "ana.ruiz@example.com"},
		{in: "ana@example.com.", local: "ana", domain: "example.com", key: "ana@example.com"},
		{in: "jörg@müller.example", local: "jörg", domain: "xn--mller-kva.example", key: "jörg@xn--mller-kva.example"},
		{in: "x@ü.example", local: "x", domain: "xn--tda.example", key: "x@xn--tda.example"},
		{in: "x@XN--TDA.Example", local: "x", domain: "xn--tda.example", key: "x@xn--tda.example"},
		{in: "first+tag@sub.example.co.uk", local: "first+tag", domain: "sub.example.co.uk", key: "first+tag@sub.example.co.uk"},
		{in: "o'brien@example.com", local: "o'brien", domain: "example.com", key: "o'brien@example.com"},
		{in: "ana@localhost", local: "ana", domain: "localhost", key: "ana@localhost"},

		{in: "", err: "empty"},
		{in: "   ", err: "empty"},
		{in: "ana@@x", err: `address "ana@@x": more than one @`},
		{in: "ana.example.com", err: "missing @"},
		{in: "@example.com", err: "empty local part"},
		{in: "ana@", err: "empty domain"},
		{in: "Ana <ana@example.com>", err: "display names"},
		{in: "<ana@example.com>", err: "angle brackets"},
		{in: "ana@example.com\r\nBcc: victim@example.org", err: "CR or LF"},
		{in: "ana@example.com\nX: y", err: "CR or LF"},
		{in: "ana@example.com\r\n", err: "CR or LF"},
		{in: "ana\x00@example.com", err: "NUL"},
		{in: "an a@example.com", err: "whitespace"},
		{in: "ana@exa mple.com", err: "whitespace"},
		{in: "ana\x07@example.com", err: "control"},
		{in: "ana\u202e@example.com", err: "format character"},
		{in: strings.Repeat("a", 65) + "@example.com", err: "local part longer than 64"},
		{in: strings.Repeat("a", 64) + "@" + strings.Repeat("b", 60) + "." + strings.Repeat("c", 60) + "." + strings.Repeat("d", 60) + ".example", err: "longer than 254"},
		{in: "ana@-example.com", err: "hyphen"},
		{in: "ana@example-.com", err: "hyphen"}, {in: "ana@ab--cd.example", err: "domain"},
		{in: "ana@exa_mple.com", err: "domain"},
		{in: "ana@example..com", err: "domain"},
		{in: "ana@" + strings.Repeat("a", 64) + ".com", err: "label longer than 63"},
		{in: "ana@[192.0.2.1]", err: "address literal"},
		{in: "ana@192.0.2.1", err: "all-numeric"},
		{in: ".ana@example.com", err: "starts or ends with a dot"},
		{in: "ana.@example.com", err: "starts or ends with a dot"},
		{in: "a..na@example.com", err: "two dots"},
		{in: `"ana"@example.com`, err: "quoted"},
		{in: "ana,bob@example.com", err: `contains ','`},
		{in: "ana@exam\xffple.com", err: "UTF-8"},
	}
	for _, tc := range tests {
		a, err := Parse(tc.in)
		if tc.err != "" {
			if err == nil {
				t.Errorf("Parse(%q) = %+v, want error containing %q", tc.in, a, tc.err)
				continue
			}
			if !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Parse(%q) error %q, want it to contain %q", tc.in, err, tc.err)
			}
			if strings.ContainsAny(err.Error(), "\r\n\x00") {
				t.Errorf("Parse(%q) error %q carries raw control characters", tc.in, err)
			}
			var ae *Error
			if !errors.As(err, &ae) {
				t.Errorf("Parse(%q) error is %T, want *Error", tc.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.in, err)
			continue
		}
		if a.Local != tc.local || a.Domain != tc.domain {
			t.Errorf("Parse(%q) = %+v, want local %q domain %q", tc.in, a, tc.local, tc.domain)
		}
		if got := a.Key(); got != tc.key {
			t.Errorf("Parse(%q).Key() = %q, want %q", tc.in, got, tc.key)
		}
		if got, want := a.String(), tc.local+"@"+tc.domain; got != want {
			t.Errorf("Parse(%q).String() = %q, want %q", tc.in, got, want)
		}
	}
}

func TestNormalizeDomain(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{in: "Example.COM.", want: "example.com"},
		{in: "ü.example", want: "xn--tda.example"},
		{in: "bücher.EXAMPLE", want: "xn--bcher-kva.example"},
		{in: "", err: "empty"},
		{in: ".", err: "empty"},
		{in: "a..b", err: "domain"},
		{in: "ex ample.com", err: "whitespace"},
		{in: " example.com\t", want: "example.com"}, // surrounding spaces and tabs are trimmed
		{in: "example.com\r\n", err: "control"},
		{in: "exa\r\nmple.com", err: "control"},
	}
	for _, tc := range tests {
		got, err := NormalizeDomain(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("NormalizeDomain(%q) = %q, %v; want error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("NormalizeDomain(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestMask(t *testing.T) {
	tests := []struct{ in, want string }{
		{"ana.ruiz@example.com", "a***@example.com"},
		{"Ana@EXAMPLE.com", "A***@example.com"},
		{"jörg@müller.example", "j***@xn--mller-kva.example"},
		{"ñandu@example.com", "ñ***@example.com"},
		{"@Example.com", "@example.com"},
		{"@bad domain", "***"},
		{"Ana <ana@example.com>", "***"},
		{"not an address", "***"},
		{"", "***"},
		{"ana@example.com\r\nX: y", "***"},
	}
	for _, tc := range tests {
		if got := Mask(tc.in); got != tc.want {
			t.Errorf("Mask(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestMaskText(t *testing.T) {
	for in, want := range map[string]string{
		"550 5.1.1 <ANA@EXAMPLE.COM>: no such user":         "550 5.1.1 <A***@example.com>: no such user",
		"451 4.2.0 bob@x.example, carol@y.example deferred": "451 4.2.0 b***@x.example, c***@y.example deferred",
		"250 2.0.0 ok": "250 2.0.0 ok",
	} {
		if got := MaskText(in); got != want {
			t.Errorf("MaskText(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMailboxKey(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"ana@example.com", "ana@example.com"},
		{"Ana+1@Example.COM", "ana@example.com"},
		{"ana+news+x@example.com", "ana@example.com"},
		{"ana+@example.com", "ana@example.com"},
		{"+tag@example.com", "+tag@example.com"}, // no mailbox before the tag: the whole local part
		{"JÖRG+x@müller.example", "jörg@xn--mller-kva.example"},
	} {
		a, err := Parse(tc.in)
		if err != nil {
			t.Fatalf("%q: %v", tc.in, err)
		}
		if got := a.MailboxKey(); got != tc.want {
			t.Errorf("MailboxKey(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestMaskError(t *testing.T) {
	base := errors.New("store closed")
	for _, c := range []struct {
		err  error
		want string
		same bool // err itself comes back, its chain intact
	}{
		{nil, "", true},
		{base, "store closed", true},
		{fmt.Errorf("suppress ana@example.com: %w", base), "suppress a***@example.com: store closed", false},
		{fmt.Errorf("suppress <ANA@Example.COM>, bo@example.org: %w", base), "suppress <A***@example.com>, b***@example.org: store closed", false},
	} {
		got := MaskError(c.err)
		if c.err == nil {
			if got != nil {
				t.Errorf("MaskError(nil) = %v", got)
			}
			continue
		}
		if got.Error() != c.want || (got == c.err) != c.same {
			t.Errorf("MaskError(%q) = %q (same %v), want %q (same %v)", c.err, got, got == c.err, c.want, c.same)
		}
	}
}
