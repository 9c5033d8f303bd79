package gate_test

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/gate"
	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

// stores opens a real suppression and consent store in a temp dir, sealed
// with one key as in production, and the gate over them.
func stores(t *testing.T) (*suppression.Store, *subscribers.Store, *gate.Gate) {
	t.Helper()
	dir := t.TempDir()
	box, err := sealed.New(bytes.Repeat([]byte{9}, sealed.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	sup, err := suppression.Open(suppression.Config{Path: filepath.Join(dir, "suppression.db"), Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sup.Close() })
	subs, err := subscribers.Open(subscribers.Config{Path: filepath.Join(dir, "subscribers.db"), Box: box}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { subs.Close() })
	return sup, subs, gate.New(sup, subs)
}

const list = "news"

// Scopes of an entry relative to the list a message goes to.
const (
	scopeNone         = "no entry"
	scopeGlobal       = "global"
	scopeThisList     = "this list"
	scopeOtherList    = "another list"
	scopeDomain       = "@domain global"
	scopeDomainOnList = "@domain on this list"
)

// Consent states on the list a message goes to.
const (
	stateNone         = subscribers.StateNone
	statePending      = subscribers.StatePending
	stateConfirmed    = subscribers.StateConfirmed
	stateUnsubscribed = subscribers.StateUnsubscribed
	stateLegitimate   = subscribers.StateLegitimateInterest
)

// entryStops is the rule table of the package comment: whether an entry
// that applies stops a message of each purpose. The address's own erasure
// is lifted for a campaign by confirmed consent on the list (want, below).
var entryStops = map[gate.Purpose]map[suppression.Reason]bool{
	gate.Campaign: {suppression.Unsubscribed: true, suppression.HardBounce: true, suppression.Complaint: true,
		suppression.Manual: true, suppression.Restricted: true, suppression.Erased: true},
	gate.Confirmation: {suppression.HardBounce: true, suppression.Complaint: true, suppression.Restricted: true},
}

// applies: only an entry on another list never counts.
func applies(scope string) bool { return scope != scopeNone && scope != scopeOtherList }

// want is the documented rule, step by step.
func want(r suppression.Reason, scope, state, basis string, p gate.Purpose) (mailable bool, reason string) {
	on := applies(scope)
	own := scope == scopeGlobal || scope == scopeThisList // the address's own entry, not its domain's
	if on && entryStops[p][r] && !(p == gate.Campaign && r == suppression.Erased && own) {
		return false, string(r)
	}
	if p == gate.Confirmation {
		return true, ""
	}
	switch {
	case on && r == suppression.Erased && state != stateConfirmed:
		return false, string(suppression.Erased)
	case state == stateUnsubscribed:
		return false, string(suppression.Unsubscribed)
	case basis == gate.Consent && state != stateConfirmed:
		return false, gate.NoConsent
	}
	return true, ""
}

// setConsent brings addr to state on list through the consent store's own verbs.
func setConsent(t *testing.T, subs *subscribers.Store, addr, state string) {
	t.Helper()
	var err error
	switch state {
	case stateNone:
	case stateLegitimate:
		_, err = subs.ImportCandidate(addr, list, "crm.csv", time.Time{}, "")
	case statePending:
		_, err = subs.Subscribe(subscribers.Subscription{Address: addr, List: list, Source: "form", Pending: true, ViaDoubleOptIn: true})
	case stateConfirmed, stateUnsubscribed:
		if _, err = subs.Subscribe(subscribers.Subscription{Address: addr, List: list, Source: "form", Pending: true, ViaDoubleOptIn: true}); err == nil {
			_, err = subs.Confirm(addr, list, "192.0.2.1", "test")
		}
		if err == nil && state == stateUnsubscribed {
			err = subs.Unsubscribe(addr, list, "one-click")
		}
	}
	if err != nil {
		t.Fatalf("consent %s for %s: %v", state, addr, err)
	}
	if st, err := subs.Status(addr, list); err != nil || st.State != state {
		t.Fatalf("consent state of %s: %q, %v; want %q", addr, st.State, err, state)
	}
}

// TestDecide runs the cross product reason × list scope × consent state ×
// legal basis × purpose against the rule table, on real stores. Each case
// has its own address and domain, so entries of one never touch another.
func TestDecide(t *testing.T) {
	sup, subs, g := stores(t)
	reasons := []suppression.Reason{suppression.Unsubscribed, suppression.HardBounce, suppression.Complaint,
		suppression.Manual, suppression.Erased, suppression.Restricted}
	scopes := []string{scopeGlobal, scopeThisList, scopeOtherList, scopeDomain, scopeDomainOnList}
	states := []string{stateNone, statePending, stateConfirmed, stateUnsubscribed, stateLegitimate}
	bases := []string{gate.Consent, gate.LegitimateInterest, gate.Unchecked}
	purposes := []gate.Purpose{gate.Campaign, gate.Confirmation}

	type setup struct {
		reason       suppression.Reason
		scope, state string
	}
	var setups []setup
	for _, st := range states {
		setups = append(setups, setup{"", scopeNone, st})
		for _, r := range reasons {
			for _, sc := range scopes {
				setups = append(setups, setup{r, sc, st})
			}
		}
	}
	n := 0
	for i, s := range setups {
		dom := fmt.Sprintf("d%d.example", i)
		addr := "person@" + dom
		target, entryList := addr, ""
		switch s.scope {
		case scopeThisList:
			entryList = list
		case scopeOtherList:
			entryList = "offers"
		case scopeDomain:
			target = "@" + dom
		case scopeDomainOnList:
			target, entryList = "@"+dom, list
		}
		// Consent first: the consent store refuses nothing for a suppressed
		// address, and this order keeps the two stores independent here.
		setConsent(t, subs, addr, s.state)
		if s.scope != scopeNone {
			if err := sup.Add(suppression.Entry{Target: target, List: entryList, Reason: s.reason, Source: "test"}); err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range purposes {
			for _, b := range bases {
				n++
				name := fmt.Sprintf("%s/%s/%s/%s/%q", s.reason, s.scope, s.state, p, b)
				d, err := g.Decide(addr, list, p, b)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				ok, why := want(s.reason, s.scope, s.state, b, p)
				if d.Mailable != ok || d.Reason != why {
					t.Errorf("%s: mailable %v reason %q; want %v %q", name, d.Mailable, d.Reason, ok, why)
				}
				if !d.Mailable && why != gate.NoConsent && why != string(suppression.Unsubscribed) && d.Entry == nil && applies(s.scope) {
					t.Errorf("%s: stopped by an entry but names none", name)
				}
			}
		}
	}
	t.Logf("%d decisions", n)
}

// An erased person who came back by double opt-in is mailable on that list
// only, and a confirmation reaches them while they come back.
func TestErasedComesBackOnOneList(t *testing.T) {
	sup, subs, g := stores(t)
	const ana = "ana@acme.example"
	setConsent(t, subs, ana, stateConfirmed)
	tomb, err := subs.Erase(ana, "DSAR-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sup.Erase(ana, tomb.Ref, nil); err != nil {
		t.Fatal(err)
	}
	check := func(when, l string, p gate.Purpose, wantOK bool) {
		t.Helper()
		d, err := g.Decide(ana, l, p, gate.Consent)
		if err != nil {
			t.Fatal(err)
		}
		if d.Mailable != wantOK || (!wantOK && d.Reason != string(suppression.Erased)) {
			t.Errorf("%s, %s on %s: %+v; want mailable %v", when, p, l, d, wantOK)
		}
	}
	check("erased", list, gate.Campaign, false)
	check("erased", list, gate.Confirmation, true)
	if _, err := subs.Subscribe(subscribers.Subscription{Address: ana, List: list, Source: "form", Pending: true, ViaDoubleOptIn: true}); err != nil {
		t.Fatal(err)
	}
	check("signed up again", list, gate.Campaign, false)
	if _, err := subs.Confirm(ana, list, "192.0.2.1", "test"); err != nil {
		t.Fatal(err)
	}
	check("confirmed again", list, gate.Campaign, true)
	check("confirmed again", "offers", gate.Campaign, false)
	check("confirmed again", "", gate.Campaign, false)

	// A domain entry still stops her: the tombstone, read first, hides nothing.
	if err := sup.Add(suppression.Entry{Target: "@acme.example", Reason: suppression.HardBounce}); err != nil {
		t.Fatal(err)
	}
	if d, _ := g.Decide(ana, list, gate.Campaign, gate.Consent); d.Mailable || d.Reason != string(suppression.HardBounce) {
		t.Errorf("erased comeback under a bounced domain: %+v", d)
	}
}

// A restriction kept beneath an unsubscribe still stops a confirmation.
func TestRestrictionBeneathAnotherReason(t *testing.T) {
	sup, _, g := stores(t)
	const bo = "bo@acme.example"
	if err := sup.Add(suppression.Entry{Target: bo, Reason: suppression.Unsubscribed}); err != nil {
		t.Fatal(err)
	}
	if d, _ := g.Decide(bo, list, gate.Confirmation, gate.Unchecked); !d.Mailable {
		t.Fatalf("an unsubscribe stops a confirmation: %+v", d)
	}
	if err := sup.Restrict(bo, "Art. 18 request"); err != nil {
		t.Fatal(err)
	}
	if d, _ := g.Decide(bo, list, gate.Confirmation, gate.Unchecked); d.Mailable || d.Reason != string(suppression.Restricted) {
		t.Errorf("restricted beneath an unsubscribe: %+v; want restricted", d)
	}
}

// The queue list of a confirmation is spelled by one helper and read back
// by Check as a confirmation.
func TestQueueList(t *testing.T) {
	sup, _, g := stores(t)
	const cy = "cy@acme.example"
	if err := sup.Add(suppression.Entry{Target: cy, Reason: suppression.Unsubscribed}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		queueList string
		want      bool
	}{{list, true}, {gate.ConfirmationList(list), false}} {
		_, suppressed, err := g.Check(cy, tc.queueList)
		if err != nil || suppressed != tc.want {
			t.Errorf("Check(%q): suppressed %v, %v; want %v", tc.queueList, suppressed, err, tc.want)
		}
	}
	if l, p := gate.SplitQueueList(gate.ConfirmationList(list)); l != list || p != gate.Confirmation {
		t.Errorf("SplitQueueList: %q %v", l, p)
	}
}

// LiftUnsubscribe removes only the person's own unsubscribe on the list.
func TestLiftUnsubscribe(t *testing.T) {
	sup, _, g := stores(t)
	for _, tc := range []struct {
		name      string
		entry     suppression.Entry
		wantAfter bool // still suppressed on list after the lift
	}{
		{"own unsubscribe on the list", suppression.Entry{Target: "a@x.example", List: list, Reason: suppression.Unsubscribed}, false},
		{"global unsubscribe", suppression.Entry{Target: "b@x.example", Reason: suppression.Unsubscribed}, true},
		{"bounce on the list", suppression.Entry{Target: "c@x.example", List: list, Reason: suppression.HardBounce}, true},
		{"domain unsubscribe on the list", suppression.Entry{Target: "@y.example", List: list, Reason: suppression.Unsubscribed}, true},
	} {
		addr := tc.entry.Target
		if addr[0] == '@' {
			addr = "d" + addr
		}
		if err := sup.Add(tc.entry); err != nil {
			t.Fatal(err)
		}
		if err := g.LiftUnsubscribe(addr, list); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if _, suppressed, _ := sup.Check(addr, list); suppressed != tc.wantAfter {
			t.Errorf("%s: suppressed after the lift %v; want %v", tc.name, suppressed, tc.wantAfter)
		}
	}
}
