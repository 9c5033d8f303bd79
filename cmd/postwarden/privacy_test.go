package main

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	bolt "go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/suppression/subject"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// scanData reports every file under dir whose raw bytes contain any needle.
func scanData(t *testing.T, dir string, needles ...string) []string {
	t.Helper()
	var hits []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Type()&fs.ModeSocket != 0 {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, n := range needles {
			if bytes.Contains(bytes.ToLower(b), bytes.ToLower([]byte(n))) {
				hits = append(hits, p+": "+n)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

// Export shows what is held; erase leaves only a tombstone: a new campaign
// skips the address as erased, and no file under data_dir holds the
// address or the recipient's name.
func TestSubjectExportAndErase(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	csv := "email,first_name,last_name,company\nmarguerite.okonkwo@acme.example,Marguerite,Okonkwo,Acme\ndave@globex.example,Dave,Kim,Globex\n"
	h.mustRun(0, "campaign", "send", h.campaign("gdpr-1", csv))
	h.mustRun(0, "suppress", "add", "marguerite.okonkwo@acme.example", "--list", "product-news", "--reason", "unsubscribed")

	h.mustRun(2, "subject", "export", "marguerite.okonkwo@acme.example") // --reason is required
	exp := h.mustRun(0, "--json", "subject", "export", "marguerite.okonkwo@acme.example", "--reason", "DSAR-1")
	var x subject.Data
	if err := json.Unmarshal([]byte(strings.TrimSpace(exp.stdout)), &x); err != nil {
		t.Fatalf("export JSON: %v\n%s", err, exp.stdout)
	}
	if x.Subject != "marguerite.okonkwo@acme.example" || len(x.Messages) != 1 || len(x.Suppression) != 1 {
		t.Fatalf("export before erase: %+v", x)
	}
	csvOut := h.mustRun(0, "subject", "export", "marguerite.okonkwo@acme.example", "--reason", "DSAR-1", "--format", "csv")
	if !strings.HasPrefix(csvOut.stdout, "section,item,time,detail") || !strings.Contains(csvOut.stdout, "gdpr-1") {
		t.Errorf("csv export:\n%s", csvOut.stdout)
	}

	h.mustRun(0, "subject", "erase", "marguerite.okonkwo@acme.example", "--reason", "DSAR-2 erasure request")
	exp = h.mustRun(0, "--json", "subject", "export", "marguerite.okonkwo@acme.example", "--reason", "DSAR-3")
	x = subject.Data{}
	if err := json.Unmarshal([]byte(strings.TrimSpace(exp.stdout)), &x); err != nil {
		t.Fatal(err)
	}
	if len(x.Messages) != 0 || len(x.Suppression) != 1 || x.Suppression[0].Reason != "erased" || x.Suppression[0].Target != "" {
		t.Errorf("export after erase shows more than the tombstone: %+v", x)
	}
	chk := h.mustRun(0, "suppress", "check", "marguerite.okonkwo@acme.example")
	if !strings.Contains(chk.stdout, "erased") {
		t.Errorf("suppress check: %s", chk.stdout)
	}
	r := h.mustRun(0, "campaign", "send", h.campaign("gdpr-2", csv))
	if !strings.Contains(r.stdout, "erased 1") {
		t.Errorf("a new campaign does not skip the erased address:\n%s", r.stdout)
	}
	if hits := scanData(t, filepath.Join(h.dir, "var"), "marguerite.okonkwo@acme.example", "Okonkwo", "Marguerite"); len(hits) > 0 {
		t.Errorf("erased data still in files: %v", hits)
	}
	// The other recipient is untouched.
	if n := h.sink.ByRecipient()["dave@globex.example"]; n != 2 {
		t.Errorf("dave received %d messages, want 2", n)
	}

	// Restrict keeps the data but processes nothing; unrestrict lifts it.
	h.mustRun(0, "subject", "restrict", "dave@globex.example", "--reason", "objection pending")
	if r := h.mustRun(0, "campaign", "send", h.campaign("gdpr-3", "email\ndave@globex.example\n")); !strings.Contains(r.stdout, "restricted 1") {
		t.Errorf("restricted address not skipped:\n%s", r.stdout)
	}
	h.mustRun(0, "subject", "unrestrict", "dave@globex.example", "--reason", "objection resolved")
	h.mustRun(1, "subject", "unrestrict", "dave@globex.example", "--reason", "again")

	// Every one of these is in the audit log, which names no address.
	al := h.mustRun(0, "--json", "audit", "ls").stdout
	for _, want := range []string{`"action":"subject.export"`, `"action":"subject.erase"`, `"action":"subject.restrict"`, `"action":"subject.unrestrict"`, `"reason":"DSAR-2 erasure request"`, `"action":"suppress.add"`, `"action":"campaign.send"`} {
		if !strings.Contains(al, want) {
			t.Errorf("audit log lacks %s", want)
		}
	}
	if strings.Contains(al, "marguerite") {
		t.Errorf("audit log names the erased person:\n%s", al)
	}
}

// audit verify passes on an untouched log and names the entry after one is
// altered on disk.
func TestAuditVerifyDetectsTampering(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.mustRun(0, "suppress", "add", "a@acme.example", "--reason", "manual")
	h.mustRun(0, "suppress", "add", "b@acme.example", "--reason", "manual")
	h.mustRun(0, "suppress", "remove", "a@acme.example")
	v := h.mustRun(0, "audit", "verify")
	if !strings.Contains(v.stdout, "verified") {
		t.Errorf("audit verify: %s", v.stdout)
	}
	// Change the second entry's reason on disk.
	db, err := bolt.Open(filepath.Join(h.dir, "var", "audit.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	changed := false
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return b.ForEach(func(k, val []byte) error {
				if changed || !bytes.Contains(val, []byte(`"seq":2`)) {
					return nil
				}
				changed = true
				return b.Put(k, bytes.Replace(val, []byte(`"action":"suppress.add"`), []byte(`"action":"suppress.del"`), 1))
			})
		})
	})
	db.Close()
	if err != nil || !changed {
		t.Fatalf("tamper: changed=%v err=%v", changed, err)
	}
	v = h.mustRun(1, "audit", "verify")
	if !strings.Contains(v.stdout+v.stderr, "entry 2") {
		t.Errorf("audit verify does not name entry 2:\n%s\n%s", v.stdout, v.stderr)
	}
}

// An unsubscribe that arrives while a message waits deferred in the queue
// stops it: the retry never reaches the recipient.
func TestUnsubscribeWhileDeferredIsNeverDelivered(t *testing.T) {
	h := newHarness(t, mtatest.Options{Rcpt: func(rcpt string, n int) error {
		if rcpt == "ana@acme.example" {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
		}
		return nil
	}})
	file := h.campaign("wait-1", "email,first_name\nana@acme.example,Ana\n")
	if r := h.mustRun(0, "campaign", "send", file); !strings.Contains(r.stdout, "deferred 1") {
		t.Fatalf("not deferred:\n%s", r.stdout)
	}
	h.serve()
	// The recipient clicks one-click unsubscribe (the link their message
	// carries: minted here with the same token key).
	key, err := unsubscribe.LoadOrCreateKey(h.config().TokenKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := unsubscribe.NewTokens(key, h.config().PublicURL)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.PostForm(tokens.UnsubscribeURL("ana@acme.example", "product-news", "wait-1"), url.Values{"List-Unsubscribe": {"One-Click"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("one-click POST: %d", resp.StatusCode)
	}
	h.mustRun(0, "queue", "retry", "ALL")
	waitFor(t, "the retry to finish", func() bool {
		ls := jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--campaign", "wait-1").stdout)
		return len(ls) == 1 && ls[0].State == "cancelled"
	})
	if n := h.sink.ByRecipient()["ana@acme.example"]; n != 0 {
		t.Errorf("delivered %d times after the unsubscribe", n)
	}
}

// db prune applies the retention periods: finished records older than
// retention.finished_messages go, and the prune is in the audit log.
func TestDBPruneAppliesRetention(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.appendConfig("retention: {finished_messages: 1ms}\n")
	h.mustRun(0, "campaign", "send", h.campaign("old-1", "email\nana@acme.example\ndave@globex.example\n"))
	time.Sleep(5 * time.Millisecond) // let the records age past 1ms
	r := h.mustRun(0, "--json", "db", "prune")
	if !strings.Contains(r.stdout, `"finished_messages":2`) {
		t.Errorf("db prune: %s", r.stdout)
	}
	if ls := jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--campaign", "old-1").stdout); len(ls) != 0 {
		t.Errorf("%d records left after prune", len(ls))
	}
	if al := h.mustRun(0, "--json", "audit", "ls").stdout; !strings.Contains(al, `"action":"db.prune"`) {
		t.Errorf("prune not audited:\n%s", al)
	}
	h.mustRun(0, "db", "compact")
}

// An erased person can come back only by double opt-in: the tombstone
// blocks every campaign until they sign up again and confirm; the new
// record has a new subscriber id, and the tombstone stays as the proof.
func TestErasedComesBackOnlyByDoubleOptIn(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.withLists()
	h.serve()
	base := "http://" + h.httpAddr
	const ana = "ana@acme.example"
	if code, _ := postForm(t, base+"/subscribe", url.Values{"list": {"news"}, "email": {ana}}); code != 200 {
		t.Fatalf("subscribe: %d", code)
	}
	if code, _ := postForm(t, h.confirmLink(ana, 1), url.Values{"confirm": {"yes"}}); code != 200 {
		t.Fatalf("confirm: %d", code)
	}
	firstID := h.subscriberID(ana, "news")

	h.mustRun(0, "subject", "erase", ana, "--reason", "DSAR-9")
	r := h.mustRun(0, "campaign", "send", h.consentCampaign("back-1", "email\n"+ana+"\n"))
	if !strings.Contains(r.stdout, "erased 1") || !strings.Contains(r.stdout, "enqueued       0") {
		t.Fatalf("campaign after erasure:\n%s", r.stdout)
	}

	// She signs up again: the confirmation reaches her despite the tombstone,
	// and only her click brings her back.
	if code, _ := postForm(t, base+"/subscribe", url.Values{"list": {"news"}, "email": {ana}}); code != 200 {
		t.Fatalf("subscribe again: %d", code)
	}
	link := h.confirmLink(ana, 2)
	r = h.mustRun(0, "campaign", "send", h.consentCampaign("back-2", "email\n"+ana+"\n"))
	if !strings.Contains(r.stdout, "enqueued       0") {
		t.Fatalf("an unconfirmed comeback was mailed:\n%s", r.stdout)
	}
	if code, _ := postForm(t, link, url.Values{"confirm": {"yes"}}); code != 200 {
		t.Fatalf("confirm again: %d", code)
	}
	if id := h.subscriberID(ana, "news"); id == "" || id == firstID {
		t.Errorf("subscriber id after the comeback %q, first %q: want a new one", id, firstID)
	}
	r = h.mustRun(0, "campaign", "send", h.consentCampaign("back-3", "email\n"+ana+"\n"))
	if !strings.Contains(r.stdout, "enqueued       1") {
		t.Errorf("the confirmed comeback is not mailed:\n%s", r.stdout)
	}
	waitFor(t, "the campaign after the comeback", func() bool { return h.sink.ByRecipient()[ana] == 3 })
	if chk := h.mustRun(0, "suppress", "check", ana); !strings.Contains(chk.stdout, "erased") {
		t.Errorf("the tombstone is gone: %s", chk.stdout)
	}
	// suppress check answers as sending does: mailable on the list she
	// re-joined, still erased on any other.
	if chk := h.run("suppress", "check", ana, "--list", "news"); chk.code != 1 {
		t.Errorf("suppress check --list news of the confirmed comeback: exit %d, want 1 (not suppressed)\n%s", chk.code, chk.stdout)
	}
	if chk := h.mustRun(0, "suppress", "check", ana, "--list", "offers"); !strings.Contains(chk.stdout, "erased") {
		t.Errorf("suppress check --list offers: %s", chk.stdout)
	}
}

// subscriberID is a subscriber's id on a list, "" when none.
func (h *harness) subscriberID(addr, list string) string {
	h.t.Helper()
	r := h.run("--json", "--reveal", "subscribers", "ls", "--list", list)
	for _, v := range jsonLines[map[string]any](h.t, r.stdout) {
		if v["address"] == addr {
			id, _ := v["subscriber_id"].(string)
			return id
		}
	}
	return ""
}

// In capture mode the signed messages sit in clear in the outbox: erasure
// removes the person's files (found by content too), retention prunes old
// ones, and afterwards no file under data_dir holds the address or name.
func TestEraseAndPruneInCaptureMode(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.write("postwarden.yaml", strings.Replace(readFile(t, h.cfgPath), "mode: mx", "mode: capture", 1))
	csv := "email,first_name,last_name,company\nbeatrix.vanderlinde@acme.example,Beatrix,Vanderlinde,Acme\ndave@globex.example,Dave,Kim,Globex\n"
	h.mustRun(0, "campaign", "send", h.campaign("cap-1", csv))
	outbox := filepath.Join(h.dir, "var", "outbox")
	if hits := scanData(t, outbox, "beatrix.vanderlinde@acme.example"); len(hits) != 1 {
		t.Fatalf("capture files holding the address: %v (want exactly one)", hits)
	}
	r := h.mustRun(0, "--json", "subject", "erase", "beatrix.vanderlinde@acme.example", "--reason", "DSAR-7")
	if !strings.Contains(r.stdout, `"capture_files_removed":1`) {
		t.Errorf("erase: %s", r.stdout)
	}
	if hits := scanData(t, filepath.Join(h.dir, "var"), "beatrix.vanderlinde@acme.example", "Vanderlinde", "Beatrix"); len(hits) > 0 {
		t.Errorf("erased data still in files: %v", hits)
	}
	if hits := scanData(t, outbox, "dave@globex.example"); len(hits) != 1 {
		t.Errorf("dave's capture file: %v", hits)
	}

	h.appendConfig("retention: {finished_messages: 1ms}\n")
	time.Sleep(5 * time.Millisecond)
	r = h.mustRun(0, "--json", "db", "prune")
	if !strings.Contains(r.stdout, `"capture_files":1`) {
		t.Errorf("db prune: %s", r.stdout)
	}
	if hits := scanData(t, outbox, "dave@globex.example"); len(hits) != 0 {
		t.Errorf("capture files outlive retention: %v", hits)
	}
}
