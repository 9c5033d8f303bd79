package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/campaign"
	"github.com/postwarden/postwarden/mta"
	"github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/queue/campaignq"
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/gate"
	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/subscribers"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// profileRun sends the campaign once through the packages in this process,
// wired as `campaign send` wires them without a daemon (delivery runner
// started before enqueueing, then drained), under a CPU profile. It is for
// finding where the time goes, not for the timed figures.
func profileRun(out string, campDir string, sd *seed, sig string, sk *sink, o options, tmp string) (string, error) {
	dataDir := filepath.Join(tmp, "profile-data")
	for _, f := range []string{"data.key", "token.key", "suppression.db"} {
		if err := copyFile(filepath.Join(sd.dir, f), filepath.Join(dataDir, f), 0o600); err != nil {
			return "", err
		}
	}
	key, err := sealed.LoadOrCreateKey(filepath.Join(dataDir, "data.key"))
	if err != nil {
		return "", err
	}
	box, err := sealed.New(key)
	if err != nil {
		return "", err
	}
	tokKey, err := unsubscribe.LoadOrCreateKey(filepath.Join(dataDir, "token.key"))
	if err != nil {
		return "", err
	}
	tokens, err := unsubscribe.NewTokens(tokKey, "https://"+fromDomain)
	if err != nil {
		return "", err
	}
	sup, err := suppression.Open(suppression.Config{Path: filepath.Join(dataDir, "suppression.db"), Box: box}, zerolog.Nop())
	if err != nil {
		return "", err
	}
	defer sup.Close()
	subs, err := subscribers.Open(subscribers.Config{Path: filepath.Join(dataDir, "subscribers.db"), Box: box}, zerolog.Nop())
	if err != nil {
		return "", err
	}
	defer subs.Close()
	g := runnerGate{gate.New(sup, subs), sup}
	q, err := queue.Open(queue.Config{Path: filepath.Join(dataDir, "queue.db"), Box: box}, zerolog.Nop())
	if err != nil {
		return "", err
	}
	defer q.Close()
	k, err := benchKey(sd.dkimFile, sig, o.RSASigner)
	if err != nil {
		return "", err
	}
	snd, err := mta.New(mta.Config{Hostname: "mail." + fromDomain, Mode: "mx", Routes: sinkRoutes(o.Domains, sk.addr), ConcurrencyPerDomain: o.PerDomain},
		dkim.NewSigner([]*dkim.Key{k}), zerolog.Nop())
	if err != nil {
		return "", err
	}
	defer snd.Close()
	set, err := loadSet(campDir)
	if err != nil {
		return "", err
	}
	spec := campaign.Spec{ID: campaignID, List: listID, From: "Bench Sender <news@" + fromDomain + ">",
		Subject: "{{.FirstName}}, a note about {{.Company}}", Templates: set,
		Recipients: filepath.Join(campDir, "recipients.csv"), PrivacyURL: "https://" + fromDomain + "/privacy",
		Hostname: "mail." + fromDomain, LegalBasis: "legitimate_interest", LIA: filepath.Join(campDir, "lia.md"),
		Audience: "b2b", LIAHash: "bench", FileHash: "bench", MessageIDKey: []byte("bench message-id key"),
		UnknownCountry: "include", FreeMail: map[string]bool{}}

	f, err := os.Create(out)
	if err != nil {
		return "", err
	}
	defer f.Close()
	// The heap profile counts allocations since the process started (the
	// references included): FILE.heap.base lets `go tool pprof -base` subtract them.
	runtime.GC()
	if hf, herr := os.Create(out + ".heap.base"); herr == nil {
		pprof.Lookup("heap").WriteTo(hf, 0)
		hf.Close()
	}
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	if err := pprof.StartCPUProfile(f); err != nil {
		return "", err
	}
	// Where goroutines wait, beside where the CPU goes: FILE.block (and FILE.heap below).
	runtime.SetBlockProfileRate(int(10 * time.Microsecond))
	defer runtime.SetBlockProfileRate(0)
	start := time.Now()
	rc := queue.RunnerConfig{Workers: o.Workers, Campaign: campaignID}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.NewRunner(snd, g, rc).Run(ctx) }()
	sum, err := campaign.Send(context.Background(), spec, campaign.Deps{Suppressions: g.Gate, Queue: campaignq.Adapter{Q: q},
		Links: tokens, Dictionary: q, Backlog: q, Records: q, Now: time.Now, Log: zerolog.Nop()}, func(int, int64) {})
	stop()
	if rerr := <-done; rerr != nil && !errors.Is(rerr, context.Canceled) {
		err = errors.Join(err, rerr)
	}
	if err == nil {
		err = q.NewRunner(snd, g, rc).Drain(context.Background())
	}
	pprof.StopCPUProfile()
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	// What is still live at the end (stores open): FILE.heap, for memory that grows with N.
	runtime.GC()
	if hf, herr := os.Create(out + ".heap"); herr == nil {
		pprof.Lookup("heap").WriteTo(hf, 0)
		hf.Close()
	}
	if bf, berr := os.Create(out + ".block"); berr == nil {
		pprof.Lookup("block").WriteTo(bf, 0)
		bf.Close()
	}
	if err != nil {
		return "", fmt.Errorf("profile run: %w", err)
	}
	took := time.Since(start)
	counts, _ := q.CampaignCounts(campaignID)
	logf("profile run: enqueued %d, delivered %d in %s (%.0f msgs/s, in-process)", sum.Enqueued, counts[queue.StateDelivered], took.Round(time.Millisecond), float64(counts[queue.StateDelivered])/took.Seconds())
	top, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=35", out).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go tool pprof: %v: %s", err, top)
	}
	cum, _ := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=45", out).CombinedOutput()
	nd := max(counts[queue.StateDelivered], 1)
	return fmt.Sprintf("in-process profile run: %d delivered in %s (%.0f msgs/s), %.1f KB and %.0f objects allocated per delivered message"+
		" (allocations: go tool pprof -sample_index=alloc_space -base %s.heap.base %s.heap)\n\n%s\n-- by cumulative --\n%s",
		counts[queue.StateDelivered], took.Round(time.Millisecond), float64(counts[queue.StateDelivered])/took.Seconds(),
		float64(ms1.TotalAlloc-ms0.TotalAlloc)/1024/float64(nd), float64(ms1.Mallocs-ms0.Mallocs)/float64(nd), out, out,
		strings.TrimSpace(string(top)), strings.TrimSpace(string(cum))), nil
}

// runnerGate is the runners' check at dequeue (the gate), with the
// suppression store's write of hard bounces, as cmd/postwarden wires it.
type runnerGate struct {
	*gate.Gate
	st *suppression.Store
}

// SuppressAddress satisfies queue.Suppressions.
func (g runnerGate) SuppressAddress(addr, list, reason, source, note string) error {
	return g.st.SuppressAddress(addr, list, reason, source, note)
}
