package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// runResult is one timed `postwarden campaign send`.
type runResult struct {
	Run             int     `json:"run"`
	Expected        int     `json:"expected_at_sink"`
	AtSink          int64   `json:"at_sink"`
	Enqueued        int     `json:"enqueued"`
	Suppressed      int     `json:"suppressed_at_enqueue"`
	Delivered       int     `json:"delivered"`
	FirstDeliveryMs float64 `json:"time_to_first_delivery_ms"`
	EnqueueDoneMs   float64 `json:"enqueue_done_ms,omitempty"` // last progress record (rows == N), when printed
	AllDeliveredS   float64 `json:"all_at_sink_s"`             // start → sink has every allowed message
	ExitS           float64 `json:"process_exit_s"`
	Rate            float64 `json:"msgs_per_s"` // at sink / all_at_sink_s
	PeakRSSMB       float64 `json:"peak_rss_mb"`
	PeakAnonMB      float64 `json:"peak_rss_anon_mb"`
	PeakFileMB      float64 `json:"peak_rss_file_mb"`
	HeapPeakMB      float64 `json:"go_heap_peak_mb"`     // gctrace: max heap size at a GC's start
	HeapLiveMaxMB   float64 `json:"go_heap_live_max_mb"` // gctrace: max live heap after a GC
	GCs             int     `json:"gcs"`
	QueueDBBytes    int64   `json:"queue_db_bytes"`
	BytesPerRcpt    float64 `json:"queue_bytes_per_recipient"`
	CPUUserS        float64 `json:"cpu_user_s"`
	CPUSysS         float64 `json:"cpu_sys_s"`
	// From /proc/PID/io at the last poll: bytes the process sent to storage
	// (bbolt's page writes at each commit) and its write-type syscalls
	// (pwrite64 of pages and the SMTP client's socket writes).
	DiskWriteBytes int64 `json:"disk_write_bytes"`
	WriteSyscalls  int64 `json:"write_syscalls"`
}

var (
	gcHeapRe = regexp.MustCompile(`(\d+)->(\d+)->(\d+) MB`)
)

// runCampaign runs the binary once in a fresh data dir and times it at the sink.
func runCampaign(bin, cfgPath, campFile, dataDir string, sk *sink, expected int, n int, timeout time.Duration) (runResult, error) {
	res := runResult{Expected: expected}
	base := sk.Count()
	first := sk.when(base + 1)
	all := sk.when(base + int64(expected))

	// --offline: no preflight DNS lookups in the timed run (the bench's
	// domains publish nothing, and a lookup's wait is not delivery).
	cmd := exec.Command(bin, "-c", cfgPath, "--json", "campaign", "send", "--offline", campFile)
	cmd.Env = append(os.Environ(), "GODEBUG=gctrace=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return res, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return res, err
	}
	var wg sync.WaitGroup
	var final json.RawMessage
	var tail []string
	var enqDone time.Time
	wg.Go(func() { final, enqDone = readProgress(stdout, n) })
	wg.Go(func() { tail = readGCTrace(stderr, &res) })
	exited := make(chan error, 1)
	go func() { wg.Wait(); exited <- cmd.Wait() }()
	w, err := watchRun(cmd, exited, first, all, &res, timeout)
	if err != nil {
		return res, fmt.Errorf("%w; sink has %d of %d", err, sk.Count()-base, expected)
	}
	res.AtSink = sk.Count() - base
	if cmd.ProcessState != nil {
		res.CPUUserS, res.CPUSysS = cmd.ProcessState.UserTime().Seconds(), cmd.ProcessState.SystemTime().Seconds()
	}
	if w.waitErr != nil {
		return res, fmt.Errorf("postwarden campaign send: %v\n%s", w.waitErr, strings.Join(tail, "\n"))
	}
	if final == nil {
		return res, fmt.Errorf("postwarden campaign send printed no summary\n%s", strings.Join(tail, "\n"))
	}
	if err := readSummary(final, &res); err != nil {
		return res, err
	}
	res.ExitS = w.exitAt.Sub(start).Seconds()
	if !w.firstSeen.IsZero() {
		res.FirstDeliveryMs = float64(w.firstSeen.Sub(start).Microseconds()) / 1e3
	}
	if !enqDone.IsZero() {
		res.EnqueueDoneMs = float64(enqDone.Sub(start).Microseconds()) / 1e3
	}
	if fi, err := os.Stat(filepath.Join(dataDir, "queue.db")); err == nil {
		res.QueueDBBytes = fi.Size()
		if res.Enqueued > 0 {
			res.BytesPerRcpt = float64(fi.Size()) / float64(res.Enqueued)
		}
	}
	if err := checkDelivered(res, expected, !w.allSeen.IsZero(), final); err != nil {
		return res, err
	}
	res.AllDeliveredS = w.allSeen.Sub(start).Seconds()
	res.Rate = float64(expected) / res.AllDeliveredS
	return res, nil
}

// readProgress reads the binary's JSON lines on stdout to the end: final is
// the line with the summary, enqDone when the progress reached n rows.
func readProgress(stdout io.Reader, n int) (final json.RawMessage, enqDone time.Time) {
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var l struct {
			Progress *struct{ Rows int } `json:"progress"`
			Summary  json.RawMessage     `json:"summary"`
		}
		if json.Unmarshal(line, &l) == nil {
			if l.Progress != nil && l.Progress.Rows >= n {
				enqDone = time.Now()
			}
			if l.Summary != nil {
				final = append(json.RawMessage(nil), line...)
			}
		}
	}
	return final, enqDone
}

// readGCTrace reads stderr to the end, counting gctrace lines into res (GCs
// and heap sizes) and returning the last 40 other lines, for errors.
func readGCTrace(stderr io.Reader, res *runResult) (tail []string) {
	sc := bufio.NewScanner(stderr)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "gc ") {
			if heap, live, ok := parseGCLine(line); ok {
				res.GCs++
				res.HeapPeakMB = max(res.HeapPeakMB, heap)
				res.HeapLiveMaxMB = max(res.HeapLiveMaxMB, live)
			}
			continue
		}
		tail = append(tail, line)
		if len(tail) > 40 {
			tail = tail[1:]
		}
	}
	return tail
}

// parseGCLine reads a gctrace line's "A->B->C MB": the heap at the GC's start
// (A) and the live heap after it (C).
func parseGCLine(line string) (heapMB, liveMB float64, ok bool) {
	m := gcHeapRe.FindStringSubmatch(line)
	if m == nil {
		return 0, 0, false
	}
	a, _ := strconv.ParseFloat(m[1], 64)
	c, _ := strconv.ParseFloat(m[3], 64)
	return a, c, true
}

// watched is what watchRun saw of one run.
type watched struct {
	firstSeen, allSeen time.Time // the sink's first and last expected message; zero if not seen
	exitAt             time.Time
	waitErr            error // the process's exit
}

// watchRun polls the process's memory and I/O every 50 ms until it exits,
// noting when the sink saw the first and the last message; past timeout it
// kills the process and returns an error.
func watchRun(cmd *exec.Cmd, exited <-chan error, first, all <-chan time.Time, res *runResult, timeout time.Duration) (watched, error) {
	var w watched
	pid := cmd.Process.Pid
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	limit := time.After(timeout)
loop:
	for {
		select {
		case t := <-first:
			w.firstSeen = t
		case t := <-all:
			w.allSeen = t
		case <-tick.C:
			pollRSS(pid, res)
			pollIO(pid, res)
		case w.waitErr = <-exited:
			break loop
		case <-limit:
			_ = cmd.Process.Kill()
			<-exited
			return w, fmt.Errorf("timed out after %s", timeout)
		}
	}
	w.exitAt = time.Now()
	// The sink may count the last messages a moment after the client got 250.
	if w.allSeen.IsZero() {
		select {
		case w.allSeen = <-all:
		case <-time.After(5 * time.Second):
		}
	}
	if w.firstSeen.IsZero() {
		select {
		case w.firstSeen = <-first:
		default:
		}
	}
	return w, nil
}

// readSummary puts the enqueued, suppressed and delivered counts of the
// binary's final JSON record into res.
func readSummary(final json.RawMessage, res *runResult) error {
	var rec struct {
		Summary struct {
			Enqueued   int            `json:"enqueued"`
			Suppressed map[string]int `json:"suppressed"`
		} `json:"summary"`
		Delivery map[string]int `json:"delivery"`
	}
	if err := json.Unmarshal(final, &rec); err != nil {
		return fmt.Errorf("summary: %w: %s", err, final)
	}
	res.Enqueued = rec.Summary.Enqueued
	for _, v := range rec.Summary.Suppressed {
		res.Suppressed += v
	}
	res.Delivered = rec.Delivery["delivered"]
	return nil
}

// checkDelivered fails a run whose sink did not see every expected message
// (allSeen: the last one arrived), or whose summary counts another number.
func checkDelivered(res runResult, expected int, allSeen bool, final json.RawMessage) error {
	if !allSeen || res.AtSink < int64(expected) {
		return fmt.Errorf("sink has %d of %d expected messages (summary: enqueued %d, delivered %d)\n%s",
			res.AtSink, expected, res.Enqueued, res.Delivered, final)
	}
	if res.Enqueued != expected || res.Delivered != expected {
		return fmt.Errorf("expected %d enqueued and delivered, summary says enqueued %d, delivered %d: %s", expected, res.Enqueued, res.Delivered, final)
	}
	return nil
}

// pollRSS reads VmRSS, RssAnon and RssFile of pid and keeps the peaks.
func pollRSS(pid int, r *runResult) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		kb, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		mb := kb / 1024
		switch f[0] {
		case "VmRSS:":
			r.PeakRSSMB = max(r.PeakRSSMB, mb)
		case "RssAnon:":
			r.PeakAnonMB = max(r.PeakAnonMB, mb)
		case "RssFile:":
			r.PeakFileMB = max(r.PeakFileMB, mb)
		}
	}
}

// pollIO reads write_bytes and syscw of pid; they only grow, so the last
// read before exit is the run's total (less the final 50 ms).
func pollIO(pid int, r *runResult) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "write_bytes":
			r.DiskWriteBytes = max(r.DiskWriteBytes, n)
		case "syscw":
			r.WriteSyscalls = max(r.WriteSyscalls, n)
		}
	}
}

// timeCmd runs the binary with args and returns its wall time and output.
func timeCmd(bin string, args ...string) (time.Duration, []byte, error) {
	start := time.Now()
	out, err := exec.Command(bin, args...).CombinedOutput()
	return time.Since(start), out, err
}
