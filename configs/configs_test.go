package configs

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postwarden/postwarden/mta"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression/optin"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// problems splits an Errors value into its messages.
func problems(t *testing.T, err error) []string {
	t.Helper()
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error %v (%T) is not Errors", err, err)
	}
	out := make([]string, len(errs))
	for i, e := range errs {
		out[i] = e.Error()
	}
	return out
}

func TestBadFiles(t *testing.T) {
	tests := []struct {
		load func(string) error
		file string
		want []string // each message, in order, as a prefix
	}{
		{server, "unknown_key.yaml", []string{`testdata/unknown_key.yaml:7: unknown key "hostnme"`}},
		{server, "wrong_type.yaml", []string{
			`testdata/wrong_type.yaml:3: data_dir: expected a string`,
			`testdata/wrong_type.yaml:6: delivery.workers: expected an integer`,
		}},
		{server, "missing_required.yaml", []string{`testdata/missing_required.yaml:1: missing required key "privacy_url"`}},
		{server, "bad_mode.yaml", []string{`testdata/bad_mode.yaml:6: delivery.mode: "smtp" must be one of capture, mx, relay`}},
		{server, "bad_duration.yaml", []string{
			`testdata/bad_duration.yaml:6: delivery.retry[1]: "15 minutes" is not a duration`,
			`testdata/bad_duration.yaml:7: delivery.max_age: "5days" is not a duration`,
		}},
		{server, "three_problems.yaml", []string{
			`testdata/three_problems.yaml:3: public_url: "ftp://example.com" is not an absolute http(s) URL`,
			`testdata/three_problems.yaml:5: delivery.relay: required in relay mode`,
			`testdata/three_problems.yaml:7: unknown key "delivery.colour"`,
		}},
		{server, "bad_dkim.yaml", []string{
			`testdata/bad_dkim.yaml:7: dkim[1].selector: "" is not a selector`,
			`testdata/bad_dkim.yaml:7: dkim[1].body_canonicalization: "loose" must be simple or relaxed`,
			`testdata/bad_dkim.yaml:8: dkim[2].type: "dsa" must be rsa or ed25519`,
			`testdata/bad_dkim.yaml:8: dkim[2]: domain EXAMPLE.com selector pw1 repeats dkim[0]`,
			`testdata/bad_dkim.yaml:10: delivery.routes.example.org: "mx.example.org": want host:port`,
		}},
		{campaign, "campaign_bad.yaml", []string{
			`testdata/campaign_bad.yaml:1: id: "bad id!" must be 1-64 of`,
			`testdata/campaign_bad.yaml:3: from: "not an address": mail:`,
			`testdata/campaign_bad.yaml:4: subject: must not be empty`,
			`testdata/campaign_bad.yaml:7: legal_basis: "because" must be legitimate_interest or consent`,
			`testdata/campaign_bad.yaml:8: audience: "b2x" must be b2b or b2c`,
			`testdata/campaign_bad.yaml:9: unknown key "lsit"`,
		}},
		{campaign, "campaign_missing.yaml", []string{
			`testdata/campaign_missing.yaml:1: missing required key "template"`,
			`testdata/campaign_missing.yaml:1: missing required key "recipients"`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			err := tt.load("testdata/" + tt.file)
			if err == nil {
				t.Fatal("loaded without error")
			}
			got := problems(t, err)
			if len(got) != len(tt.want) {
				t.Fatalf("got %d problems, want %d:\n%s", len(got), len(tt.want), err)
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(got[i], w) {
					t.Errorf("problem %d:\n got %s\nwant %s…", i, got[i], w)
				}
			}
			if strings.Count(err.Error(), "\n") != len(tt.want)-1 {
				t.Errorf("Error() is not one line per problem:\n%s", err)
			}
		})
	}
}

func server(p string) error   { _, err := LoadServer(p); return err }
func campaign(p string) error { _, err := LoadCampaign(p); return err }

func TestSyntaxAndShapeErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct{ name, body, want string }{
		{"empty.yaml", "", "empty.yaml:1: empty file"},
		{"list.yaml", "- a\n- b\n", "list.yaml:1: expected a mapping of keys at the top level"},
		{"syntax.yaml", "hostname: [a\n", "syntax.yaml: yaml:"},
		{"repeat.yaml", "hostname: a.example\ndata_dir: v\npublic_url: http://x.example\nprivacy_url: https://x.example/p\nhostname: b.example\n",
			"repeat.yaml:5: hostname: repeated key (first at line 1)"},
		{"empty_value.yaml", "hostname:\ndata_dir: v\npublic_url: http://x.example\nprivacy_url: https://x.example/p\n",
			"empty_value.yaml:1: hostname: must not be empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, tt.name)
			if err := os.WriteFile(p, []byte(tt.body), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := LoadServer(p)
			got := problems(t, err)
			if len(got) != 1 || !strings.Contains(got[0], tt.want) {
				t.Errorf("got %q, want one problem containing %q", got, tt.want)
			}
		})
	}
	if _, err := LoadServer(filepath.Join(dir, "absent.yaml")); err == nil || !strings.Contains(err.Error(), "absent.yaml") {
		t.Errorf("absent file: %v", err)
	}
}

func TestDKIMRSASigner(t *testing.T) {
	dir := t.TempDir()
	load := func(name, signer string) (*Server, error) {
		body := "hostname: a.example\ndata_dir: v\npublic_url: http://x.example\nprivacy_url: https://x.example/p\n" +
			"dkim:\n  - {domain: example.com, selector: pw1}\n  - {domain: example.com, selector: pw2" + signer + "}\n"
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return LoadServer(p)
	}
	for _, v := range []string{"auto", "go", "openssl"} {
		s, err := load(v+".yaml", ", rsa_signer: "+v)
		if err != nil {
			t.Fatalf("rsa_signer %s: %v", v, err)
		}
		if s.DKIM[0].RSASigner != "auto" || s.DKIM[1].RSASigner != v {
			t.Errorf("rsa_signer %s: got %q and %q, want auto (the default) and %s", v, s.DKIM[0].RSASigner, s.DKIM[1].RSASigner, v)
		}
	}
	_, err := load("fips.yaml", ", rsa_signer: fips")
	got := problems(t, err)
	want := `fips.yaml:7: dkim[1].rsa_signer: "fips" must be auto, go or openssl`
	if len(got) != 1 || !strings.HasSuffix(got[0], want) {
		t.Errorf("got %q, want one problem ending %q", got, want)
	}
}

func TestDefaultsAndPaths(t *testing.T) {
	s, err := LoadServer("testdata/relay_ok.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := filepath.Abs("testdata")
	checks := []struct{ name, got, want string }{
		{"Path", s.Path, filepath.Join(dir, "relay_ok.yaml")},
		{"DataDir", s.DataDir, "/srv/postwarden"},
		{"TokenKeyFile", s.TokenKeyFile, filepath.Join(dir, "keys/token.key")},
		{"AdminSocket", s.AdminSocket, "/srv/postwarden/admin.sock"},
		{"CaptureDir", s.Delivery.CaptureDir, "/srv/postwarden/outbox"},
		{"DKIM[0].KeyFile", s.DKIM[0].KeyFile, "/srv/postwarden/dkim/example.com.pw1.key"},
		{"DKIM[0].Type", s.DKIM[0].Type, "rsa"},
		{"DKIM[1].KeyFile", s.DKIM[1].KeyFile, filepath.Join(dir, "dkim/pw2.key")},
		{"DKIM[1].Type", s.DKIM[1].Type, "ed25519"},
		{"DKIM[0].BodyCanonicalization", s.DKIM[0].BodyCanonicalization, "simple"},
		{"DKIM[1].BodyCanonicalization", s.DKIM[1].BodyCanonicalization, "relaxed"},
		{"DKIM[0].RSASigner", s.DKIM[0].RSASigner, "auto"},
		{"PublicURL", s.PublicURL, "https://mail.example.com"},
		{"HTTPListen", s.HTTPListen, "127.0.0.1:8025"},
		{"SenderName", s.SenderName, "mail.example.com"},
		{"Mode", s.Delivery.Mode, ModeRelay},
		{"Relay", s.Delivery.Relay, "smtp://smarthost.example.net:587"},
		{"Route", s.Delivery.Routes["example.org"], "mx.example.org:2525"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	d := s.Delivery
	if len(d.Retry) != 2 || d.Retry[0] != 24*time.Hour || d.Retry[1] != 36*time.Hour {
		t.Errorf("Retry = %v, want [24h 36h]", d.Retry)
	}
	if d.MaxAge != 7*24*time.Hour || d.ConcurrencyPerDomain != 4 || d.SMTPPort != 25 || d.Workers != 64 {
		t.Errorf("MaxAge %v, ConcurrencyPerDomain %d, SMTPPort %d, Workers %d", d.MaxAge, d.ConcurrencyPerDomain, d.SMTPPort, d.Workers)
	}
	if s.Line("delivery.relay") != 11 || s.Line("dkim[1].selector") != 8 {
		t.Errorf("Line(delivery.relay) = %d, Line(dkim[1].selector) = %d", s.Line("delivery.relay"), s.Line("dkim[1].selector"))
	}
}

func TestShippedServer(t *testing.T) {
	s, err := LoadServer("postwarden.yaml")
	if err != nil {
		t.Fatal(err)
	}
	root, _ := filepath.Abs("..")
	if s.DataDir != filepath.Join(root, "var") || s.Delivery.Mode != ModeCapture ||
		s.Delivery.CaptureDir != filepath.Join(root, "var", "outbox") || s.Hostname != "mail.example.com" {
		t.Errorf("DataDir %q, Mode %q, CaptureDir %q, Hostname %q", s.DataDir, s.Delivery.Mode, s.Delivery.CaptureDir, s.Hostname)
	}
	if len(s.DKIM) != 1 || s.DKIM[0].KeyFile != filepath.Join(root, "var", "dkim", "example.com.pw1.key") {
		t.Errorf("DKIM = %+v", s.DKIM)
	}
	if len(s.Delivery.Retry) != 6 || s.Delivery.Retry[5] != 4*time.Hour || s.Delivery.MaxAge != 120*time.Hour {
		t.Errorf("Retry %v, MaxAge %v", s.Delivery.Retry, s.Delivery.MaxAge)
	}
}

func TestDefaultServer(t *testing.T) {
	s, err := DefaultServer()
	if err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	if s.Path != "" || s.DataDir != filepath.Join(wd, "var") || s.Delivery.Mode != ModeCapture ||
		s.TokenKeyFile != filepath.Join(wd, "var", "token.key") {
		t.Errorf("Path %q, DataDir %q, Mode %q, TokenKeyFile %q", s.Path, s.DataDir, s.Delivery.Mode, s.TokenKeyFile)
	}
	if len(s.DKIM) != 1 || s.DKIM[0].Domain != "example.com" || s.DKIM[0].Selector != "pw1" {
		t.Errorf("DKIM = %+v", s.DKIM)
	}
}

func TestShippedCampaign(t *testing.T) {
	c, err := LoadCampaign("campaigns/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != "example-2026-q4" || c.List != "product-news" || c.From != "Ana Ruiz <ana@example.com>" ||
		c.LegalBasis != LegitimateInterest || c.Audience != AudienceB2B {
		t.Errorf("campaign = %+v", c)
	}
	// Paths resolve against the campaign's folder and point at the shipped files.
	for _, p := range []string{c.Template + ".html", c.Template + ".txt", c.Recipients, c.LIA} {
		if !filepath.IsAbs(p) {
			t.Errorf("%s is not absolute", p)
		}
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
	if c.Line("template") != 8 || c.Line("id") != 2 || c.Line("nope") != 0 {
		t.Errorf("Line(template) = %d, Line(id) = %d", c.Line("template"), c.Line("id"))
	}
	data, _ := os.ReadFile("campaigns/example.yaml")
	sum := sha256.Sum256(data)
	if h, err := c.Hash(); err != nil || h != hex.EncodeToString(sum[:]) {
		t.Errorf("Hash = %q, %v", h, err)
	}
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"5m", 5 * time.Minute, true},
		{"7d", 7 * 24 * time.Hour, true},
		{"1d12h", 36 * time.Hour, true},
		{"1d30m", 24*time.Hour + 30*time.Minute, true},
		{"d", 0, false},
		{"1dd", 0, false},
		{"1.5d", 0, false},
		{"soon", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseDuration(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseDuration(%q) = %v, %v", tt.in, got, err)
		}
	}
}

func TestDeliveryEngineKeys(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "pw.yaml")
	os.WriteFile(p, []byte(`hostname: mail.example.com
data_dir: var
public_url: https://mail.example.com
privacy_url: https://example.com/privacy
smtp_listen: 127.0.0.1:2526
bounce_domain: bounce.example.com
metrics_listen: 127.0.0.1:9464
delivery:
  mode: mx
  rates: {default: 0, "gmail.com": 20/s, "yahoo.com": 600/m}
  tls: {default: opportunistic, "example.org": verify}
  mta_sts: true
  max_messages_per_connection: 50
  resolver: 127.0.0.1:5353
  smtp_port: 2525
`), 0o644)
	s, err := LoadServer(p)
	if err != nil {
		t.Fatal(err)
	}
	d := s.Delivery
	if s.SMTPListen != "127.0.0.1:2526" || s.BounceDomain != "bounce.example.com" || s.MetricsListen != "127.0.0.1:9464" {
		t.Errorf("listeners: %+v", s)
	}
	if d.Rates["gmail.com"] != 20 || d.Rates["yahoo.com"] != 10 || d.Rates["default"] != 0 {
		t.Errorf("rates: %v", d.Rates)
	}
	if d.TLS["example.org"] != TLSVerify || d.TLS["default"] != TLSOpportunistic || !d.MTASTS {
		t.Errorf("tls: %v %v", d.TLS, d.MTASTS)
	}
	if d.MaxMessagesPerConnection != 50 || d.Resolver != "127.0.0.1:5353" || d.SMTPPort != 2525 {
		t.Errorf("delivery: %+v", d)
	}

	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(`hostname: mail.example.com
data_dir: var
public_url: https://mail.example.com
privacy_url: https://example.com/privacy
smtp_listen: 127.0.0.1:2526
delivery:
  rates: {"gmail.com": 20/fortnight}
  tls: {"example.org": sometimes}
  mta_sts: maybe
`), 0o644)
	_, err = LoadServer(bad)
	if err == nil {
		t.Fatal("bad delivery keys accepted")
	}
	for _, want := range []string{"bad.yaml:5: smtp_listen: needs bounce_domain", "bad.yaml:7: delivery.rates.gmail.com", "bad.yaml:8: delivery.tls.example.org", "bad.yaml:9: delivery.mta_sts"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]float64{"0": 0, "20/s": 20, "120/m": 2, "3600/h": 1, "2.5/s": 2.5} {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "20", "x/s", "-1/s", "5/d"} {
		if _, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) accepted", in)
		}
	}
}

func TestPrivacyKeys(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "pw.yaml")
	os.WriteFile(p, []byte(`hostname: mail.example.com
data_dir: var
public_url: https://mail.example.com
privacy_url: https://example.com/privacy
lists:
  news: {name: "Product news", double_opt_in: true}
  ops: {double_opt_in: false}
data_key_file: keys/data.key
retention: {finished_messages: 30d, pending_optin: 2d}
optin_ttl: 48h
branding: {name: "Example Ltd", logo_url: "https://example.com/logo.png", color: "#112233"}
`), 0o644)
	s, err := LoadServer(p)
	if err != nil {
		t.Fatal(err)
	}
	if l := s.Lists["news"]; l.Name != "Product news" || !l.DoubleOptIn || s.Lists["ops"].DoubleOptIn {
		t.Errorf("lists: %+v", s.Lists)
	}
	if s.DataKeyFile != filepath.Join(dir, "keys", "data.key") || s.OptinTTL != 48*time.Hour {
		t.Errorf("data_key_file %s optin_ttl %v", s.DataKeyFile, s.OptinTTL)
	}
	if r := s.Retention; r.FinishedMessages != 30*24*time.Hour || r.PendingOptin != 48*time.Hour || r.Audit != 1825*24*time.Hour {
		t.Errorf("retention: %+v", r)
	}
	if b := s.Branding; b.Name != "Example Ltd" || b.Color != "#112233" || b.Background != "#ffffff" {
		t.Errorf("branding: %+v", b)
	}

	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(`hostname: mail.example.com
data_dir: var
public_url: https://mail.example.com
privacy_url: https://example.com/privacy
lists:
  news: {name: "Product news"}
branding: {color: red, logo_url: "http://x.example/l.png"}
`), 0o644)
	_, err = LoadServer(bad)
	for _, want := range []string{"bad.yaml:6: missing required key \"lists.news.double_opt_in\"", "branding.color", "branding.logo_url"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

func TestHTTPProxiesAndLimits(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "pw.yaml")
	os.WriteFile(p, []byte(`hostname: mail.example.com
data_dir: var
public_url: https://mail.example.com
privacy_url: https://example.com/privacy
http_trusted_proxies: [127.0.0.1, "10.0.0.0/8", "2001:db8::/32"]
subscribe_limits:
  confirmations_per_mailbox: {rate: 2/h}
  confirmations_total: {rate: 0}
unsubscribe_limits:
  per_token: {rate: 1/m, burst: 2}
`), 0o644)
	s, err := LoadServer(p)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(s.HTTPTrustedProxies) != "[127.0.0.1/32 10.0.0.0/8 2001:db8::/32]" {
		t.Errorf("proxies %v", s.HTTPTrustedProxies)
	}
	sl, ul := s.SubscribeLimits, s.UnsubscribeLimits
	if sl.ConfirmationsPerMailbox != (Limit{2.0 / 3600, 3}) || sl.ConfirmationsTotal.Rate != 0 {
		t.Errorf("given limits: %+v", sl)
	}
	if sl.RequestsPerIP != (Limit{5.0 / 60, 10}) || sl.ConfirmationsPerNetwork != (Limit{60.0 / 3600, 20}) {
		t.Errorf("default limits: %+v", sl)
	}
	if ul.PerToken != (Limit{1.0 / 60, 2}) || ul.PerIP != (Limit{1, 120}) {
		t.Errorf("unsubscribe limits: %+v", ul)
	}
	if d, err := DefaultServer(); err != nil || len(d.HTTPTrustedProxies) != 0 || d.SubscribeLimits.ConfirmationsPerMailbox.Burst != 3 {
		t.Errorf("default server: %v %+v", err, d)
	}

	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(`hostname: mail.example.com
data_dir: var
public_url: https://mail.example.com
privacy_url: https://example.com/privacy
http_trusted_proxies: [10.0.0.0/33, localhost]
subscribe_limits:
  confirmations_per_mailbox: {rate: 2/fortnight}
  requests_per_ip: {rate: 1/s, burst: 0}
  per_moon: {rate: 1/s}
`), 0o644)
	_, err = LoadServer(bad)
	if err == nil {
		t.Fatal("bad limits accepted")
	}
	for _, want := range []string{`bad.yaml:5: http_trusted_proxies[0]: "10.0.0.0/33"`, `bad.yaml:5: http_trusted_proxies[1]: "localhost"`,
		"bad.yaml:7: subscribe_limits.confirmations_per_mailbox.rate", "bad.yaml:8: subscribe_limits.requests_per_ip.burst: 0 must be at least 1",
		`bad.yaml:9: unknown key "subscribe_limits.per_moon"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}
func TestInboundLimits(t *testing.T) {
	dir := t.TempDir()
	head := "hostname: mail.example.com\ndata_dir: var\npublic_url: https://mail.example.com\nprivacy_url: https://example.com/privacy\n" +
		"smtp_listen: 127.0.0.1:2526\nbounce_domain: bounce.example.com\n"
	p := filepath.Join(dir, "pw.yaml")
	os.WriteFile(p, []byte(head+"inbound: {max_connections: 50, max_connections_per_ip: 5, max_bytes_in_flight: 64MiB, max_message_bytes: 5 MB, read_timeout: 2m}\n"), 0o644)
	s, err := LoadServer(p)
	if err != nil {
		t.Fatal(err)
	}
	want := Inbound{MaxConnections: 50, MaxConnectionsPerIP: 5, MaxBytesInFlight: 64 << 20, MaxMessageBytes: 5_000_000, ReadTimeout: 2 * time.Minute}
	if s.Inbound != want {
		t.Errorf("inbound %+v, want %+v", s.Inbound, want)
	}

	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(head+`inbound:
  max_connections: -1
  max_bytes_in_flight: lots
  max_message_bytes: 64MiB
  speed: 3
`), 0o644)
	_, err = LoadServer(bad)
	if err == nil {
		t.Fatal("bad inbound keys accepted")
	}
	for _, want := range []string{"bad.yaml:8: inbound.max_connections: must not be negative", `bad.yaml:9: inbound.max_bytes_in_flight: "lots" is not a byte count`,
		"bad.yaml:10: inbound.max_message_bytes: 67108864 is over 32 MiB", `bad.yaml:11: unknown key "inbound.speed"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	os.WriteFile(bad, []byte(head+"inbound: {max_bytes_in_flight: 1MiB, max_message_bytes: 2MiB}\n"), 0o644)
	if _, err = LoadServer(bad); err == nil || !strings.Contains(err.Error(), "inbound.max_bytes_in_flight: 1048576 is less than inbound.max_message_bytes") {
		t.Errorf("in flight below one message: %v", err)
	}
}

// Each default lives with the package that owns the setting; the server
// config takes it from there.
func TestDefaultsComeFromTheirOwners(t *testing.T) {
	s, err := DefaultServer()
	if err != nil {
		t.Fatal(err)
	}
	d := s.Delivery
	if !slices.Equal(d.Retry, queue.DefaultRetry) || d.MaxAge != queue.DefaultMaxAge || d.DrainTimeout != queue.DefaultDrainTimeout ||
		d.Workers != queue.DefaultWorkers {
		t.Errorf("queue defaults: retry %v max_age %v drain %v workers %d", d.Retry, d.MaxAge, d.DrainTimeout, d.Workers)
	}
	if d.ConcurrencyPerDomain != mta.DefaultConcurrencyPerDomain || d.SMTPPort != mta.DefaultSMTPPort ||
		d.MaxMessagesPerConnection != mta.DefaultMaxMessagesPerConnection {
		t.Errorf("mta defaults: concurrency %d port %d per connection %d", d.ConcurrencyPerDomain, d.SMTPPort, d.MaxMessagesPerConnection)
	}
	if got, want := s.SubscribeLimits.ConfirmationsPerMailbox, optin.DefaultLimits.ConfirmationsPerMailbox; got.Rate != float64(want.Limit) || got.Burst != want.Burst {
		t.Errorf("subscribe_limits.confirmations_per_mailbox %+v, optin's default %+v", got, want)
	}
	if got, want := s.UnsubscribeLimits.PerToken, unsubscribe.DefaultLimits.PerToken; got.Rate != float64(want.Limit) || got.Burst != want.Burst {
		t.Errorf("unsubscribe_limits.per_token %+v, unsubscribe's default %+v", got, want)
	}
}
