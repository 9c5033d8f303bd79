package configs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDeliveryAdaptive(t *testing.T) {
	for _, c := range []struct {
		yaml string
		want bool
		err  string
	}{
		{"", true, ""},
		{"delivery:\n  adaptive: true\n", true, ""},
		{"delivery:\n  adaptive: false\n", false, ""},
		{"delivery:\n  adaptive: maybe\n", false, "delivery.adaptive"},
	} {
		p := filepath.Join(t.TempDir(), "pw.yaml")
		os.WriteFile(p, []byte(serverHead+c.yaml), 0o644)
		s, err := LoadServer(p)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: err %v, want one naming %s", c.yaml, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", c.yaml, err)
		}
		if s.Delivery.Adaptive != c.want {
			t.Errorf("%q: adaptive %v, want %v", c.yaml, s.Delivery.Adaptive, c.want)
		}
	}
}
