// Command queuels measures issue 5's admin target: `queue ls --state deferred`
// on a queue of N messages (default 1,000,000) answers its first page in
// under a second, because it walks the state index instead of the queue.
//
//	go run ./bench/queuels -n 1000000
//
// It builds the queue through the real packages (queue.Enqueue in fsynced
// groups, then a Runner whose Deliverer answers every attempt with a 4xx, so
// every message ends deferred with its attempt recorded), then times the real
// binary's `queue ls --state deferred --limit 50`, `queue ls --campaign C
// --limit 50` and `queue stats` against that data directory, several times
// each (the first is a cold page cache only if -drop-caches could run).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression/sealed"
)

func main() {
	n := flag.Int("n", 1000000, "messages in the queue, all deferred")
	domains := flag.Int("domains", 1000, "recipient domains")
	reps := flag.Int("reps", 5, "timed repetitions of each command")
	keep := flag.String("dir", "", "build the queue here and keep it (default: a temporary directory, removed)")
	flag.Parse()
	if err := run(*n, *domains, *reps, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "queuels:", err)
		os.Exit(1)
	}
}

// tempFail is a 4xx for every attempt: the message is deferred, not bounced.
type tempFail struct{}

func (tempFail) Error() string   { return "451 4.3.0 bench: try again later" }
func (tempFail) Temporary() bool { return true }

type deferAll struct{}

func (deferAll) DeliverVia(_, _ context.Context, _, _, _ string, _ []byte, _, _ string) (string, string, string, string, error) {
	return "", "", "", "", tempFail{}
}

type noSuppressions struct{}

func (noSuppressions) Check(string, string) (string, bool, error)                   { return "", false, nil }
func (noSuppressions) SuppressAddress(string, string, string, string, string) error { return nil }

func run(n, domains, reps int, dir string) error {
	if n < 1 || domains < 1 || reps < 1 {
		return errors.New("-n, -domains and -reps must be positive")
	}
	if dir == "" {
		tmp, err := os.MkdirTemp("", "pw-queuels-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	dataDir := filepath.Join(dir, "var")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	bin := filepath.Join(dir, "postwarden")
	build := exec.Command("go", "build", "-o", bin, "./cmd/postwarden")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build the binary: %w", err)
	}
	cfg := filepath.Join(dir, "postwarden.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`hostname: mail.bench.example
data_dir: %s
public_url: https://bench.example
privacy_url: https://bench.example/privacy
dkim:
  - {domain: bench.example, selector: pw1}
delivery:
  mode: capture
`, dataDir)), 0o600); err != nil {
		return err
	}

	built, err := buildQueue(filepath.Join(dataDir, "queue.db"), filepath.Join(dataDir, "data.key"), n, domains)
	if err != nil {
		return err
	}
	st, err := os.Stat(filepath.Join(dataDir, "queue.db"))
	if err != nil {
		return err
	}
	fmt.Printf("queue: %d messages, all deferred, %d domains; built in %s; queue.db %d MB\n",
		n, domains, built.Round(time.Second), st.Size()>>20)

	for _, args := range [][]string{
		{"queue", "ls", "--state", "deferred", "--limit", "50"},
		{"queue", "ls", "--state", "deferred", "--limit", "50", "--json"},
		{"queue", "ls", "--campaign", "bench-queue", "--limit", "50"},
		{"queue", "stats"},
	} {
		var ms []float64
		lines := 0
		for range reps {
			cmd := exec.Command(bin, append([]string{"-c", cfg}, args...)...)
			start := time.Now()
			out, err := cmd.Output()
			took := time.Since(start)
			if err != nil {
				return fmt.Errorf("postwarden %s: %w", strings.Join(args, " "), err)
			}
			ms = append(ms, float64(took.Microseconds())/1000)
			lines = strings.Count(string(out), "\n")
		}
		slices.Sort(ms)
		fmt.Printf("%-55s median %7.1f ms  min %7.1f  max %7.1f  (%d lines)\n",
			"postwarden "+strings.Join(args, " "), ms[len(ms)/2], ms[0], ms[len(ms)-1], lines)
	}
	return nil
}

// buildQueue enqueues n small messages and defers every one of them through a Runner.
func buildQueue(path, keyFile string, n, domains int) (time.Duration, error) {
	start := time.Now()
	key, err := sealed.LoadOrCreateKey(keyFile)
	if err != nil {
		return 0, err
	}
	box, err := sealed.New(key)
	if err != nil {
		return 0, err
	}
	// A day before the first retry: building a large queue takes minutes,
	// and no message may fall due again before the drain ends.
	q, err := queue.Open(queue.Config{Path: path, Box: box, Retry: []time.Duration{24 * time.Hour}}, zerolog.Nop())
	if err != nil {
		return 0, err
	}
	defer q.Close()
	body := []byte("From: news@bench.example\r\nSubject: bench\r\n\r\n" + strings.Repeat("a line of a deferred message\r\n", 30))
	const group = 5000
	batch := make([]queue.NewMessage, 0, group)
	for i := range n {
		to := fmt.Sprintf("r%07d@d%04d.bench.example", i, i%domains)
		batch = append(batch, queue.NewMessage{Campaign: "bench-queue", List: "news", Key: to, From: "news@bench.example", To: to, Body: body})
		if len(batch) == group || i == n-1 {
			if _, err := q.Enqueue(batch); err != nil {
				return 0, err
			}
			batch = batch[:0]
		}
	}
	fmt.Printf("enqueued %d in %s; deferring every one\n", n, time.Since(start).Round(time.Second))
	r := q.NewRunner(deferAll{}, noSuppressions{}, queue.RunnerConfig{Workers: 64})
	if err := r.Drain(context.Background()); err != nil {
		return 0, fmt.Errorf("defer the queue: %w", err)
	}
	s, err := q.Stats()
	if err != nil {
		return 0, err
	}
	if got := s.ByState[queue.StateDeferred]; got != n {
		return 0, fmt.Errorf("%d of %d messages deferred", got, n)
	}
	return time.Since(start), nil
}
