package subscribers

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// ---- validation ----

// FieldError names the field of a sign-up or import that is refused, and why.
type FieldError struct {
	Field   string // "name", "company", "source", "privacy url", "consent text", "ip"…
	Problem string // "contains a control character"
}

// Error formats as "name: contains a control character".
func (e *FieldError) Error() string { return e.Field + ": " + e.Problem }

func checkField(name, v string, max int) error {
	if len(v) > max {
		return &FieldError{name, fmt.Sprintf("longer than %d bytes", max)}
	}
	if !utf8.ValidString(v) {
		return &FieldError{name, "not valid UTF-8"}
	}
	for _, r := range v {
		if r < 0x20 && r != '\t' && !(name == "consent text" && (r == '\n' || r == '\r')) || r == 0x7f {
			return &FieldError{name, "contains a control character"}
		}
	}
	return nil
}

// normIP returns the canonical form of ip ("" stays "").
func normIP(ip string) (string, error) {
	ip = strings.TrimSpace(ip)
	if ip == "" {
		return "", nil
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return "", &FieldError{"ip", fmt.Sprintf("%q is not an IP address", ip)}
	}
	return a.Unmap().String(), nil
}

// cutUA shortens a user agent to maxUserAgent bytes and drops control characters.
func cutUA(ua string) string {
	ua = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, strings.ToValidUTF8(ua, ""))
	if len(ua) > maxUserAgent {
		ua = strings.ToValidUTF8(ua[:maxUserAgent], "")
	}
	return ua
}

// checkCommon validates the fields shared by sign-ups and imports.
func checkCommon(list, name, company, source, privacy, consent string) error {
	if err := checkList(list, false); err != nil {
		return err
	}
	for _, f := range []struct {
		name, v string
		max     int
	}{{"name", name, maxField}, {"company", company, maxField}, {"source", source, maxField},
		{"privacy url", privacy, maxText}, {"consent text", consent, maxText}} {
		if err := checkField(f.name, f.v, f.max); err != nil {
			return err
		}
	}
	return nil
}

// trimmed returns sub with the spaces Subscribe ignores cut off.
func (sub Subscription) trimmed() Subscription {
	sub.List = strings.TrimSpace(sub.List)
	sub.Name, sub.Company = strings.TrimSpace(sub.Name), strings.TrimSpace(sub.Company)
	return sub
}

// Check says what Subscribe would refuse in sub, writing nothing, so a form
// can answer before it records anything: a bad address is an
// *address.Error, a bad name, company, source, privacy URL, consent text or
// IP a *FieldError naming the field.
func (sub Subscription) Check() error {
	if _, _, err := addrKey(sub.Address); err != nil {
		return err
	}
	sub = sub.trimmed()
	if err := checkCommon(sub.List, sub.Name, sub.Company, sub.Source, sub.PrivacyURL, sub.ConsentText); err != nil {
		return err
	}
	_, err := normIP(sub.IP)
	return err
}
