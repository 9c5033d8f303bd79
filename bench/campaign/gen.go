package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// The campaign every run sends: From domain, list and id.
const (
	fromDomain = "bench.example.com"
	listID     = "bench-news"
	campaignID = "bench"
	selector   = "bench1"
)

// recipient is the address of row i: spread round-robin over d domains.
func recipient(i, d int) string {
	return fmt.Sprintf("user%08d@%s", i, domain(i%d))
}

// domain is the bench's recipient domain i.
func domain(i int) string { return fmt.Sprintf("d%04d.bench.example", i) }

// sinkRoutes sends each of the d recipient domains to the sink at addr, as
// the binary's delivery.routes do (writeServerConfig).
func sinkRoutes(d int, addr string) map[string]string {
	routes := make(map[string]string, d)
	for i := range d {
		routes[domain(i)] = addr
	}
	return routes
}

// suppressedRow says whether row i is a member of the suppression store
// (every 20th row: 5 %), capped at the store size s.
func suppressedRow(i, s int) bool { return i%20 == 7 && i/20 < s }

// expectedAllowed is how many rows of n pass the suppression store of size s.
func expectedAllowed(n, s int) int {
	c := 0
	for i := 7; i < n; i += 20 {
		if suppressedRow(i, s) {
			c++
		}
	}
	return n - c
}

// seed is what every run copies into its fresh data dir: the keys and the
// pre-filled suppression store.
type seed struct {
	dir      string
	dkimFile string
	entries  int
	took     time.Duration
	cached   bool
}

// buildSeed creates the data key, token key, DKIM key and suppression store
// with s entries of which the suppressed rows of n are members. It reuses a
// cached seed with the same parameters.
func buildSeed(cacheDir string, n, d, s int, sig string) (*seed, error) {
	dir := filepath.Join(cacheDir, fmt.Sprintf("seed-n%d-d%d-s%d", n, d, s))
	sd := &seed{dir: dir, entries: s, dkimFile: filepath.Join(dir, "dkim", fmt.Sprintf("%s.%s.%s.key", fromDomain, selector, sig))}
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		sd.cached = true
		return sd, ensureDKIM(sd.dkimFile, sig)
	}
	start := time.Now()
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if _, err := unsubscribe.LoadOrCreateKey(filepath.Join(dir, "token.key")); err != nil {
		return nil, err
	}
	dataKey, err := sealed.LoadOrCreateKey(filepath.Join(dir, "data.key"))
	if err != nil {
		return nil, err
	}
	box, err := sealed.New(dataKey)
	if err != nil {
		return nil, err
	}
	st, err := suppression.Open(suppression.Config{Path: filepath.Join(dir, "suppression.db"), Box: box}, zerolog.Nop())
	if err != nil {
		return nil, err
	}
	defer st.Close()
	// Stream a CSV into Import in chunks: Import commits 1,000 rows per fsync.
	const chunk = 100_000
	members := 0
	written := 0
	next := 0 // next recipient row to consider as a member
	for written < s {
		pr, pw := io.Pipe()
		go func() {
			w := bufio.NewWriterSize(pw, 1<<20)
			fmt.Fprintln(w, "email,reason")
			for k := 0; k < chunk && written < s; k++ {
				// Members first (spread over the rows), then filler addresses.
				for next < n && !suppressedRow(next, s) {
					next++
				}
				if next < n {
					fmt.Fprintf(w, "%s,unsubscribed\n", recipient(next, d))
					next++
					members++
				} else {
					fmt.Fprintf(w, "filler%09d@f%05d.filler.example,unsubscribed\n", written, written%50000)
				}
				written++
			}
			pw.CloseWithError(w.Flush())
		}()
		res, err := st.Import(pr, "bench-suppressions.csv", suppression.Entry{})
		if err != nil {
			return nil, fmt.Errorf("pre-fill suppression store: %w", err)
		}
		if len(res.Errors) > 0 {
			return nil, fmt.Errorf("pre-fill suppression store: %v", res.Errors[0])
		}
	}
	if err := ensureDKIM(sd.dkimFile, sig); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "complete"), []byte(fmt.Sprintf("%d entries, %d members\n", written, members)), 0o600); err != nil {
		return nil, err
	}
	sd.took = time.Since(start)
	return sd, nil
}

func ensureDKIM(path, sig string) error {
	_, _, err := dkim.LoadOrCreate(path, fromDomain, selector, sig)
	return err
}

// writeCampaign writes template, recipients, LIA and campaign file under dir.
func writeCampaign(dir string, n, d int, repoRoot string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	html, text := templateBodies()
	files := map[string]string{"bench.html": html, "bench.txt": text}
	lia, err := os.ReadFile(filepath.Join(repoRoot, "configs", "lia", "example.md"))
	if err != nil {
		return "", err
	}
	files["lia.md"] = string(lia)
	files["campaign.yaml"] = fmt.Sprintf(`id: %s
list: %s
from: "Bench Sender <news@%s>"
subject: "{{.FirstName}}, a note about {{.Company}}"
template: bench
recipients: recipients.csv
legal_basis: legitimate_interest
lia: lia.md
audience: b2b
unknown_country: include
`, campaignID, listID, fromDomain)
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return "", err
		}
	}
	f, err := os.Create(filepath.Join(dir, "recipients.csv"))
	if err != nil {
		return "", err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	fmt.Fprintln(w, "email,first_name,last_name,company,job_title,country")
	countries := []string{"DE", "FR", "GB", "SE", "NL", "US", "CH", "ES"}
	for i := range n {
		fmt.Fprintf(w, "%s,First%d,Last%d,Company %d GmbH,Head of Procurement,%s\n", recipient(i, d), i, i, i%997, countries[i%len(countries)])
	}
	if err := w.Flush(); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return filepath.Join(dir, "campaign.yaml"), nil
}

// templateBodies returns a ~16 KB HTML and ~4 KB text template, both with
// the unsubscribe and privacy links.
func templateBodies() (string, string) {
	para := "Our Q4 release adds automatic matching of invoices to purchase orders, an export your accountants can read as it is, and approval flows that follow your signing rules. "
	var h strings.Builder
	h.WriteString(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>A note about {{.Company}}</title></head>
<body style="margin:0;padding:0;background-color:#f4f4f5;">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0"><tr><td align="center" style="padding:24px 12px;">
<p style="margin:0 0 16px;">Hello {{.FirstName}},</p>
`)
	// Long static copy with a placeholder every tenth paragraph, as a real
	// newsletter has: a handful of merge fields, not one per paragraph.
	for i := 0; h.Len() < 15500; i++ {
		who := "your team"
		if i%10 == 0 {
			who = "{{.Company}}"
		}
		fmt.Fprintf(&h, "<p style=\"margin:0 0 16px;font-family:Arial,Helvetica,sans-serif;font-size:16px;line-height:1.5;color:#1f2937;\">%d. %sFor %s this means fewer manual steps.</p>\n", i+1, para, who)
	}
	h.WriteString(`<p style="margin:0;font-size:13px;color:#4b5563;">If you would rather not hear from us, <a href="{{.UnsubscribeURL}}">unsubscribe with one click</a>. How we handle your data: <a href="{{.PrivacyURL}}">privacy notice</a>.</p>
</td></tr></table></body></html>
`)
	var t strings.Builder
	t.WriteString("Hello {{.FirstName}},\n\n")
	for i := 0; t.Len() < 3800; i++ {
		fmt.Fprintf(&t, "%d. %s\n\n", i+1, para)
	}
	t.WriteString("--\nUnsubscribe with one click: {{.UnsubscribeURL}}\nPrivacy notice: {{.PrivacyURL}}\n")
	return h.String(), t.String()
}

// writeServerConfig writes the server config of one run.
func writeServerConfig(path, dataDir, dkimFile, sig, rsaSigner, sinkAddr string, d, workers, perDomain int) error {
	var b strings.Builder
	fmt.Fprintf(&b, `hostname: mail.%s
data_dir: %s
public_url: https://%s
http_listen: 127.0.0.1:8025
privacy_url: https://%s/privacy
dkim:
  - {domain: %s, selector: %s, key_file: %s, type: %s, rsa_signer: %s}
delivery:
  mode: mx
  workers: %d
  concurrency_per_domain: %d
  routes:
`, fromDomain, dataDir, fromDomain, fromDomain, fromDomain, selector, dkimFile, sig, rsaSigner, workers, perDomain)
	for i := range d {
		fmt.Fprintf(&b, "    %s: %q\n", domain(i), sinkAddr)
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// copyFile copies src to dst with mode perm.
func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
