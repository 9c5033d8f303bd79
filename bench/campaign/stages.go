package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta"
	"github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/templates"
)

// stage is the latency of one pipeline stage measured through the packages
// in this process, one call at a time (not inside the binary: postwarden
// does not time its stages per message).
type stage struct {
	Name    string  `json:"name"`
	Samples int     `json:"samples"`
	P50Us   float64 `json:"p50_us"`
	P99Us   float64 `json:"p99_us"`
	Note    string  `json:"note,omitempty"`
}

func mkStage(name string, lat []time.Duration, div int, note string) stage {
	slices.Sort(lat)
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 / float64(div) }
	return stage{Name: name, Samples: len(lat), P50Us: us(pct(lat, 50)), P99Us: us(pct(lat, 99)), Note: note}
}

// renderSample renders one bench message as the campaign would (same
// template, same header set; links minted by the bench, not signed tokens).
func renderSample(set *templates.Set, i, d int) ([]byte, error) {
	to := recipient(i, d)
	unsub := fmt.Sprintf("https://%s/u/%s", fromDomain, strings.Repeat("A", 120))
	return set.Render(templates.Data{FirstName: fmt.Sprint("First", i), LastName: "Last", Company: "Company GmbH",
		JobTitle: "Head of Procurement", Country: "DE", Email: to, UnsubscribeURL: unsub, PrivacyURL: "https://" + fromDomain + "/privacy"},
		templates.Envelope{From: "Bench Sender <news@" + fromDomain + ">", To: to, ToName: "First Last",
			MessageID: fmt.Sprintf("%d.bench@mail.%s", i, fromDomain), Date: time.Now(),
			ListID: listID + ".mail." + fromDomain, Unsubscribe: []string{unsub}})
}

// measureStages samples render, suppression check (on the pre-filled store),
// sign, grouped commit and deliver over loopback into the sink.
func measureStages(campDir string, sd *seed, sig, rsaSigner string, sk *sink, n, d, samples int, tmp string) ([]stage, error) {
	set, err := templates.Load(filepath.Join(campDir, "bench"), "{{.FirstName}}, a note about {{.Company}}")
	if err != nil {
		return nil, err
	}
	render, msgs, err := timeRender(set, samples, d)
	if err != nil {
		return nil, err
	}
	key, err := sealed.LoadOrCreateKey(filepath.Join(sd.dir, "data.key"))
	if err != nil {
		return nil, err
	}
	box, err := sealed.New(key)
	if err != nil {
		return nil, err
	}
	check, err := timeSuppressionCheck(sd, box, tmp, n, d, samples)
	if err != nil {
		return nil, err
	}
	k, err := benchKey(sd.dkimFile, sig, rsaSigner)
	if err != nil {
		return nil, err
	}
	signer := dkim.NewSigner([]*dkim.Key{k})
	sign, err := timeSign(signer, msgs, sig, samples)
	if err != nil {
		return nil, err
	}
	commits, err := timeCommits(box, tmp, msgs, d, samples)
	if err != nil {
		return nil, err
	}
	deliver, err := timeDeliver(signer, sk, msgs, d, samples)
	if err != nil {
		return nil, err
	}
	out := []stage{render, check, sign}
	out = append(out, commits...)
	return append(out, deliver...), nil
}

// timeRender renders samples messages one at a time and keeps the first 256
// for the later stages.
func timeRender(set *templates.Set, samples, d int) (stage, [][]byte, error) {
	lat := make([]time.Duration, 0, samples)
	msgs := make([][]byte, 0, 256)
	for i := range samples {
		t := time.Now()
		m, err := renderSample(set, i, d)
		if err != nil {
			return stage{}, nil, err
		}
		lat = append(lat, time.Since(t))
		if len(msgs) < 256 {
			msgs = append(msgs, m)
		}
	}
	return mkStage("render", lat, 1, fmt.Sprintf("templates.Set.Render, %d-byte message", len(msgs[0]))), msgs, nil
}

// timeSuppressionCheck times Store.Check on a copy of the pre-filled store
// (the seed stays pristine), samples×10 recipients spread over the n.
func timeSuppressionCheck(sd *seed, box *sealed.Box, tmp string, n, d, samples int) (stage, error) {
	supPath := filepath.Join(tmp, "stage-suppression.db")
	if err := copyFile(filepath.Join(sd.dir, "suppression.db"), supPath, 0o600); err != nil {
		return stage{}, err
	}
	st, err := suppression.Open(suppression.Config{Path: supPath, Box: box}, zerolog.Nop())
	if err != nil {
		return stage{}, err
	}
	defer st.Close()
	lat := make([]time.Duration, 0, samples*10)
	hits := 0
	for k := range samples * 10 {
		i := (k * 7919) % n
		t := time.Now()
		_, sup, err := st.Check(recipient(i, d), listID)
		lat = append(lat, time.Since(t))
		if err != nil {
			return stage{}, err
		}
		if sup {
			hits++
		}
	}
	return mkStage("suppression check", lat, 1, fmt.Sprintf("Store.Check on %d entries, %d of %d hits", sd.entries, hits, len(lat))), nil
}

// timeSign signs up to 1000 of the rendered messages, one goroutine.
func timeSign(signer *dkim.Signer, msgs [][]byte, sig string, samples int) (stage, error) {
	var lat []time.Duration
	for i := range min(samples, 1000) {
		t := time.Now()
		if _, err := signer.Sign(msgs[i%len(msgs)]); err != nil {
			return stage{}, err
		}
		lat = append(lat, time.Since(t))
	}
	return mkStage("sign ("+sig+")", lat, 1, "dkim.Signer.Sign, one goroutine"), nil
}

// timeCommits times grouped commits: Enqueue of the rendered messages (256)
// per fsynced transaction, per message and per group.
func timeCommits(box *sealed.Box, tmp string, msgs [][]byte, d, samples int) ([]stage, error) {
	q, err := queue.Open(queue.Config{Path: filepath.Join(tmp, "stage-queue.db"), Box: box}, zerolog.Nop())
	if err != nil {
		return nil, err
	}
	defer q.Close()
	var lat []time.Duration
	groups := max(4, samples/256)
	for g := range groups {
		batch := make([]queue.NewMessage, len(msgs))
		for j := range batch {
			i := g*len(msgs) + j
			batch[j] = queue.NewMessage{Campaign: "stage", List: listID, Key: strconv.Itoa(i), From: "news@" + fromDomain, To: recipient(i, d), Body: msgs[j]}
		}
		t := time.Now()
		if _, err := q.Enqueue(batch); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t))
	}
	return []stage{
		mkStage("commit (per message)", slices.Clone(lat), len(msgs), fmt.Sprintf("queue.Store.Enqueue of %d, fsynced; per-message share of a group", len(msgs))),
		mkStage("commit (per group of 256)", lat, 1, "one fsynced transaction"),
	}, nil
}

// timeDeliver times delivery over loopback into the sink, one at a time:
// mta.Sender.Deliver with signing, then the SMTP transaction alone (the same
// messages signed beforehand, through a Sender without a signer).
func timeDeliver(signer *dkim.Signer, sk *sink, msgs [][]byte, d, samples int) ([]stage, error) {
	routes := sinkRoutes(d, sk.addr)
	deliveries := min(samples, 1000)
	lat, err := timeDeliveries(routes, signer, msgs, deliveries, d)
	if err != nil {
		return nil, fmt.Errorf("deliver to sink: %w", err)
	}
	out := []stage{mkStage("deliver (sign + SMTP)", lat, 1, "mta.Sender.Deliver into the sink, pooled connection, one at a time")}
	signed := make([][]byte, len(msgs))
	for j, m := range msgs {
		if signed[j], err = signer.Sign(m); err != nil {
			return nil, err
		}
	}
	if lat, err = timeDeliveries(routes, nil, signed, deliveries, d); err != nil {
		return nil, fmt.Errorf("SMTP to sink: %w", err)
	}
	return append(out, mkStage("SMTP", lat, 1, "mta.Sender.Deliver of messages signed beforehand, by a Sender without a signer: the SMTP transaction alone, pooled connection, one at a time")), nil
}

// timeDeliveries times n deliveries of msgs (in turn) to recipients over d
// domains, one at a time, through a Sender with signer (nil: none) and routes.
func timeDeliveries(routes map[string]string, signer *dkim.Signer, msgs [][]byte, n, d int) ([]time.Duration, error) {
	snd, err := mta.New(mta.Config{Hostname: "mail." + fromDomain, Mode: "mx", Routes: routes, ConcurrencyPerDomain: 4}, signer, zerolog.Nop())
	if err != nil {
		return nil, err
	}
	defer snd.Close()
	lat := make([]time.Duration, 0, n)
	for i := range n {
		t := time.Now()
		if err := snd.Deliver(context.Background(), fmt.Sprint("stage", i), "news@"+fromDomain, recipient(i, d), msgs[i%len(msgs)]); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t))
	}
	return lat, nil
}

// pkgBench is one line of `go test -bench` output.
type pkgBench struct {
	Package string  `json:"package"`
	Name    string  `json:"name"`
	NsOp    float64 `json:"ns_per_op"`
	BytesOp float64 `json:"bytes_per_op,omitempty"`
	Allocs  float64 `json:"allocs_per_op,omitempty"`
	Extra   string  `json:"extra,omitempty"`
}

var benchLineRe = regexp.MustCompile(`^(Benchmark\S+)\s+\d+\s+([\d.]+) ns/op(.*)$`)

// runPkgBenches runs the packages' Benchmark functions.
func runPkgBenches(root, benchtime string) ([]pkgBench, error) {
	pkgs := []string{"./templates", "./suppression", "./mta/dkim", "./mta", "./queue", "./campaign"}
	args := append([]string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-benchtime", benchtime}, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	outb, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, outb)
	}
	var res []pkgBench
	pkg := ""
	sc := bufio.NewScanner(bytes.NewReader(outb))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "pkg: ") {
			pkg = strings.TrimPrefix(line, "pkg: github.com/postwarden/postwarden/")
		}
		m := benchLineRe.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		b := pkgBench{Package: pkg, Name: m[1]}
		b.NsOp, _ = strconv.ParseFloat(m[2], 64)
		f := strings.Fields(m[3])
		var extra []string
		for i := 0; i+1 < len(f); i += 2 {
			v, _ := strconv.ParseFloat(f[i], 64)
			switch f[i+1] {
			case "B/op":
				b.BytesOp = v
			case "allocs/op":
				b.Allocs = v
			default:
				extra = append(extra, f[i]+" "+f[i+1])
			}
		}
		b.Extra = strings.Join(extra, " ")
		res = append(res, b)
	}
	return res, nil
}

func loadSet(campDir string) (*templates.Set, error) {
	return templates.Load(filepath.Join(campDir, "bench"), "{{.FirstName}}, a note about {{.Company}}")
}
