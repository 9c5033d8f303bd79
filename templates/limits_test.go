package templates

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// A template with a huge range is stopped at MaxMessageBytes with an error
// naming the template, having allocated a bounded amount: by Validate, by
// Render, and in the subject.
func TestRenderCapStopsHugeRange(t *testing.T) {
	const huge = `{{range 100000000}}0123456789012345678901234567890123456789{{end}}`
	links := "{{.UnsubscribeURL}} {{.PrivacyURL}}\n"
	for _, tc := range []struct{ name, html, text, subject, want string }{
		{"text body", `<a href="{{.UnsubscribeURL}}">u</a><a href="{{.PrivacyURL}}">p</a>`, links + huge, "Hi", "news.txt"},
		{"html body", `<a href="{{.UnsubscribeURL}}">u</a><a href="{{.PrivacyURL}}">p</a>` + huge, links, "Hi", "news.html"},
		{"subject", `<a href="{{.UnsubscribeURL}}">u</a><a href="{{.PrivacyURL}}">p</a>`, links, "Hi " + huge, "subject"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := filepath.Join(t.TempDir(), "news")
			os.WriteFile(base+".html", []byte(tc.html), 0o600)
			os.WriteFile(base+".txt", []byte(tc.text), 0o600)
			set, err := Load(base, tc.subject)
			if err != nil {
				t.Fatal(err)
			}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			verr := set.Validate()
			d := Data{FirstName: "Ana", UnsubscribeURL: "https://x.example/u/1", PrivacyURL: "https://x.example/p"}
			env := Envelope{From: "a@example.com", To: "b@example.com", MessageID: "1@example.com", Date: time.Now(),
				ListID: "news.example.com", Unsubscribe: []string{d.UnsubscribeURL}}
			_, rerr := set.Render(d, env)
			runtime.ReadMemStats(&after)
			for _, err := range []error{verr, rerr} {
				if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("error %v, want ErrTooLarge naming %s", err, tc.want)
				}
			}
			if a := after.TotalAlloc - before.TotalAlloc; a > 40*MaxMessageBytes {
				t.Errorf("allocated %d bytes", a)
			}
		})
	}
}
