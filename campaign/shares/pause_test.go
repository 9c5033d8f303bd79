package shares

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"
)

// A pause set on one node reaches every node's Worker.Paused (also one
// started after it), holds the campaign's free shards in the cluster, and a
// resume on another node lifts it everywhere; setting the state in force
// writes nothing.
func TestPauseClusterWide(t *testing.T) {
	const campaign, rowsN = "pause.me-2026", 400
	srv := startServers(t, 1)
	url := srv[0].srv.ClientURL()
	box := testBox(t)
	tl := newTally()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	var mu sync.Mutex
	seen := map[string][]Pause{} // node → pauses told, in order
	told := func(node string) []Pause {
		mu.Lock()
		defer mu.Unlock()
		return append([]Pause(nil), seen[node]...)
	}
	var nodes []*fakeNode
	start := func(i int) {
		name := "mta" + strconv.Itoa(i+1)
		c := newCoordinator(t, connect(t, url), box, Config{Node: name, Replicas: 1, Lease: 3 * time.Second, ShardSize: 50})
		n := newFakeNode(name, c, tl, 200)
		nodes = append(nodes, n)
		wg.Add(2)
		go func() { defer wg.Done(); n.deliver(ctx, campaign) }()
		go func() {
			defer wg.Done()
			w := Worker{Enqueuer: n, Room: n.room, Paused: func(p Pause) {
				mu.Lock()
				seen[name] = append(seen[name], p)
				mu.Unlock()
			}}
			if err := c.Run(ctx, w); err != nil {
				t.Errorf("%s: Run: %v", name, err)
			}
		}()
	}
	start(0)
	start(1)

	if err := nodes[0].c.SetPause(ctx, Pause{Campaign: campaign, Paused: true, Reason: "complaint_rate over 0.3%", By: "brakes"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "mta2 told of the pause", func() bool {
		p := told("mta2")
		return len(p) == 1 && p[0].Paused && p[0].Node == "mta1" && p[0].Reason == "complaint_rate over 0.3%"
	})
	// The state in force again: no write, so nobody is told twice.
	kv := streamSeqs(t, connect(t, url))[2]
	if err := nodes[1].c.SetPause(ctx, Pause{Campaign: campaign, Paused: true, Reason: "again", By: "op"}); err != nil {
		t.Fatal(err)
	}
	if after := streamSeqs(t, connect(t, url))[2]; after != kv {
		t.Errorf("setting the pause in force wrote to the bucket (%d → %d)", kv, after)
	}
	// A node started while it is in force is told at once.
	start(2)
	waitFor(t, 10*time.Second, "mta3 told of the pause in force", func() bool {
		p := told("mta3")
		return len(p) == 1 && p[0].Paused
	})

	if _, err := nodes[0].c.Publish(ctx, campaign, "hash-p", testRows(rowsN)); err != nil {
		t.Fatal(err)
	}
	// Several claim ticks (Lease/4) pass: no free shard of the paused
	// campaign is taken.
	time.Sleep(2 * time.Second)
	if n := tl.distinct(); n != 0 {
		t.Fatalf("%d rows handed out while the campaign is paused", n)
	}

	if err := nodes[1].c.SetPause(ctx, Pause{Campaign: campaign, Paused: false, Reason: "checked the list", By: "op"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"mta1", "mta2", "mta3"} {
		waitFor(t, 10*time.Second, name+" told of the resume", func() bool {
			p := told(name)
			return len(p) > 0 && !p[len(p)-1].Paused && p[len(p)-1].Node == "mta2"
		})
	}
	waitFor(t, 60*time.Second, "every shard done after the resume", func() bool {
		_, ok := allDone(t, nodes[2].c, campaign)
		return ok
	})
	if n := tl.distinct(); n != rowsN {
		t.Errorf("%d rows handled after the resume, want %d", n, rowsN)
	}
}

// A campaign's settings set on one node reach every node's
// Worker.Settings, a node started later too; the same value again writes
// nothing; a new value is told.
func TestSettingsClusterWide(t *testing.T) {
	const campaign = "armed.campaign"
	srv := startServers(t, 1)
	url := srv[0].srv.ClientURL()
	box := testBox(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	var mu sync.Mutex
	seen := map[string][]string{} // node → settings told, in order
	told := func(node string) []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen[node]...)
	}
	var coords []*Coordinator
	start := func(name string) {
		c := newCoordinator(t, connect(t, url), box, Config{Node: name, Replicas: 1, Lease: 3 * time.Second})
		coords = append(coords, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := Worker{Enqueuer: &rowCollector{}, Settings: func(camp string, v []byte) {
				mu.Lock()
				seen[name] = append(seen[name], camp+" "+string(v))
				mu.Unlock()
			}}
			if err := c.Run(ctx, w); err != nil {
				t.Errorf("%s: Run: %v", name, err)
			}
		}()
	}
	start("mta1")
	if err := coords[0].SetSettings(ctx, campaign, []byte(`{"rate":30}`)); err != nil {
		t.Fatal(err)
	}
	start("mta2")
	for _, n := range []string{"mta1", "mta2"} {
		waitFor(t, 10*time.Second, n+" told the settings", func() bool {
			s := told(n)
			return len(s) == 1 && s[0] == campaign+` {"rate":30}`
		})
	}
	kv := streamSeqs(t, connect(t, url))[2]
	if err := coords[1].SetSettings(ctx, campaign, []byte(`{"rate":30}`)); err != nil {
		t.Fatal(err)
	}
	if after := streamSeqs(t, connect(t, url))[2]; after != kv {
		t.Errorf("the same settings again wrote to the bucket (%d → %d)", kv, after)
	}
	if err := coords[1].SetSettings(ctx, campaign, []byte(`{"rate":60}`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "mta1 told the new settings", func() bool {
		s := told("mta1")
		return len(s) == 2 && s[1] == campaign+` {"rate":60}`
	})
}

// Each node's figures of a campaign reach every other node's
// Worker.Figures (a node started later too, and never its own); the same
// value again writes nothing; a node named p (a pause key's end) is read as
// figures, not as a pause.
func TestFiguresClusterWide(t *testing.T) {
	const campaign = "judged.campaign"
	srv := startServers(t, 1)
	url := srv[0].srv.ClientURL()
	box := testBox(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	var mu sync.Mutex
	seen := map[string]map[string]string{} // node → from node → last figures told
	paused := map[string]int{}             // node → pauses told
	told := func(node, from string) string {
		mu.Lock()
		defer mu.Unlock()
		return seen[node][from]
	}
	coords := map[string]*Coordinator{}
	start := func(name string) {
		c := newCoordinator(t, connect(t, url), box, Config{Node: name, Replicas: 1, Lease: 3 * time.Second})
		coords[name] = c
		mu.Lock()
		seen[name] = map[string]string{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := Worker{Enqueuer: &rowCollector{}, Paused: func(Pause) {
				mu.Lock()
				paused[name]++
				mu.Unlock()
			}, Figures: func(camp, from string, v []byte) {
				if camp != campaign {
					t.Errorf("%s told figures of %q", name, camp)
				}
				mu.Lock()
				seen[name][from] = string(v)
				mu.Unlock()
			}}
			if err := c.Run(ctx, w); err != nil {
				t.Errorf("%s: Run: %v", name, err)
			}
		}()
	}
	start("mta1")
	start("p")
	if err := coords["mta1"].SetFigures(ctx, campaign, []byte(`{"attempted":40}`)); err != nil {
		t.Fatal(err)
	}
	if err := coords["p"].SetFigures(ctx, campaign, []byte(`{"attempted":30}`)); err != nil {
		t.Fatal(err)
	}
	start("mta3")
	for _, c := range []struct{ node, from, want string }{
		{"mta1", "p", `{"attempted":30}`}, {"p", "mta1", `{"attempted":40}`},
		{"mta3", "mta1", `{"attempted":40}`}, {"mta3", "p", `{"attempted":30}`},
	} {
		waitFor(t, 10*time.Second, c.node+" told "+c.from+"'s figures", func() bool { return told(c.node, c.from) == c.want })
	}
	kv := streamSeqs(t, connect(t, url))[2]
	if err := coords["mta1"].SetFigures(ctx, campaign, []byte(`{"attempted":40}`)); err != nil {
		t.Fatal(err)
	}
	if after := streamSeqs(t, connect(t, url))[2]; after != kv {
		t.Errorf("the same figures again wrote to the bucket (%d → %d)", kv, after)
	}
	if err := coords["mta1"].SetFigures(ctx, campaign, []byte(`{"attempted":90}`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "mta3 told mta1's new figures", func() bool { return told("mta3", "mta1") == `{"attempted":90}` })
	mu.Lock()
	defer mu.Unlock()
	for node, m := range seen {
		if _, ok := m[node]; ok {
			t.Errorf("%s told its own figures", node)
		}
		if paused[node] != 0 {
			t.Errorf("%s told %d pauses; none was set", node, paused[node])
		}
	}
}
