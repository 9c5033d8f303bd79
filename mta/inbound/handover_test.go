package inbound_test

import (
	"errors"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/bounce"
	"github.com/postwarden/postwarden/mta/inbound"
	"github.com/postwarden/postwarden/mta/verp"
)

// handed records what the listener hands to other nodes (the real
// hand-over over NATS is tested in mta/inbound/handover and by the cluster
// process test).
type handed struct {
	self string
	mu   sync.Mutex
	fail error
	got  []handedReport
}

type handedReport struct {
	node, queueID string
	reps          []bounce.Report
}

func (h *handed) Mine(node string) bool { return node == h.self }

func (h *handed) Hand(node, queueID string, reps []bounce.Report) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fail != nil {
		return h.fail
	}
	h.got = append(h.got, handedReport{node, queueID, reps})
	return nil
}

// On a cluster node, a report whose VERP token names another node is
// handed to it and changes nothing here (this node's spool may hold
// another message under the same id); the 250 waits for the hand-over,
// and a failed one is 451. A token naming this node, or none, acts here;
// the node that gets the handed report applies it with Local.
func TestReportOfAnotherNodeHandedOver(t *testing.T) {
	h := &handed{self: verp.NodeTag("n2")}
	w := newClusterWorld(t, inbound.Config{}, h)
	bob, ana := w.ids["bob@acme.example"], w.ids["ana@acme.example"]

	// Node 1 sent a message whose queue id is bob's here.
	n1 := w.codec.AddressFrom(bob, "n1")
	if step, err := w.send("fbl@complaints.example.net", n1, fixture(t, "arf-headers-only.eml", n1)); err != nil {
		t.Fatalf("ARF: %s: %v", step, err)
	}
	w.checkSupp("bob@acme.example", "", "")
	if hist := w.history("bob@acme.example"); hist[len(hist)-1].Outcome == "bounce-complaint" {
		t.Errorf("bob's message here took node 1's complaint: %+v", hist)
	}
	if len(h.got) != 1 || h.got[0].node != verp.NodeTag("n1") || h.got[0].queueID != bob || len(h.got[0].reps) == 0 ||
		h.got[0].reps[0].Kind != bounce.KindComplaint {
		t.Fatalf("handed %+v", h.got)
	}

	// Reported to abuse@ with node 1's address in the original: handed too.
	n1ana := w.codec.AddressFrom(ana, "n1")
	if step, err := w.send("feedback@isp.example", "abuse@"+domain, fixture(t, "arf-abuse.eml", n1ana)); err != nil {
		t.Fatalf("ARF to abuse: %s: %v", step, err)
	}
	if len(h.got) != 2 || h.got[1].queueID != ana {
		t.Fatalf("handed %+v", h.got)
	}
	w.checkSupp("ana@acme.example", "", "")

	// The hand-over cannot store it: 451, the sender retries.
	h.fail = errors.New("outbox disk full")
	_, err := w.send("", n1, fixture(t, "postfix-5.1.1.eml", n1))
	if c, e := code(err); c != 451 || e != [3]int{4, 3, 0} {
		t.Errorf("failed hand-over: %v, want 451 4.3.0", err)
	}
	h.fail = nil

	// This node's own token acts here.
	own := w.codec.AddressFrom(ana, "n2")
	if step, err := w.send("", own, fixture(t, "postfix-5.1.1.eml", own)); err != nil {
		t.Fatalf("DSN: %s: %v", step, err)
	}
	w.checkSupp("ana@acme.example", "", "hard_bounce")

	// What node 1 does with the handed complaint: Local, the listener's path.
	local, err := inbound.NewLocal(inbound.Deps{Bounces: queueSink{w.q}, Suppressor: w.supp, Events: w.q}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := local.Apply(bob, h.got[0].reps); err != nil {
		t.Fatal(err)
	}
	w.checkSupp("bob@acme.example", "", "complaint")
	if hist := w.history("bob@acme.example"); hist[len(hist)-1].Outcome != "bounce-complaint" {
		t.Errorf("bob's history %+v", hist)
	}
	if err := local.Apply("0000000000000001", h.got[0].reps); err != nil {
		t.Errorf("Apply of an unknown id: %v, want dropped (nil)", err)
	}
}
