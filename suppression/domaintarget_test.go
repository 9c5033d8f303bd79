package suppression

import "testing"

func TestIsDomainTarget(t *testing.T) {
	for _, tc := range []struct {
		target string
		want   bool
	}{
		{"@example.com", true},
		{"@", true},
		{"ann@example.com", false},
		{"example.com", false},
		{"", false},
	} {
		if got := IsDomainTarget(tc.target); got != tc.want {
			t.Errorf("IsDomainTarget(%q) = %v, want %v", tc.target, got, tc.want)
		}
	}
}
