package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/queue"
)

// 50 identical one-click POSTs on one token, through the daemon, count one
// unsubscribe: campaign status, the Prometheus counter and the audit log
// each show it once.
func TestRepeatedOneClickCountsOnceThroughDaemon(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	addr := listenAddr(t)
	h.appendConfig("metrics_listen: " + addr + "\n")
	h.serve()
	h.mustRun(0, "campaign", "send", h.campaign("once-1", "email,first_name,company\nana@acme.example,Ana,Acme\ndave@globex.example,Dave,Globex\n"))
	h.waitDelivered("once-1", 2)
	link := h.unsubscribeLink("ana@acme.example", "")

	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for range 50 {
		wg.Go(func() {
			resp, err := http.PostForm(link, url.Values{"List-Unsubscribe": {"One-Click"}})
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			mu.Lock()
			codes[resp.StatusCode]++
			mu.Unlock()
		})
	}
	wg.Wait()
	// A per-token rate limit may turn some repeats away; none may fail otherwise.
	if codes[http.StatusOK] == 0 || codes[http.StatusOK]+codes[http.StatusTooManyRequests] != 50 {
		t.Fatalf("50 one-click POSTs answered %v", codes)
	}

	var st struct {
		Unsubscribed int            `json:"unsubscribed"`
		Events       map[string]int `json:"events"`
	}
	if err := json.Unmarshal([]byte(h.mustRun(0, "--json", "campaign", "status", "once-1").stdout), &st); err != nil {
		t.Fatal(err)
	}
	if st.Unsubscribed != 1 {
		t.Errorf("campaign status: unsubscribed %d (events %v), want 1", st.Unsubscribed, st.Events)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "\npostwarden_unsubscribes_total 1\n") {
		t.Errorf("/metrics:\n%s", grepLines(string(body), "postwarden_unsubscribes_total"))
	}
	n := 0
	for _, l := range strings.Split(h.mustRun(0, "--json", "audit", "ls").stdout, "\n") {
		if strings.Contains(l, `"action":"suppress.add"`) && strings.Contains(l, `"who":"http:`) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d audit entries of the unsubscribe, want 1", n)
	}
}

// After subject erase nothing in queue.db names the person's recipient
// domain or the ids of their messages (an id carries the creation time), and
// campaign status still counts their message.
func TestEraseLeavesNoDomainOrTimeInQueue(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	const who = "beatrix@initech.example"
	h.mustRun(0, "campaign", "send", h.campaign("erase-1", "email,first_name,company\n"+who+",Beatrix,Initech\ndave@globex.example,Dave,Globex\n"))
	var ids []string
	for _, v := range jsonLines[msgView](t, h.mustRun(0, "--json", "queue", "ls", "--all", "--campaign", "erase-1").stdout) {
		if v.State != queue.StateDelivered {
			t.Fatalf("message %+v not delivered", v)
		}
		if v.Domain == "initech.example" {
			ids = append(ids, v.ID) // its times it shares with dave's, enqueued in the same group
		}
	}
	if len(ids) != 1 {
		t.Fatalf("no message to %s listed", who)
	}
	h.mustRun(0, "subject", "erase", who, "--reason", "DSAR-11")

	raw, err := os.ReadFile(filepath.Join(h.dir, "var", "queue.db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range append(ids, "initech.example") {
		if bytes.Contains(raw, []byte(n)) {
			t.Errorf("queue.db still holds %q of the erased person", n)
		}
	}
	var st struct {
		Enqueued, Delivered int
	}
	if err := json.Unmarshal([]byte(h.mustRun(0, "--json", "campaign", "status", "erase-1").stdout), &st); err != nil {
		t.Fatal(err)
	}
	if st.Enqueued != 2 || st.Delivered != 2 {
		t.Errorf("campaign status after erase: %+v, want 2 enqueued, 2 delivered", st)
	}
}
