package brakes

import (
	"io"
	"testing"

	"github.com/rs/zerolog"
)

// A campaign spread over three nodes, 60 attempted on each with 6 hard
// bounces (10 %): no node's own figures reach min_sample 150, the
// cluster's (180 attempted, 18 hard bounces) do and trip the brake; the
// figures and the base a resume records are the cluster's.
func TestClusterJudgesEveryNode(t *testing.T) {
	m := &memory{paused: map[string]string{}, state: map[string][]byte{}, f: Figures{Attempted: 60, Delivered: 54, HardBounces: 6}}
	th := Thresholds{HardBounceRate: 0.05, MinSample: 150}
	local, err := New(Config{Defaults: th, Counter: m, Pauser: m, Store: m, Auditor: m}, zerolog.New(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	if _, tripped, _ := local.Check("c", "mta"); tripped {
		t.Fatal("one node's 60 attempted tripped a brake of min_sample 150")
	}
	cl := NewCluster(m)
	b, err := New(Config{Defaults: th, Counter: cl, Pauser: m, Store: m, Auditor: m}, zerolog.New(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	cl.Observe("c", "n2", Figures{Attempted: 60, Delivered: 54, HardBounces: 6})
	cl.Observe("other", "n2", Figures{Attempted: 900, HardBounces: 900})
	if _, tripped, _ := b.Check("c", "mta"); tripped {
		t.Fatal("two nodes' 120 attempted tripped a brake of min_sample 150")
	}
	cl.Observe("c", "n3", Figures{Attempted: 50, Delivered: 45, HardBounces: 5})
	cl.Observe("c", "n3", Figures{Attempted: 60, Delivered: 54, HardBounces: 6}) // replaces, not adds
	trip, tripped, err := b.Check("c", "cluster:n3")
	if err != nil || !tripped || trip.Sample != 180 || trip.Count != 18 {
		t.Fatalf("trip %+v %v (%v); want 18 of 180 attempted", trip, tripped, err)
	}
	if _, err := b.Resume("c", "uid:0", "list cleaned"); err != nil {
		t.Fatal(err)
	}
	st, err := b.Status("c")
	if err != nil || st.Figures != (Figures{Attempted: 180, Delivered: 162, HardBounces: 18}) || st.Judged != (Figures{}) {
		t.Errorf("status after resume: figures %+v judged %+v (%v); want the cluster's, nothing judged", st.Figures, st.Judged, err)
	}
}
