// Command campaign is postwarden's end-to-end benchmark (issue 5): it
// generates a campaign of N recipients over D domains with a ~20 KB template
// and a suppression store of S entries, routes every domain to a local SMTP
// sink (Postfix's smtp-sink when installed, else an in-process go-smtp sink),
// runs the real binary's `campaign send` (in-process delivery, durable queue
// as shipped) and times it at the sink, beside two references measured in the
// same run: smtp-source into the same sink at the same concurrency (transport
// ceiling) and the DKIM signer over all cores (signing ceiling), with
// OpenSSL's raw RSA-2048 sign rate as the machine's absolute limit.
//
//	go run ./bench/campaign -n 100000 -domains 10 -sig rsa -runs 3 -json out.json
//
// It fails only on errors (a run that leaves messages missing at the sink, a
// tool that breaks), never on slowness: the numbers are for people to read.
package main

import (
	"cmp"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

type options struct {
	N, Domains, Suppressed, Runs int
	Sig                          string
	RSASigner                    string
	JSON                         string
	Sink                         string
	Workers, PerDomain, C        int
	SignSeconds                  int
	PkgBenchtime                 string
	StageSamples                 int
	Cache                        string
	Keep                         bool
	Profile                      string
	Timeout                      time.Duration
}

// report is everything one invocation measured.
type report struct {
	Started        time.Time      `json:"started"`
	Options        options        `json:"options"`
	Machine        machine        `json:"machine"`
	Sink           string         `json:"sink"`
	Complete       string         `json:"completion_detected_by"`
	Seed           seedInfo       `json:"suppression_seed"`
	Fsync          fsyncStat      `json:"fdatasync_4k"`
	Transport      *transportRef  `json:"transport_ref,omitempty"`            // the median round
	SignRSA        *signRef       `json:"sign_ref_rsa2048,omitempty"`         // go-msgauth + Go's crypto/rsa: the signing ceiling
	SignRSAOpenSSL *signRef       `json:"sign_ref_rsa2048_openssl,omitempty"` // go-msgauth + OpenSSL's libcrypto (dkim rsa_signer openssl)
	RSAEngine      string         `json:"rsa_engine_in_binary,omitempty"`     // what the binary's rsa_signer resolves to
	SignEd         *signRef       `json:"sign_ref_ed25519,omitempty"`
	OpenSSL        *opensslRef    `json:"openssl_ref,omitempty"`
	Send           *sendRef       `json:"send_floor,omitempty"`           // reference 3: the MTA alone, nothing rendered or queued (the median round)
	TransportRuns  []transportRef `json:"transport_ref_rounds,omitempty"` // one before each timed run
	SendRuns       []sendRef      `json:"send_floor_rounds,omitempty"`    // one before each timed run
	Runs           []runResult    `json:"runs"`
	Summary        summary        `json:"summary"`
	QueueCLI       []cliTiming    `json:"queue_cli,omitempty"`
	Stages         []stage        `json:"stages_in_process,omitempty"`
	PkgBench       []pkgBench     `json:"package_benchmarks,omitempty"`
	Profile        string         `json:"profile_top,omitempty"`
	Notes          []string       `json:"notes"`
}

type machine struct {
	NProc   int    `json:"nproc"`
	Model   string `json:"cpu_model"`
	Go      string `json:"go"`
	Kernel  string `json:"kernel,omitempty"`
	MemTotl string `json:"mem_total,omitempty"`
}

type seedInfo struct {
	Entries int     `json:"entries"`
	Members int     `json:"recipients_suppressed"`
	BuildS  float64 `json:"build_s,omitempty"`
	Cached  bool    `json:"cached"`
}

type stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

type summary struct {
	Rate             stat    `json:"msgs_per_s"`
	FirstDeliveryMs  stat    `json:"time_to_first_delivery_ms"`
	AllAtSinkS       stat    `json:"all_at_sink_s"`
	PeakAnonMB       stat    `json:"peak_rss_anon_mb"`
	PeakFileMB       stat    `json:"peak_rss_file_mb"`
	PeakRSSMB        stat    `json:"peak_rss_mb"`
	HeapPeakMB       stat    `json:"go_heap_peak_mb"`
	BytesPerRcpt     stat    `json:"queue_bytes_per_recipient"`
	CPUPerMsgUs      stat    `json:"cpu_per_message_us"`
	DiskKBPerMsg     stat    `json:"disk_write_kb_per_message"`
	WritesPerMsg     stat    `json:"write_syscalls_per_message"`
	VsSignCeiling    float64 `json:"ratio_to_sign_ceiling"`
	VsSignOpenSSL    float64 `json:"ratio_to_sign_ceiling_openssl,omitempty"`
	VsTransport      float64 `json:"ratio_to_transport_ref"`
	VsOpenSSL        float64 `json:"ratio_to_openssl_rsa,omitempty"`
	TransportRate    stat    `json:"transport_ref_msgs_per_s"`
	SendRate         stat    `json:"send_floor_msgs_per_s"`
	SendCPUPerMsgUs  stat    `json:"send_floor_cpu_per_message_us"`
	VsSend           float64 `json:"ratio_to_send_floor,omitempty"`
	SendVsTransport  float64 `json:"send_floor_ratio_to_transport_ref,omitempty"`
	CheckShare       float64 `json:"suppression_check_share"`
	CheckShareMethod string  `json:"suppression_check_share_method"`
}

type cliTiming struct {
	Command string  `json:"command"`
	Ms      float64 `json:"ms"`
	Lines   int     `json:"lines"`
	Queue   int     `json:"queue_messages"`
}

func main() {
	var o options
	flag.IntVar(&o.N, "n", 100000, "recipients")
	flag.IntVar(&o.Domains, "domains", 10, "recipient domains (1, 10, 1000)")
	flag.IntVar(&o.Suppressed, "suppressed", 1000000, "suppression store entries (~5 % of recipients are members)")
	flag.IntVar(&o.Runs, "runs", 3, "timed runs (median, min, max)")
	flag.StringVar(&o.Sig, "sig", "rsa", "DKIM key type: rsa (2048) | ed25519")
	flag.StringVar(&o.RSASigner, "rsa-signer", "auto", "the binary's dkim rsa_signer: auto (as shipped) | go | openssl")
	flag.StringVar(&o.JSON, "json", "", "write the report as JSON to this file")
	flag.StringVar(&o.Sink, "sink", "auto", "receiver: auto | smtp-sink | go")
	flag.IntVar(&o.C, "c", 10, "concurrency of the transport reference (smtp-source -s)")
	flag.IntVar(&o.Workers, "workers", 64, "delivery.workers of postwarden (default: the shipped default)")
	flag.IntVar(&o.PerDomain, "per-domain", 10, "delivery.concurrency_per_domain of postwarden")
	flag.IntVar(&o.SignSeconds, "sign-seconds", 3, "seconds for each signing reference and openssl speed")
	flag.StringVar(&o.PkgBenchtime, "pkg-benchtime", "1s", "-benchtime for the packages' Benchmark functions; empty skips them")
	flag.IntVar(&o.StageSamples, "stage-samples", 2000, "samples per in-process stage measurement; 0 skips them")
	flag.StringVar(&o.Cache, "cache", filepath.Join(os.TempDir(), "postwarden-bench-cache"), "where pre-filled suppression stores are kept between invocations; empty: none")
	flag.BoolVar(&o.Keep, "keep", false, "keep the temporary directory")
	flag.StringVar(&o.Profile, "profile", "", "also send the campaign once in-process (the packages wired as campaign send wires them) under a CPU profile written here, and print its top functions")
	flag.DurationVar(&o.Timeout, "timeout", 30*time.Minute, "give up on one run after this long")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...)
}

func run(o options) error {
	if o.N < 1 || o.Domains < 1 || o.Runs < 1 || o.Suppressed < 0 {
		return fmt.Errorf("-n, -domains, -runs must be ≥ 1 and -suppressed ≥ 0")
	}
	if o.Sig != "rsa" && o.Sig != "ed25519" {
		return fmt.Errorf("-sig: rsa or ed25519")
	}
	b := &bench{o: o, rep: &report{Started: time.Now(), Options: o, Machine: describeMachine()}}
	var err error
	if b.root, err = repoRoot(); err != nil {
		return err
	}
	if b.tmp, err = os.MkdirTemp("", "postwarden-bench-"); err != nil {
		return err
	}
	if o.Keep {
		logf("keeping %s", b.tmp)
	} else {
		defer os.RemoveAll(b.tmp)
	}
	if err := b.buildBinary(); err != nil {
		return err
	}
	if b.sk, err = startSink(o.Sink); err != nil {
		return err
	}
	defer b.sk.Close()
	b.describeSink()
	if err := b.prepare(); err != nil {
		return err
	}
	if err := b.references(); err != nil {
		return err
	}
	lastCfg, err := b.timedRuns()
	if err != nil {
		return err
	}
	b.queueCLI(lastCfg)
	if err := b.inProcess(); err != nil {
		return err
	}
	summarize(b.rep)
	printReport(os.Stdout, b.rep)
	return writeJSON(o.JSON, b.rep)
}

func firstLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func summarize(rep *report) {
	get := func(f func(runResult) float64) stat {
		return statOf(len(rep.Runs), func(i int) float64 { return f(rep.Runs[i]) })
	}
	s := &rep.Summary
	s.Rate = get(func(r runResult) float64 { return r.Rate })
	s.FirstDeliveryMs = get(func(r runResult) float64 { return r.FirstDeliveryMs })
	s.AllAtSinkS = get(func(r runResult) float64 { return r.AllDeliveredS })
	s.PeakAnonMB = get(func(r runResult) float64 { return r.PeakAnonMB })
	s.PeakFileMB = get(func(r runResult) float64 { return r.PeakFileMB })
	s.PeakRSSMB = get(func(r runResult) float64 { return r.PeakRSSMB })
	s.HeapPeakMB = get(func(r runResult) float64 { return r.HeapPeakMB })
	s.BytesPerRcpt = get(func(r runResult) float64 { return r.BytesPerRcpt })
	s.CPUPerMsgUs = get(func(r runResult) float64 { return (r.CPUUserS + r.CPUSysS) / float64(r.Expected) * 1e6 })
	s.DiskKBPerMsg = get(func(r runResult) float64 { return float64(r.DiskWriteBytes) / 1024 / float64(r.Expected) })
	s.WritesPerMsg = get(func(r runResult) float64 { return float64(r.WriteSyscalls) / float64(r.Expected) })
	if len(rep.TransportRuns) > 0 {
		rep.Transport = &rep.TransportRuns[medianIndex(len(rep.TransportRuns), func(i int) float64 { return rep.TransportRuns[i].Rate })]
		s.TransportRate = statOf(len(rep.TransportRuns), func(i int) float64 { return rep.TransportRuns[i].Rate })
	}
	if len(rep.SendRuns) > 0 {
		rep.Send = &rep.SendRuns[medianIndex(len(rep.SendRuns), func(i int) float64 { return rep.SendRuns[i].Rate })]
		s.SendRate = statOf(len(rep.SendRuns), func(i int) float64 { return rep.SendRuns[i].Rate })
		s.SendCPUPerMsgUs = statOf(len(rep.SendRuns), func(i int) float64 { return rep.SendRuns[i].CPUPerMsgUs })
	}
	ceil := rep.SignRSA
	if rep.Options.Sig == "ed25519" {
		ceil = rep.SignEd
	}
	if ceil != nil && ceil.Rate > 0 {
		s.VsSignCeiling = s.Rate.Median / ceil.Rate
	}
	if s.TransportRate.Median > 0 {
		s.VsTransport = s.Rate.Median / s.TransportRate.Median
	}
	if r := rep.SignRSAOpenSSL; r != nil && r.Rate > 0 && rep.Options.Sig == "rsa" {
		s.VsSignOpenSSL = s.Rate.Median / r.Rate
	}
	if s.SendRate.Median > 0 {
		s.VsSend = s.Rate.Median / s.SendRate.Median
		if s.TransportRate.Median > 0 {
			s.SendVsTransport = s.SendRate.Median / s.TransportRate.Median
		}
	}
	if rep.OpenSSL != nil && rep.OpenSSL.SignPS > 0 && rep.Options.Sig == "rsa" {
		s.VsOpenSSL = s.Rate.Median / rep.OpenSSL.SignPS
	}
	// The check runs twice per message (at enqueue and before delivery).
	for _, st := range rep.Stages {
		if st.Name == "suppression check" && s.CPUPerMsgUs.Median > 0 {
			s.CheckShare = 2 * st.P50Us / s.CPUPerMsgUs.Median
			s.CheckShareMethod = "2 × in-process Store.Check p50 / the binary's CPU time (user+sys) per delivered message"
		}
	}
	rep.Notes = append(rep.Notes,
		"per-message latency by stage is not instrumented in the binary; the stage rows are measured through the packages in the bench process, one call at a time",
		"queue bytes per recipient: queue.db size after the run / enqueued (bbolt never shrinks the file, so this is its high-water mark)",
		"Go heap: parsed from GODEBUG=gctrace=1 (heap at GC start; live heap after GC)")
}

func printReport(w0 *os.File, rep *report) {
	w := tabwriter.NewWriter(w0, 0, 0, 2, ' ', 0)
	printReferences(w, rep)
	fmt.Fprintln(w)
	printMetrics(w, rep.Summary)
	fmt.Fprintln(w)
	printRatios(w, rep.Options.Sig, rep.Summary)
	printDetails(w, rep)
	fmt.Fprintln(w)
	fmt.Fprintf(w, "completion\t%s\n", rep.Complete)
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "note\t%s\n", n)
	}
	w.Flush()
	if rep.Profile != "" {
		fmt.Fprintf(w0, "\n%s\n", rep.Profile)
	}
}

// printReferences prints the options, the machine and the reference figures
// the run is measured against.
func printReferences(w io.Writer, rep *report) {
	o := rep.Options
	fmt.Fprintf(w, "postwarden end-to-end bench\tN=%d D=%d S=%d sig=%s runs=%d workers=%d per-domain=%d\n", o.N, o.Domains, o.Suppressed, o.Sig, o.Runs, o.Workers, o.PerDomain)
	fmt.Fprintf(w, "machine\t%d × %s, %s\n", rep.Machine.NProc, rep.Machine.Model, rep.Machine.Go)
	fmt.Fprintf(w, "sink\t%s\n", rep.Sink)
	fmt.Fprintf(w, "fdatasync 4 KB\tp50 %.0f µs, p99 %.0f µs (%d)\n", rep.Fsync.P50Usec, rep.Fsync.P99Usec, rep.Fsync.Count)
	if t := rep.Transport; t != nil {
		fmt.Fprintf(w, "transport ref\t%.0f msgs/s%s  (%s)\n", rep.Summary.TransportRate.Median, rounds(rep.Summary.TransportRate, len(rep.TransportRuns)), t.Command)
	}
	if r := rep.SignRSA; r != nil {
		fmt.Fprintf(w, "sign ref RSA-2048 (Go)\t%.0f signs/s over %d goroutines (%d-byte message)\n", r.Rate, r.Goroutines, r.MsgBytes)
	}
	if r := rep.SignRSAOpenSSL; r != nil {
		fmt.Fprintf(w, "sign ref RSA-2048 (OpenSSL)\t%.0f signs/s\n", r.Rate)
	}
	if rep.RSAEngine != "" {
		fmt.Fprintf(w, "binary's RSA signer\t%s\n", rep.RSAEngine)
	}
	if r := rep.SignEd; r != nil {
		fmt.Fprintf(w, "sign ref Ed25519\t%.0f signs/s\n", r.Rate)
	}
	if r := rep.OpenSSL; r != nil {
		fmt.Fprintf(w, "openssl rsa2048\t%.0f sign/s (%s)\n", r.SignPS, r.Command)
	}
	if r := rep.Send; r != nil {
		fmt.Fprintf(w, "send floor (MTA alone)\t%.0f msgs/s%s, %.0f µs CPU/message  (%s %s, %d at once, pre-rendered message, no render/suppression/queue)\n",
			rep.Summary.SendRate.Median, rounds(rep.Summary.SendRate, len(rep.SendRuns)), rep.Summary.SendCPUPerMsgUs.Median, r.Type, r.Engine, r.Concurrency)
	}
}

// printMetrics prints the table of the timed runs' median, min and max.
func printMetrics(w io.Writer, s summary) {
	fmt.Fprintf(w, "metric\tmedian\tmin\tmax\n")
	row := func(name, f string, st stat) {
		fmt.Fprintf(w, "%s\t"+f+"\t"+f+"\t"+f+"\n", name, st.Median, st.Min, st.Max)
	}
	row("msgs/s end to end", "%.0f", s.Rate)
	row("time to first delivery ms", "%.0f", s.FirstDeliveryMs)
	row("all at sink s", "%.2f", s.AllAtSinkS)
	row("peak RSS MB", "%.1f", s.PeakRSSMB)
	row("peak RSS anon MB", "%.1f", s.PeakAnonMB)
	row("peak RSS file MB", "%.1f", s.PeakFileMB)
	row("Go heap peak MB", "%.0f", s.HeapPeakMB)
	row("queue bytes/recipient", "%.0f", s.BytesPerRcpt)
	row("CPU µs/message", "%.0f", s.CPUPerMsgUs)
	row("disk written KB/message", "%.1f", s.DiskKBPerMsg)
	row("write syscalls/message", "%.1f", s.WritesPerMsg)
}

// printRatios prints the end-to-end rate as ratios to the references, those
// that were measured.
func printRatios(w io.Writer, sig string, s summary) {
	fmt.Fprintf(w, "ratio to signing ceiling (%s)\t%.2f\n", sig, s.VsSignCeiling)
	if s.VsSignOpenSSL > 0 {
		fmt.Fprintf(w, "ratio to signing ceiling (rsa, OpenSSL signer)\t%.2f\n", s.VsSignOpenSSL)
	}
	fmt.Fprintf(w, "ratio to transport ref\t%.2f\n", s.VsTransport)
	if s.VsSend > 0 {
		fmt.Fprintf(w, "ratio to send floor\t%.2f  (the floor itself is %.2f of the transport ref)\n", s.VsSend, s.SendVsTransport)
	}
	if s.VsOpenSSL > 0 {
		fmt.Fprintf(w, "ratio to openssl rsa2048\t%.2f\n", s.VsOpenSSL)
	}
	if s.CheckShare > 0 {
		fmt.Fprintf(w, "suppression check share\t%.1f %%\n", 100*s.CheckShare)
	}
}

// printDetails prints the in-process stages, the queue CLI timings and the
// package benchmarks, each table when measured.
func printDetails(w io.Writer, rep *report) {
	if len(rep.Stages) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "stage (in-process)\tp50 µs\tp99 µs\tnote\n")
		for _, st := range rep.Stages {
			fmt.Fprintf(w, "%s\t%.1f\t%.1f\t%s\n", st.Name, st.P50Us, st.P99Us, st.Note)
		}
	}
	if len(rep.QueueCLI) > 0 {
		fmt.Fprintln(w)
		for _, c := range rep.QueueCLI {
			fmt.Fprintf(w, "%s\t%.0f ms\t(queue of %d messages)\n", c.Command, c.Ms, c.Queue)
		}
	}
	if len(rep.PkgBench) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "package benchmark\tns/op\tB/op\tallocs/op\n")
		for _, b := range rep.PkgBench {
			fmt.Fprintf(w, "%s %s\t%.0f\t%.0f\t%.0f\t%s\n", b.Package, b.Name, b.NsOp, b.BytesOp, b.Allocs, b.Extra)
		}
	}
}

func describeMachine() machine {
	m := machine{NProc: runtime.NumCPU(), Go: runtime.Version()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "model name") {
				if i := strings.IndexByte(l, ':'); i >= 0 {
					m.Model = strings.TrimSpace(l[i+1:])
				}
				break
			}
		}
	}
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		m.Kernel = strings.TrimSpace(string(out))
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		m.MemTotl = strings.TrimSpace(strings.TrimPrefix(strings.SplitN(string(data), "\n", 2)[0], "MemTotal:"))
	}
	return m
}

// repoRoot is the module's directory (the bench runs `go build` there).
func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("run the bench inside the postwarden module")
	}
	return filepath.Dir(mod), nil
}

// statOf is the median, min and max of n values.
func statOf(n int, v func(int) float64) stat {
	vs := make([]float64, n)
	for i := range vs {
		vs[i] = v(i)
	}
	slices.Sort(vs)
	m := vs[n/2]
	if n%2 == 0 {
		m = (vs[n/2-1] + vs[n/2]) / 2
	}
	return stat{Median: m, Min: vs[0], Max: vs[n-1]}
}

// medianIndex is the index of the median of n values (the lower middle when n is even).
func medianIndex(n int, v func(int) float64) int {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(v(a), v(b)) })
	return idx[(n-1)/2]
}

// rounds describes a reference measured once per round: "" for one round.
func rounds(st stat, n int) string {
	if n < 2 {
		return ""
	}
	return fmt.Sprintf(" (median of %d rounds, %.0f–%.0f)", n, st.Min, st.Max)
}
