package configs

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/postwarden/postwarden/campaign/brakes"
)

const brakesServerHead = `hostname: mail.example.com
data_dir: var
public_url: https://mail.example.com
privacy_url: https://example.com/privacy
`

// delivery.brakes defaults to Gmail's and Yahoo's figures; given keys
// override one by one; bad values are reported with file and line.
func TestServerBrakes(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "pw.yaml")
	os.WriteFile(p, []byte(brakesServerHead), 0o644)
	s, err := LoadServer(p)
	if err != nil {
		t.Fatal(err)
	}
	if s.Delivery.Brakes != brakes.Defaults || brakes.Defaults != (brakes.Thresholds{ComplaintRate: 0.003, HardBounceRate: 0.05, MinSample: 500}) {
		t.Errorf("default brakes %+v", s.Delivery.Brakes)
	}
	os.WriteFile(p, []byte(brakesServerHead+"delivery:\n  brakes: {hard_bounce_rate: 2.5%, min_sample: 1000}\n"), 0o644)
	if s, err = LoadServer(p); err != nil {
		t.Fatal(err)
	}
	if want := (brakes.Thresholds{ComplaintRate: 0.003, HardBounceRate: 0.025, MinSample: 1000}); s.Delivery.Brakes != want {
		t.Errorf("brakes %+v, want %+v", s.Delivery.Brakes, want)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(brakesServerHead+"delivery:\n  brakes:\n    complaint_rate: 0.3\n    hard_bounce_rate: 150%\n    min_sample: 0\n    speed: 1\n"), 0o644)
	_, err = LoadServer(bad)
	for _, want := range []string{"bad.yaml:7: delivery.brakes.complaint_rate:", "want a percentage such as 0.3%",
		"bad.yaml:8: delivery.brakes.hard_bounce_rate:", "bad.yaml:9: delivery.brakes.min_sample: 0: want at least 1", `bad.yaml:10: unknown key "delivery.brakes.speed"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// A campaign's brakes: and pool: are read; what the file leaves out takes
// the server's values.
func TestCampaignBrakesAndPool(t *testing.T) {
	data, err := os.ReadFile("campaigns/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	shipped, err := LoadCampaign("campaigns/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if shipped.Pool != "default" || shipped.Brakes.Over(brakes.Thresholds{}) != brakes.Defaults {
		t.Errorf("shipped campaign: pool %q, brakes %+v", shipped.Pool, shipped.Brakes.Over(brakes.Thresholds{}))
	}
	// The example without its own pool: and brakes: lines.
	var kept []string
	for _, l := range strings.SplitAfter(string(data), "\n") {
		if !strings.HasPrefix(l, "pool:") && !strings.HasPrefix(l, "brakes:") {
			kept = append(kept, l)
		}
	}
	data = []byte(strings.Join(kept, ""))
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	c, err := parseCampaign(p, filepath.Join("campaigns", "c.yaml"), append(data, []byte("pool: warm-1\nbrakes: {complaint_rate: 0.1%, hard_bounce_rate: 5%}\n")...))
	if err != nil {
		t.Fatal(err)
	}
	if c.Pool != "warm-1" {
		t.Errorf("pool %q", c.Pool)
	}
	server := brakes.Thresholds{ComplaintRate: 0.003, HardBounceRate: 0.02, MinSample: 700}
	if got, want := c.Brakes.Over(server), (brakes.Thresholds{ComplaintRate: 0.001, HardBounceRate: 0.05, MinSample: 700}); got != want {
		t.Errorf("brakes %+v, want %+v", got, want)
	}
	c, err = parseCampaign(p, filepath.Join("campaigns", "c.yaml"), data)
	if err != nil {
		t.Fatal(err)
	}
	if c.Pool != DefaultPool || c.Brakes.Over(server) != server {
		t.Errorf("pool %q brakes %+v: want the defaults", c.Pool, c.Brakes.Over(server))
	}
	_, err = parseCampaign(p, filepath.Join("campaigns", "c.yaml"), append(data, []byte("pool: \"warm 1/x\"\nbrakes:\n  hard_bounce_rate: five\n  min_sample: many\n")...))
	lines := strings.Count(string(data), "\n")
	for _, want := range []string{
		p + ":" + strconv.Itoa(lines+1) + ": pool:",
		p + ":" + strconv.Itoa(lines+3) + ": brakes.hard_bounce_rate:",
		p + ":" + strconv.Itoa(lines+4) + ": brakes.min_sample: expected an integer",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}
