package configs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBuiltinProviders(t *testing.T) {
	p, err := BuiltinProviders()
	if err != nil {
		t.Fatal(err)
	}
	if p.Default.Connections < 1 || p.Default.Rate <= 0 || p.Default.MessagesPerConnection < 1 || p.DefaultSource == "" {
		t.Errorf("default: %+v %q", p.Default, p.DefaultSource)
	}
	names := map[string]bool{}
	for _, r := range p.Rules {
		names[r.Name] = true
		if len(r.Suffixes) == 0 || len(r.Examples) == 0 || r.Source == "" || r.Title == "" {
			t.Errorf("%s: every shipped provider needs suffixes, examples, a title and a source: %+v", r.Name, r)
		}
		if r.Line == 0 || r.File != BuiltinProvidersName {
			t.Errorf("%s: defined at %s:%d", r.Name, r.File, r.Line)
		}
	}
	// the providers issue 12 names
	for _, n := range []string{"microsoft", "google", "proofpoint", "mimecast", "cisco", "barracuda", "sophos", "trendmicro",
		"hornetsecurity", "outlook", "yahoo", "apple", "gmx", "orange", "free", "zoho", "fastmail", "yandex", "mailru"} {
		if !names[n] {
			t.Errorf("no provider %s in the built-in table", n)
		}
	}
}

const serverHead = `hostname: mail.example.com
data_dir: var
public_url: https://mail.example.com
privacy_url: https://example.com/privacy
`

func TestShapingAndExtraProviders(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "extra.yaml"), []byte(`providers:
  - name: mycorp-gateway
    title: Our own gateway
    suffixes: [gw.mycorp.example]
    connections: 2
    source: agreed with their postmaster
  - name: proofpoint
    suffixes: [pp.mycorp.example.]
    rate: 30/m
`), 0o644)
	p := filepath.Join(dir, "pw.yaml")
	os.WriteFile(p, []byte(serverHead+`delivery:
  providers: extra.yaml
  shaping:
    microsoft: {connections: 20, rate: 300/m, messages_per_connection: 50}
    "Example.org": {connections: 2}
    default: {rate: 10/m}
`), 0o644)
	s, err := LoadServer(p)
	if err != nil {
		t.Fatal(err)
	}
	d := s.Delivery
	if d.Providers != filepath.Join(dir, "extra.yaml") {
		t.Errorf("providers path %q", d.Providers)
	}
	if got := d.Shaping["microsoft"]; got != (Shaping{Connections: 20, Rate: 5, MessagesPerConnection: 50}) {
		t.Errorf("shaping.microsoft %+v", got)
	}
	if got := d.Shaping["example.org"]; got != (Shaping{Connections: 2}) {
		t.Errorf("shaping.example.org %+v", got)
	}
	if got := d.Shaping["default"]; got.Rate*60 != 10 {
		t.Errorf("shaping.default %+v", got)
	}
	var mine, pp *ProviderRule
	for i, r := range d.ProviderTable.Rules {
		switch r.Name {
		case "mycorp-gateway":
			mine = &d.ProviderTable.Rules[i]
		case "proofpoint":
			pp = &d.ProviderTable.Rules[i]
		}
	}
	if mine == nil || mine.Shaping.Connections != 2 || mine.Source != "agreed with their postmaster" || mine.Line != 2 {
		t.Errorf("new provider: %+v", mine)
	}
	if pp == nil || !strings.Contains(strings.Join(pp.Suffixes, " "), "pphosted.com") || pp.Suffixes[len(pp.Suffixes)-1] != "pp.mycorp.example" ||
		pp.Shaping.Rate*60 != 30 || pp.Shaping.Connections != 5 {
		t.Errorf("merged proofpoint: %+v", pp)
	}
}

func TestShapingAndProvidersErrors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "extra.yaml"), []byte(`providers:
  - name: thief
    suffixes: [mail.protection.outlook.com]
  - name: empty
  - suffixes: [x.example]
  - name: bad
    suffixes: [x.example]
    connections: 0
    rate: 5/fortnight
    colour: blue
  - name: default
    suffixes: [y.example]
`), 0o644)
	p := filepath.Join(dir, "pw.yaml")
	os.WriteFile(p, []byte(serverHead+`delivery:
  providers: extra.yaml
  shaping:
    microsoft: {connections: -1}
    nosuchprovider: {connections: 2}
    "example.org": {}
    "example.net": {rate: 0}
    "example.com": {messages_per_connection: many}
`), 0o644)
	_, err := LoadServer(p)
	if err == nil {
		t.Fatal("bad shaping and providers accepted")
	}
	got := strings.Join(problems(t, err), "\n")
	for _, want := range []string{
		"extra.yaml:3: providers[0].suffixes[0]: mail.protection.outlook.com belongs to provider microsoft already",
		"extra.yaml:4: providers[1].suffixes: a new provider needs at least one MX host suffix",
		`extra.yaml:5: missing required key "providers[2].name"`,
		"extra.yaml:8: providers[3].connections: 0 must be between 1 and 1000",
		"extra.yaml:9: providers[3].rate:",
		`extra.yaml:10: unknown key "providers[3].colour"`,
		`extra.yaml:11: providers[4].name: "default" must be`,
		"pw.yaml:8: delivery.shaping.microsoft.connections: -1 must be between 1 and 1000",
		`pw.yaml:9: delivery.shaping.nosuchprovider: "nosuchprovider" is neither a provider`,
		"pw.yaml:10: delivery.shaping.example.org: sets nothing",
		"pw.yaml:11: delivery.shaping.example.net.rate: must be more than 0",
		"pw.yaml:12: delivery.shaping.example.com.messages_per_connection: expected an integer",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("errors lack %q:\n%s", want, got)
		}
	}

	missing := filepath.Join(dir, "pw2.yaml")
	os.WriteFile(missing, []byte(serverHead+"delivery:\n  providers: nothere.yaml\n"), 0o644)
	if _, err := LoadServer(missing); err == nil || !strings.Contains(err.Error(), "pw2.yaml:6: delivery.providers") || !strings.Contains(err.Error(), "nothere.yaml") {
		t.Errorf("missing providers file: %v", err)
	}
}
