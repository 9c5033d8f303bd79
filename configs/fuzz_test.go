package configs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseServer checks that no input panics and that every refusal is Errors.
func FuzzParseServer(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yaml")
	files = append(files, "postwarden.yaml", "default.yaml")
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parseServer("fuzz.yaml", data, "/tmp")
		var errs Errors
		switch {
		case err != nil && !errors.As(err, &errs):
			t.Fatalf("error %v is %T, not Errors", err, err)
		case err == nil && (s == nil || !filepath.IsAbs(s.DataDir)):
			t.Fatalf("accepted without an absolute data_dir: %+v", s)
		}
	})
}
