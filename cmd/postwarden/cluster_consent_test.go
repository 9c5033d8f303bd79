package main

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestClusterConsentAndImport (issue 13, promise 1): a sign-up taken on
// node 1 and confirmed on node 2 is confirmed on node 3, and a consent
// campaign sent on node 3 reaches the person; `suppress import` on node 1
// is honoured on node 3 once it exits 0.
func TestClusterConsentAndImport(t *testing.T) {
	nodes := startCluster3Prep(t, func(nd *testNode) { nd.withLists() })
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	const rcpt = "ana@acme.example"

	code, page := postForm(t, "http://"+n1.httpAddr+"/subscribe", url.Values{"list": {"news"}, "email": {rcpt}, "name": {"Ana"}})
	if code != 200 {
		t.Fatalf("subscribe on node 1: %d\n%s", code, page)
	}
	link := n1.confirmLink(rcpt, 1)
	u, err := url.Parse(link)
	if err != nil {
		t.Fatal(err)
	}
	code, page = postForm(t, "http://"+n2.httpAddr+u.Path, url.Values{"confirm": {"yes"}}) // the same token, on node 2
	if code != 200 || !strings.Contains(page, "Subscription confirmed") {
		t.Fatalf("confirm on node 2: %d\n%s", code, page)
	}
	if st := n2.subscriberState(rcpt, "news"); st != "confirmed" {
		t.Fatalf("node 2 answered 200 but holds %s", st)
	}
	for _, nd := range []*testNode{n1, n3} {
		waitUntil(t, 10*time.Second, nd.name+" holds the confirmation", func() bool { return nd.subscriberState(rcpt, "news") == "confirmed" })
	}
	before := n1.sink.ByRecipient()[rcpt]
	r := n3.mustRun(0, "campaign", "send", n3.consentCampaign("news-c1", "email,first_name,company\n"+rcpt+",Ana,Acme\nbob@acme.example,Bob,Acme\n"))
	if !strings.Contains(r.stdout, "enqueued       1") || !strings.Contains(r.stdout, "no_consent 1") {
		t.Errorf("consent campaign on node 3:\n%s", r.stdout)
	}
	waitUntil(t, time.Minute, "the consent campaign reaches ana", func() bool { return n1.sink.ByRecipient()[rcpt] > before })
	if n := n1.sink.ByRecipient()["bob@acme.example"]; n != 0 {
		t.Errorf("bob, never subscribed, got %d messages", n)
	}

	// suppress import on node 1: three batches through the stream.
	var sb strings.Builder
	sb.WriteString("email\n")
	const rows = 2100
	for i := range rows {
		fmt.Fprintf(&sb, "imp%d@import.example\n", i)
	}
	file := n1.write("supp.csv", sb.String())
	r = n1.mustRun(0, "suppress", "import", file, "--reason", "manual")
	t.Logf("suppress import: %s", r.stdout)
	for _, addr := range []string{"imp0@import.example", "imp1500@import.example", fmt.Sprintf("imp%d@import.example", rows-1)} {
		if !suppressedOn(n1, addr) {
			t.Errorf("node 1 exited 0 but does not suppress %s", addr)
		}
		waitUntil(t, 10*time.Second, "node 3 suppresses "+addr, func() bool { return suppressedOn(n3, addr) })
	}
	// Run again: the same rows, nothing new (a new run, the same entries).
	n1.mustRun(0, "suppress", "import", file, "--reason", "manual")
}
