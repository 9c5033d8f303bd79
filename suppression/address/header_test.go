package address

import (
	"strings"
	"testing"
)

// The one header rule, as every address list file (recipients CSV,
// suppression import, subscribers import) reads it.
func TestReadHeader(t *testing.T) {
	for _, tc := range []struct {
		name    string
		row     []string
		address int
		names   []string
		err     string
	}{
		{"plain", []string{"email", "name"}, 0, []string{"email", "name"}, ""},
		{"bom, case, spaces, hyphens", []string{"\uFEFF Name ", "E-Mail", "First Name"}, -1, nil, "no email column (columns: name, e_mail, first_name)"},
		{"bom before email", []string{"\uFEFFEmail", "Company"}, 0, []string{"email", "company"}, ""},
		{"address alias", []string{"list", "Address"}, 1, []string{"list", "address"}, ""},
		{"target alias", []string{"target", "reason"}, 0, []string{"target", "reason"}, ""},
		{"trailing comma ignored", []string{"email", ""}, 0, []string{"email", ""}, ""},
		{"duplicate refused", []string{"email", "name", "Name"}, -1, nil, `column "name" appears twice`},
		{"duplicate email refused", []string{"email", "EMAIL"}, -1, nil, `column "email" appears twice`},
		{"two address names refused", []string{"email", "address"}, -1, nil, "columns email, address all name the address"},
		{"no address column", []string{"name"}, -1, nil, "no email column"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ReadHeader("list.csv", tc.row)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.HasPrefix(err.Error(), "list.csv:1: ") {
					t.Fatalf("err = %v, want list.csv:1: … %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Address != tc.address || strings.Join(h.Names, "|") != strings.Join(tc.names, "|") {
				t.Fatalf("got address %d names %q, want %d %q", h.Address, h.Names, tc.address, tc.names)
			}
		})
	}
	h, _ := ReadHeader("f", []string{"Email", "Source"})
	if got := h.Field([]string{"a@example.com", " web \t"}, "SOURCE"); got != "web" {
		t.Fatalf("Field = %q", got)
	}
	if got := h.Field([]string{"a@example.com"}, "source"); got != "" {
		t.Fatalf("Field of a short row = %q", got)
	}
}
