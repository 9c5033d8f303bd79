package brakes

import (
	"io"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func TestDecide(t *testing.T) {
	th := Thresholds{ComplaintRate: 0.003, HardBounceRate: 0.05, MinSample: 500}
	for _, c := range []struct {
		name string
		th   Thresholds
		f    Figures
		want string // "" no trip, else Trip.String()
	}{
		{"nothing yet", th, Figures{}, ""},
		{"bounces over but sample short", th, Figures{Attempted: 499, Delivered: 400, HardBounces: 99}, ""},
		{"bounces over at the sample", th, Figures{Attempted: 520, Delivered: 467, HardBounces: 53}, "brake: hard_bounce_rate 10.19% > 5% after 520 attempted"},
		{"bounces at the threshold do not trip", th, Figures{Attempted: 1000, Delivered: 950, HardBounces: 50}, ""},
		{"bounces just over", th, Figures{Attempted: 1000, Delivered: 949, HardBounces: 51}, "brake: hard_bounce_rate 5.1% > 5% after 1000 attempted"},
		{"complaints over", th, Figures{Attempted: 1000, Delivered: 1000, Complaints: 4}, "brake: complaint_rate 0.4% > 0.3% after 1000 delivered"},
		{"complaints at 0.3% do not trip", th, Figures{Attempted: 1000, Delivered: 1000, Complaints: 3}, ""},
		{"complaints need delivered, not attempted", th, Figures{Attempted: 600, Delivered: 499, Complaints: 50}, ""},
		{"complaints judged first", th, Figures{Attempted: 1000, Delivered: 900, HardBounces: 100, Complaints: 9}, "brake: complaint_rate 1% > 0.3% after 900 delivered"},
		{"a brake at 0 is off", Thresholds{HardBounceRate: 0, ComplaintRate: 0.003, MinSample: 10}, Figures{Attempted: 100, Delivered: 10, HardBounces: 90}, ""},
		{"min_sample 1", Thresholds{HardBounceRate: 0.05, MinSample: 1}, Figures{Attempted: 1, HardBounces: 1}, "brake: hard_bounce_rate 100% > 5% after 1 attempted"},
	} {
		t.Run(c.name, func(t *testing.T) {
			trip, ok := Decide(c.th, c.f)
			got := ""
			if ok {
				got = trip.String()
			}
			if got != c.want {
				t.Errorf("Decide(%+v, %+v) = %q, want %q", c.th, c.f, got, c.want)
			}
		})
	}
}

func TestParsePercent(t *testing.T) {
	for _, c := range []struct {
		in   string
		want float64
		bad  bool
	}{
		{"0.3%", 0.003, false}, {"5%", 0.05, false}, {" 5 % ", 0.05, false}, {"0%", 0, false}, {"100%", 1, false},
		{"5", 0, true}, {"0.05", 0, true}, {"-1%", 0, true}, {"101%", 0, true}, {"abc%", 0, true}, {"NaN%", 0, true}, {"%", 0, true},
	} {
		got, err := ParsePercent(c.in)
		if (err != nil) != c.bad || (!c.bad && got != c.want) {
			t.Errorf("ParsePercent(%q) = %v, %v; want %v (error %v)", c.in, got, err, c.want, c.bad)
		}
	}
	if got := FormatPercent(0.003); got != "0.3%" {
		t.Errorf("FormatPercent(0.003) = %q", got)
	}
}

// memory is the brake's peers kept in memory, as the wiring keeps them in the queue.
type memory struct {
	f       Figures
	paused  map[string]string
	state   map[string][]byte
	audited []string
}

func (m *memory) Figures(string) (Figures, error) { return m.f, nil }
func (m *memory) Pause(c, reason string) error    { m.paused[c] = reason; return nil }
func (m *memory) Resume(c string) (bool, error) {
	_, ok := m.paused[c]
	delete(m.paused, c)
	return ok, nil
}
func (m *memory) Paused(c string) bool               { _, ok := m.paused[c]; return ok }
func (m *memory) LoadBrake(c string) ([]byte, error) { return m.state[c], nil }
func (m *memory) SaveBrake(c string, v []byte) error { m.state[c] = v; return nil }
func (m *memory) Audit(who, action, c, reason string, _ map[string]string) error {
	m.audited = append(m.audited, who+" "+action+" "+c+": "+reason)
	return nil
}

// A trip pauses and is audited; a resume re-arms the brake on what comes
// after it only, once another min_sample messages were attempted.
func TestBrakeTripResumeRearm(t *testing.T) {
	m := &memory{paused: map[string]string{}, state: map[string][]byte{}}
	b, err := New(Config{Counter: m, Pauser: m, Store: m, Auditor: m}, zerolog.New(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Arm("c1", Thresholds{HardBounceRate: 0.05, ComplaintRate: 0.003, MinSample: 100}); err != nil {
		t.Fatal(err)
	}
	check := func(f Figures, want bool) {
		t.Helper()
		m.f = f
		_, tripped, err := b.Check("c1", "mta")
		if err != nil || tripped != want {
			t.Fatalf("Check at %+v: tripped %v (%v), want %v", f, tripped, err, want)
		}
	}
	check(Figures{Attempted: 99, Delivered: 80, HardBounces: 19}, false) // under the sample
	check(Figures{Attempted: 110, Delivered: 99, HardBounces: 11}, true)
	if r := m.paused["c1"]; r != "brake: hard_bounce_rate 10% > 5% after 110 attempted" {
		t.Errorf("paused with %q", r)
	}
	if len(m.audited) != 1 || !strings.HasPrefix(m.audited[0], "mta brake.trip c1: brake: hard_bounce_rate 10%") {
		t.Errorf("audited %q", m.audited)
	}
	check(Figures{Attempted: 200, Delivered: 150, HardBounces: 50}, false) // paused: not judged again
	st, err := b.Status("c1")
	if err != nil || !st.Paused || st.Pause.Trip == nil || st.Pause.Trip.Sample != 110 {
		t.Fatalf("status %+v, %v", st, err)
	}

	m.f = Figures{Attempted: 200, Delivered: 150, HardBounces: 50}
	if ok, err := b.Resume("c1", "uid:1000", "list cleaned"); err != nil || !ok {
		t.Fatalf("resume: %v %v", ok, err)
	}
	if ok, _ := b.Resume("c1", "uid:1000", ""); ok {
		t.Error("a second resume reported a pause")
	}
	// 50/200 overall is still over, but only what follows the resume counts.
	check(Figures{Attempted: 299, Delivered: 240, HardBounces: 59}, false) // 99 since: sample short
	check(Figures{Attempted: 300, Delivered: 245, HardBounces: 54}, false) // 4/100 since: under
	check(Figures{Attempted: 310, Delivered: 250, HardBounces: 62}, true)  // 12/110 since: over
	if r := m.paused["c1"]; r != "brake: hard_bounce_rate 10.91% > 5% after 110 attempted" {
		t.Errorf("paused again with %q", r)
	}
}

func TestPauseByHand(t *testing.T) {
	m := &memory{paused: map[string]string{}, state: map[string][]byte{}}
	b, err := New(Config{Counter: m, Pauser: m, Store: m, Auditor: m}, zerolog.New(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Pause("c2", "uid:0", " "); err == nil {
		t.Error("a pause without a reason was accepted")
	}
	if err := b.Pause("c2", "uid:0", "legal review"); err != nil {
		t.Fatal(err)
	}
	st, err := b.Status("c2")
	if err != nil || !st.Paused || st.Pause.By != "uid:0" || st.Pause.Reason != "paused: legal review" || st.Thresholds != Defaults {
		t.Errorf("status %+v %+v, %v", st, st.Pause, err)
	}
}
