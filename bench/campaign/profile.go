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
	ps, err := openProfileStores(filepath.Join(tmp, "profile-data"), sd)
	if err != nil {
		return "", err
	}
	defer ps.close()
	snd, err := profileSender(sd, sig, sk, o)
	if err != nil {
		return "", err
	}
	defer snd.Close()
	spec, err := profileSpec(campDir)
	if err != nil {
		return "", err
	}
	f, err := os.Create(out)
	if err != nil {
		return "", err
	}
	defer f.Close()
	// The heap profile counts allocations since the process started (the
	// references included): FILE.heap.base lets `go tool pprof -base` subtract them.
	runtime.GC()
	writeProfile("heap", out+".heap.base")
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	if err := pprof.StartCPUProfile(f); err != nil {
		return "", err
	}
	// Where goroutines wait, beside where the CPU goes: FILE.block (and FILE.heap below).
	runtime.SetBlockProfileRate(int(10 * time.Microsecond))
	defer runtime.SetBlockProfileRate(0)
	start := time.Now()
	sum, err := ps.send(snd, spec, o.Workers)
	pprof.StopCPUProfile()
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	// What is still live at the end (stores open): FILE.heap, for memory that grows with N.
	runtime.GC()
	writeProfile("heap", out+".heap")
	writeProfile("block", out+".block")
	if err != nil {
		return "", fmt.Errorf("profile run: %w", err)
	}
	took := time.Since(start)
	counts, _ := ps.q.CampaignCounts(campaignID)
	delivered := counts[queue.StateDelivered]
	logf("profile run: enqueued %d, delivered %d in %s (%.0f msgs/s, in-process)", sum.Enqueued, delivered, took.Round(time.Millisecond), float64(delivered)/took.Seconds())
	return profileReport(out, delivered, took, ms0, ms1)
}

// profileStores are the stores of the profile run, opened on copies of the
// seed's keys and suppression store.
type profileStores struct {
	sup    *suppression.Store
	subs   *subscribers.Store
	q      *queue.Store
	tokens *unsubscribe.Tokens
	g      runnerGate
}

// openProfileStores copies the seed's keys and suppression store into
// dataDir and opens the stores there.
func openProfileStores(dataDir string, sd *seed) (_ *profileStores, err error) {
	for _, f := range []string{"data.key", "token.key", "suppression.db"} {
		if err := copyFile(filepath.Join(sd.dir, f), filepath.Join(dataDir, f), 0o600); err != nil {
			return nil, err
		}
	}
	key, err := sealed.LoadOrCreateKey(filepath.Join(dataDir, "data.key"))
	if err != nil {
		return nil, err
	}
	box, err := sealed.New(key)
	if err != nil {
		return nil, err
	}
	tokKey, err := unsubscribe.LoadOrCreateKey(filepath.Join(dataDir, "token.key"))
	if err != nil {
		return nil, err
	}
	ps := &profileStores{}
	if ps.tokens, err = unsubscribe.NewTokens(tokKey, "https://"+fromDomain); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			ps.close()
		}
	}()
	if ps.sup, err = suppression.Open(suppression.Config{Path: filepath.Join(dataDir, "suppression.db"), Box: box}, zerolog.Nop()); err != nil {
		return nil, err
	}
	if ps.subs, err = subscribers.Open(subscribers.Config{Path: filepath.Join(dataDir, "subscribers.db"), Box: box}, zerolog.Nop()); err != nil {
		return nil, err
	}
	ps.g = runnerGate{gate.New(ps.sup, ps.subs), ps.sup}
	if ps.q, err = queue.Open(queue.Config{Path: filepath.Join(dataDir, "queue.db"), Box: box}, zerolog.Nop()); err != nil {
		return nil, err
	}
	return ps, nil
}

// close closes the stores that are open, the last opened first.
func (ps *profileStores) close() {
	if ps.q != nil {
		ps.q.Close()
	}
	if ps.subs != nil {
		ps.subs.Close()
	}
	if ps.sup != nil {
		ps.sup.Close()
	}
}

// send runs the campaign as `campaign send` does without a daemon: the
// delivery runner started before enqueueing, stopped after, then drained.
func (ps *profileStores) send(snd *mta.Sender, spec campaign.Spec, workers int) (campaign.Summary, error) {
	q, g := ps.q, ps.g
	rc := queue.RunnerConfig{Workers: workers, Campaign: campaignID}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.NewRunner(snd, g, rc).Run(ctx) }()
	sum, err := campaign.Send(context.Background(), spec, campaign.Deps{Suppressions: g.Gate, Queue: campaignq.Adapter{Q: q},
		Links: ps.tokens, Dictionary: q, Backlog: q, Records: q, Now: time.Now, Log: zerolog.Nop()}, func(int, int64) {})
	stop()
	if rerr := <-done; rerr != nil && !errors.Is(rerr, context.Canceled) {
		err = errors.Join(err, rerr)
	}
	if err == nil {
		err = q.NewRunner(snd, g, rc).Drain(context.Background())
	}
	return sum, err
}

// profileSender is the MX-mode sender of the run, routed to the sink and
// signing with the bench key.
func profileSender(sd *seed, sig string, sk *sink, o options) (*mta.Sender, error) {
	k, err := benchKey(sd.dkimFile, sig, o.RSASigner)
	if err != nil {
		return nil, err
	}
	return mta.New(mta.Config{Hostname: "mail." + fromDomain, Mode: "mx", Routes: sinkRoutes(o.Domains, sk.addr), ConcurrencyPerDomain: o.PerDomain},
		dkim.NewSigner([]*dkim.Key{k}), zerolog.Nop())
}

// profileSpec is the bench campaign of campDir.
func profileSpec(campDir string) (campaign.Spec, error) {
	set, err := loadSet(campDir)
	if err != nil {
		return campaign.Spec{}, err
	}
	return campaign.Spec{ID: campaignID, List: listID, From: "Bench Sender <news@" + fromDomain + ">",
		Subject: "{{.FirstName}}, a note about {{.Company}}", Templates: set,
		Recipients: filepath.Join(campDir, "recipients.csv"), PrivacyURL: "https://" + fromDomain + "/privacy",
		Hostname: "mail." + fromDomain, LegalBasis: "legitimate_interest", LIA: filepath.Join(campDir, "lia.md"),
		Audience: "b2b", LIAHash: "bench", FileHash: "bench", MessageIDKey: []byte("bench message-id key"),
		UnknownCountry: "include", FreeMail: map[string]bool{}}, nil
}

// writeProfile writes the named runtime profile to path, best effort.
func writeProfile(name, path string) {
	if f, err := os.Create(path); err == nil {
		pprof.Lookup(name).WriteTo(f, 0)
		f.Close()
	}
}

// profileReport is the run's summary line and pprof's top functions, flat
// and cumulative, with the allocations per delivered message between ms0 and ms1.
func profileReport(out string, delivered int, took time.Duration, ms0, ms1 runtime.MemStats) (string, error) {
	top, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=35", out).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go tool pprof: %v: %s", err, top)
	}
	cum, _ := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=45", out).CombinedOutput()
	nd := max(delivered, 1)
	return fmt.Sprintf("in-process profile run: %d delivered in %s (%.0f msgs/s), %.1f KB and %.0f objects allocated per delivered message"+
		" (allocations: go tool pprof -sample_index=alloc_space -base %s.heap.base %s.heap)\n\n%s\n-- by cumulative --\n%s",
		delivered, took.Round(time.Millisecond), float64(delivered)/took.Seconds(),
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
