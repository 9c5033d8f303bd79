package configs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A 10 MB campaign id is refused with an error quoting at most ~80
// characters of it.
func TestHugeIDQuotedShort(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	id := strings.Repeat("x", 10<<20)
	yaml := "id: " + id + "\nlist: news\nfrom: a@example.com\nsubject: Hi\ntemplate: t\nrecipients: r.csv\nlegal_basis: consent\n"
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadCampaign(path)
	if err == nil {
		t.Fatal("a 10 MB id was accepted")
	}
	msg := err.Error()
	if len(msg) > 400 || !strings.Contains(msg, path+":1: id: \""+strings.Repeat("x", 80)+"\"…") {
		t.Fatalf("error (%d bytes) = %.300s", len(msg), msg)
	}
}

// Every error that echoes a bad value, key or path of a server or campaign
// config quotes at most ~80 characters of it, whichever field it is in.
func TestErrorsEchoBadInputShort(t *testing.T) {
	v := strings.Repeat("é", 100000) // 200 KB, no white space, invalid almost anywhere
	const maxLine = 500              // "file:line: " + a path and a value cut to 80 characters (2 bytes each) + the problem

	server := map[string]string{
		"hostname":     "hostname: mail.example.com",
		"data_dir":     "data_dir: var",
		"public_url":   "public_url: https://mail.example.com",
		"privacy_url":  "privacy_url: https://example.com/privacy",
		"delivery":     "delivery: {mode: capture}",
		"lists":        "lists: {news: {name: News}}",
		"dkim":         "dkim: [{domain: example.com, selector: pw1}]",
		"optin_ttl":    "optin_ttl: 7d",
		"http_listen":  "http_listen: 127.0.0.1:8025",
		"smtp_listen":  "smtp_listen: ''",
		"branding":     "branding: {name: Example}",
		"inbound":      "inbound: {max_connections: 10}",
		"bounce":       "",
		"proxies":      "",
		"limits":       "",
		"metrics":      "",
		"unknown":      "",
		"subscription": "",
	}
	serverCases := map[string]string{
		"hostname":     "hostname: V",
		"public_url":   "public_url: V",
		"privacy_url":  "privacy_url: V",
		"http_listen":  "http_listen: V",
		"smtp_listen":  "smtp_listen: V",
		"metrics":      "metrics_listen: V",
		"bounce":       "bounce_domain: V",
		"optin_ttl":    "optin_ttl: V",
		"lists":        "lists:\n  ? V\n  : {name: x}",
		"branding":     "branding: {color: V, background: V, logo_url: V}",
		"dkim":         "dkim: [{domain: V, selector: V, type: V, body_canonicalization: V, rsa_signer: V}]",
		"inbound":      "inbound: {max_message_bytes: V, read_timeout: V}",
		"proxies":      "http_trusted_proxies: [V]",
		"limits":       "subscribe_limits: {requests_per_ip: {rate: V}}",
		"subscription": "unsubscribe_limits: {per_ip: {rate: 1/x}}\nretention: {audit: V}",
		"unknown":      "? V\n: 1",
	}
	deliveryCases := []string{
		"delivery: {mode: V}",
		"delivery: {mode: relay, relay: V}",
		"delivery: {mode: mx, resolver: V, retry: [V], max_age: V}",
		"delivery:\n  mode: mx\n  routes:\n    ? V\n    : V\n  tls:\n    ? V\n    : V\n  rates:\n    ? V\n    : V\n    ? example.com\n    : V",
		"delivery:\n  mode: mx\n  ? V\n  : 1",
	}
	var docs []string
	render := func(override map[string]string) string {
		var b strings.Builder
		for k, base := range server {
			line := base
			if o, ok := override[k]; ok {
				line = o
			}
			b.WriteString(strings.ReplaceAll(line, "V", v) + "\n")
		}
		return b.String()
	}
	for k, c := range serverCases {
		docs = append(docs, render(map[string]string{k: c}))
	}
	for _, c := range deliveryCases {
		docs = append(docs, render(map[string]string{"delivery": c}))
	}
	for _, doc := range docs {
		_, err := parseServer("server.yaml", []byte(doc), t.TempDir())
		if err == nil {
			t.Errorf("accepted:\n%.300s", doc)
			continue
		}
		checkShort(t, err, maxLine)
	}

	dir := t.TempDir()
	campaign := func(extra string) string {
		return "id: c1\nlist: news\nfrom: a@example.com\nsubject: Hi\ntemplate: t\nrecipients: r.csv\nlegal_basis: consent\n" + extra
	}
	for _, c := range []string{
		"id: V\nlist: V\nfrom: V\nsubject: V",
		"reply_to: V\nprivacy_url: V\naudience: V",
		"legal_basis: V\nrate: V\nunknown_country: V",
		"exclude_countries: [V]\nfreemail_list: V\nlia: V",
		"lia: " + dir + "/V",
		"? V\n: 1",
	} {
		doc := campaign("")
		// Replace the base keys the case sets (a repeated key is its own error).
		for _, l := range strings.Split(c, "\n") {
			if k, _, ok := strings.Cut(l, ":"); ok && k != "" && k != "?" {
				if i := strings.Index(doc, k+":"); i >= 0 && (i == 0 || doc[i-1] == '\n') {
					end := strings.IndexByte(doc[i:], '\n')
					doc = doc[:i] + doc[i+end+1:]
				}
			}
		}
		doc += strings.ReplaceAll(c, "V", v) + "\n"
		path := filepath.Join(dir, "c.yaml")
		_, err := parseCampaign(path, path, []byte(doc))
		if err == nil {
			t.Errorf("accepted:\n%.300s", doc)
			continue
		}
		checkShort(t, err, maxLine)
	}
}

// checkShort fails for any line of err longer than max bytes.
func checkShort(t *testing.T, err error, max int) {
	t.Helper()
	for _, l := range strings.Split(err.Error(), "\n") {
		if len(l) > max {
			t.Errorf("error line of %d bytes: %.200s…", len(l), l)
		}
	}
}
