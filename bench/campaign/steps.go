package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/postwarden/postwarden/mta/dkim"
)

// bench is one invocation's shared state, filled in by run's steps in order.
type bench struct {
	o              options
	rep            *report
	root, tmp, bin string
	sk             *sink
	sd             *seed
	campDir        string
	campFile       string
	expected       int    // recipients the gate lets through
	sample         []byte // one rendered message, for the signing and send references
}

// buildBinary builds the binary under test into tmp.
func (b *bench) buildBinary() error {
	b.bin = filepath.Join(b.tmp, "postwarden")
	logf("building %s", b.bin)
	build := exec.Command("go", "build", "-o", b.bin, "./cmd/postwarden")
	build.Dir = b.root
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	return nil
}

// describeSink says in the report what the sink is and how completion is seen.
func (b *bench) describeSink() {
	b.rep.Sink = b.sk.kind + " on " + b.sk.addr
	if strings.HasPrefix(b.sk.kind, "postfix") {
		b.rep.Complete = "smtp-sink -c running counter (mesg=N on stdout, updated at each message's final \".\"), parsed live; then the binary's summary (delivered count) is checked"
	} else {
		b.rep.Complete = "the in-process sink's accepted-message count, polled every 2 ms; then the binary's summary (delivered count) is checked"
	}
	logf("sink: %s", b.rep.Sink)
}

// prepare builds (or reuses) the seeded stores, writes the campaign and
// measures fsync.
func (b *bench) prepare() error {
	o := b.o
	cache := o.Cache
	if cache == "" {
		cache = filepath.Join(b.tmp, "cache")
	}
	logf("suppression store: %d entries (cache %s)", o.Suppressed, cache)
	sd, err := buildSeed(cache, o.N, o.Domains, o.Suppressed, o.Sig)
	if err != nil {
		return err
	}
	b.sd = sd
	b.expected = expectedAllowed(o.N, o.Suppressed)
	b.rep.Seed = seedInfo{Entries: o.Suppressed, Members: o.N - b.expected, BuildS: sd.took.Seconds(), Cached: sd.cached}
	b.campDir = filepath.Join(b.tmp, "campaign")
	if b.campFile, err = writeCampaign(b.campDir, o.N, o.Domains, b.root); err != nil {
		return err
	}

	if err := os.MkdirAll(filepath.Join(b.tmp, "probe"), 0o700); err != nil {
		return err
	}
	b.rep.Fsync, err = measureFsync(filepath.Join(b.tmp, "probe"), 200)
	return err
}

// references measures signing and openssl, once per invocation. The
// transport reference and the send floor are measured again before each timed
// run (the box's speed drifts within an invocation); the report gives their
// medians.
func (b *bench) references() error {
	o, rep := b.o, b.rep
	set, err := loadSet(b.campDir)
	if err != nil {
		return err
	}
	if b.sample, err = renderSample(set, 1, o.Domains); err != nil {
		return err
	}
	dur := time.Duration(o.SignSeconds) * time.Second
	logf("signing references (%s each)", dur)
	for _, ref := range []struct{ typ, engine string }{{"rsa", dkim.EngineGo}, {"rsa", dkim.EngineOpenSSL}, {"ed25519", dkim.EngineGo}} {
		if ref.engine == dkim.EngineOpenSSL && dkim.OpenSSLError() != nil {
			rep.Notes = append(rep.Notes, "RSA signing reference with OpenSSL skipped: "+dkim.OpenSSLError().Error())
			continue
		}
		keyFile := filepath.Join(b.tmp, "signref-"+ref.typ+".key")
		r, err := runSignRef(keyFile, ref.typ, ref.engine, b.sample, dur)
		if err != nil {
			return err
		}
		switch {
		case ref.typ == "ed25519":
			rep.SignEd = &r
		case ref.engine == dkim.EngineOpenSSL:
			rep.SignRSAOpenSSL = &r
		default:
			rep.SignRSA = &r
		}
	}
	if o.Sig == "rsa" {
		rep.RSAEngine = o.RSASigner
		if o.RSASigner == dkim.EngineAuto {
			rep.RSAEngine = "auto: go"
			if dkim.OpenSSLError() == nil {
				rep.RSAEngine = "auto: openssl"
			}
		}
	}
	if osr, err := runOpenSSL(o.SignSeconds); err == nil {
		rep.OpenSSL = &osr
	} else {
		rep.Notes = append(rep.Notes, "openssl reference skipped: "+err.Error())
	}
	return nil
}

// timedRuns runs the timed campaign sends, each after its own transport
// reference and send floor, and returns the last run's config file.
func (b *bench) timedRuns() (lastCfg string, err error) {
	o := b.o
	refN := min(o.N, 100000)
	conc := min(o.Workers, o.Domains*o.PerDomain)
	var lastData string
	for r := 1; r <= o.Runs; r++ {
		logf("round %d/%d: transport reference, %d messages at C=%d", r, o.Runs, refN, o.C)
		tr, err := runTransportRef(b.sk, refN, o.C)
		if err != nil {
			return "", err
		}
		b.rep.TransportRuns = append(b.rep.TransportRuns, tr)
		logf("round %d/%d: send floor, %d messages through the MTA alone at %d deliveries at once", r, o.Runs, refN, conc)
		sr, err := runSendRef(b.sk, filepath.Join(b.tmp, "sendref.key"), o.Sig, o.RSASigner, b.sample, refN, o.Domains, conc, o.PerDomain)
		if err != nil {
			return "", err
		}
		b.rep.SendRuns = append(b.rep.SendRuns, sr)
		dataDir := filepath.Join(b.tmp, fmt.Sprintf("data%d", r))
		if err := b.timedRun(r, dataDir, lastData); err != nil {
			return "", err
		}
		lastData, lastCfg = dataDir, filepath.Join(b.tmp, fmt.Sprintf("postwarden%d.yaml", r))
	}
	return lastCfg, nil
}

// timedRun is run r: a fresh copy of the seed in dataDir (lastData, the
// previous run's, is removed unless kept), then the timed campaign send.
func (b *bench) timedRun(r int, dataDir, lastData string) error {
	o := b.o
	for _, f := range []string{"data.key", "token.key", "suppression.db"} {
		if err := copyFile(filepath.Join(b.sd.dir, f), filepath.Join(dataDir, f), 0o600); err != nil {
			return err
		}
	}
	if lastData != "" && !o.Keep {
		_ = os.RemoveAll(lastData)
	}
	syncAll() // the seed copy and the last run's files are on disk before the clock starts
	cfgPath := filepath.Join(b.tmp, fmt.Sprintf("postwarden%d.yaml", r))
	if err := writeServerConfig(cfgPath, dataDir, b.sd.dkimFile, o.Sig, o.RSASigner, b.sk.addr, o.Domains, o.Workers, o.PerDomain); err != nil {
		return err
	}
	// The seeded suppression store came from elsewhere: the data directory
	// takes the other stores only knowingly (db init), then adopts them all.
	if out, err := exec.Command(b.bin, "-c", cfgPath, "db", "init", "queue", "subscribers", "audit").CombinedOutput(); err != nil {
		return fmt.Errorf("run %d: db init: %w: %s", r, err, out)
	}
	syncAll()
	logf("run %d/%d: campaign send of %d recipients (%d allowed)", r, o.Runs, o.N, b.expected)
	res, err := runCampaign(b.bin, cfgPath, b.campFile, dataDir, b.sk, b.expected, o.N, o.Timeout)
	res.Run = r
	if err != nil {
		return fmt.Errorf("run %d: %w", r, err)
	}
	logf("run %d: %.0f msgs/s, first delivery %.0f ms, all at sink %.2f s, peak anon %.1f MB", r, res.Rate, res.FirstDeliveryMs, res.AllDeliveredS, res.PeakAnonMB)
	b.rep.Runs = append(b.rep.Runs, res)
	return nil
}

// queueCLI times admin queries on the last run's queue (every message delivered).
func (b *bench) queueCLI(lastCfg string) {
	for _, args := range [][]string{
		{"queue", "ls", "--state", "deferred", "--limit", "50"},
		{"queue", "ls", "--state", "delivered", "--limit", "50"},
		{"queue", "stats"},
	} {
		d, out, err := timeCmd(b.bin, append([]string{"-c", lastCfg}, args...)...)
		if err != nil && !strings.Contains(string(out), "no messages") {
			b.rep.Notes = append(b.rep.Notes, fmt.Sprintf("postwarden %s: %v: %s", strings.Join(args, " "), err, firstLine(out)))
		}
		b.rep.QueueCLI = append(b.rep.QueueCLI, cliTiming{Command: "postwarden " + strings.Join(args, " "), Ms: float64(d.Microseconds()) / 1e3,
			Lines: strings.Count(string(out), "\n"), Queue: b.expected})
	}
}

// inProcess runs the optional in-process measurements: stage samples,
// package benchmarks, the profile run.
func (b *bench) inProcess() error {
	o := b.o
	if o.StageSamples > 0 {
		logf("in-process stage samples")
		st, err := measureStages(b.campDir, b.sd, o.Sig, o.RSASigner, b.sk, o.N, o.Domains, o.StageSamples, b.tmp)
		if err != nil {
			return fmt.Errorf("stages: %w", err)
		}
		b.rep.Stages = st
	}
	if o.PkgBenchtime != "" {
		logf("package benchmarks (-benchtime %s)", o.PkgBenchtime)
		pb, err := runPkgBenches(b.root, o.PkgBenchtime)
		if err != nil {
			return err
		}
		b.rep.PkgBench = pb
	}
	if o.Profile != "" {
		logf("in-process profile run")
		top, err := profileRun(o.Profile, b.campDir, b.sd, o.Sig, b.sk, o, b.tmp)
		if err != nil {
			return err
		}
		b.rep.Profile = top
	}
	return nil
}

// writeJSON writes the report to path, if one is given.
func writeJSON(path string, rep *report) error {
	if path == "" {
		return nil
	}
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return err
	}
	logf("wrote %s", path)
	return nil
}
