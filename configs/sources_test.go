package configs

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/postwarden/postwarden/mta"
	"github.com/postwarden/postwarden/mta/warmup"
)

// TestDeliverySources reads the example: sources, a weighted and a
// plain pool, a warm-up schedule.
func TestDeliverySources(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pw.yaml")
	os.WriteFile(p, []byte(serverHead+`delivery:
  sources:
    - {name: ip1, address: 192.0.2.10, ehlo: mta1.example.com}
    - {name: ip2, address: 192.0.2.11, ehlo: mta2.example.com}
  pools:
    default: [ip1, ip2]
    weighted: [{source: ip1, weight: 3}, {source: ip2}]
  warmup: {ip2: [50, 100, 500, 1000, 5000, 10000, 20000, 50000]}
`), 0o644)
	s, err := LoadServer(p)
	if err != nil {
		t.Fatal(err)
	}
	dl := s.Delivery
	if want := []mta.Source{{Name: "ip1", Address: "192.0.2.10", EHLO: "mta1.example.com"},
		{Name: "ip2", Address: "192.0.2.11", EHLO: "mta2.example.com"}}; !reflect.DeepEqual(dl.Sources, want) {
		t.Errorf("sources %+v", dl.Sources)
	}
	if want := map[string][]mta.PoolMember{"default": {{Source: "ip1", Weight: 1}, {Source: "ip2", Weight: 1}}, "weighted": {{Source: "ip1", Weight: 3}, {Source: "ip2", Weight: 1}}}; !reflect.DeepEqual(dl.Pools, want) {
		t.Errorf("pools %+v", dl.Pools)
	}
	if want := (warmup.Schedule{"ip2": {50, 100, 500, 1000, 5000, 10000, 20000, 50000}}); !reflect.DeepEqual(dl.Warmup, want) {
		t.Errorf("warmup %+v", dl.Warmup)
	}
	if !dl.HasPool("weighted") || !dl.HasPool("default") || dl.HasPool("nope") {
		t.Error("HasPool")
	}
}

// TestDeliverySourcesErrors: each mistake is named by its field and line.
func TestDeliverySourcesErrors(t *testing.T) {
	for _, c := range []struct{ yaml, want string }{
		{"  sources:\n    - {name: ip1, address: mta1.example.com}\n", `pw.yaml:7: delivery.sources[0].address: "mta1.example.com" is not an IP address`},
		{"  sources:\n    - {name: ip1, address: 192.0.2.1}\n    - {name: ip1, address: 192.0.2.2}\n", `delivery.sources[1].name: source "ip1" is named twice`},
		{"  sources:\n    - {address: 192.0.2.1}\n", `missing required key "delivery.sources[0].name"`},
		{"  sources:\n    - {name: ip1, address: 192.0.2.1, ehlo: 'a b'}\n", `delivery.sources[0].ehlo: "a b" is not a host name`},
		{"  sources:\n    - {name: ip1, address: 192.0.2.1}\n  pools: {default: [ip9]}\n", `delivery.pools.default[0]: no source named "ip9" in delivery.sources`},
		{"  sources:\n    - {name: ip1, address: 192.0.2.1}\n  pools: {default: [{source: ip1, weight: 0}]}\n", `delivery.pools.default[0].weight: 0 must be between 1 and 1000`},
		{"  pools: {default: [ip1]}\n", `delivery.pools: pools need delivery.sources`},
		{"  sources:\n    - {name: ip1, address: 192.0.2.1}\n  warmup: {ip2: [10]}\n", `delivery.warmup.ip2: no source named "ip2"`},
		{"  sources:\n    - {name: ip1, address: 192.0.2.1}\n  warmup: {ip1: [10, 0]}\n", `day 2: cap 0`},
		{"  sources:\n    - {name: ip1, address: 192.0.2.1}\n  warmup: {ip1: [10, many]}\n", `delivery.warmup.ip1[1]: expected a whole number of messages`},
	} {
		p := filepath.Join(t.TempDir(), "pw.yaml")
		os.WriteFile(p, []byte(serverHead+"delivery:\n"+c.yaml), 0o644)
		_, err := LoadServer(p)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: err %v, want %q", c.yaml, err, c.want)
		}
	}
}
