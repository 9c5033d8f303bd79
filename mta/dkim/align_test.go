package dkim

import "testing"

func TestAligned(t *testing.T) {
	for _, tc := range []struct {
		key, from string
		want      bool
	}{
		{"example.com", "example.com", true},
		{"Example.COM.", "example.com", true},
		{"example.com", "mail.example.com", true},
		{"mail.example.com", "example.com", false},
		{"example.com", "badexample.com", false},
		{"example.com", "example.org", false},
	} {
		if got := Aligned(tc.key, tc.from); got != tc.want {
			t.Errorf("Aligned(%q, %q) = %v, want %v", tc.key, tc.from, got, tc.want)
		}
	}
}
