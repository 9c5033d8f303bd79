package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postwarden/postwarden/campaign/brakes"
	"github.com/postwarden/postwarden/mta/mtatest"
)

// TestClusterBrakesJudgeTheCluster: a campaign spread over three nodes
// whose server rejects one recipient in five (550 5.1.1), with
// hard_bounce_rate 5% and min_sample 150, at 30/s across the cluster (10/s
// on each node). The brake trips on the cluster's figures once the
// cluster attempted 150, while no node attempted 150 of its own (judged on
// its own figures, a node would first trip after 15 s, or never for a
// campaign of under 450); every node holds the campaign paused, and its
// status shows the cluster's figures.
func TestClusterBrakesJudgeTheCluster(t *testing.T) {
	nodes := startCluster3(t, mtatest.Options{Rcpt: func(to string, _ int) error {
		var i int
		if _, err := fmt.Sscanf(to, "r%d@", &i); err == nil && i%5 == 0 {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
		}
		return nil
	}})
	n1 := nodes[0]
	const n, minSample = 3000, 150 // 12 shares: each node holds some (4 fill one node's window)
	file := n1.campaign("spread-bad", spreadCSV(n))
	n1.write("spread-bad.yaml", readFile(t, file)+"rate: 30/s\nbrakes: {hard_bounce_rate: 5%, min_sample: 150}\n")
	n1.mustRun(0, "campaign", "send", file)
	start := time.Now()
	for _, nd := range nodes {
		waitUntil(t, 90*time.Second, nd.name+" paused by the brake", func() bool {
			st := jsonLines[campaignStatus](t, nd.mustRun(0, "--json", "campaign", "status", "spread-bad").stdout)
			return len(st) == 1 && st[0].Brake != nil && st[0].Brake.Paused
		})
	}
	t.Logf("paused on every node %v after the send", time.Since(start).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // what was in flight settles
	var trips int
	sum := 0
	for _, nd := range nodes {
		st := jsonLines[campaignStatus](t, nd.mustRun(0, "--json", "campaign", "status", "spread-bad").stdout)[0]
		own := st.Delivered + st.Bounced
		sum += own
		p := st.Brake.Pause
		t.Logf("%s: %d attempted here, %d hard bounces; brake figures %+v; paused by %s: %s", nd.name, own, st.BouncedHard, st.Brake.Figures, p.By, p.Reason)
		if own >= minSample {
			t.Errorf("%s attempted %d of its own: its own figures reached min_sample %d, nothing shown", nd.name, own, minSample)
		}
		if own == 0 {
			t.Errorf("%s attempted nothing: the campaign was not spread", nd.name)
		}
		if st.Brake.Figures.Attempted <= own {
			t.Errorf("%s's brake figures %+v are not the cluster's (%d attempted here)", nd.name, st.Brake.Figures, own)
		}
		if p.Trip != nil {
			trips++
			if p.Trip.Brake != brakes.HardBounceRate || p.Trip.Sample < minSample || p.Trip.Rate <= 0.05 {
				t.Errorf("%s's trip %+v: want hard_bounce_rate over 5%% on at least %d attempted", nd.name, p.Trip, minSample)
			}
		}
	}
	if trips == 0 {
		t.Error("no node's pause names a brake trip")
	}
	if sum >= n {
		t.Errorf("%d attempted: the campaign finished before the brake held it", sum)
	}
}
