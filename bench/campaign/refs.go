package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta"
	"github.com/postwarden/postwarden/mta/dkim"
)

// transportRef is reference 1: messages of 20 KB into the sink at
// concurrency c, timed at the sink.
type transportRef struct {
	Tool    string  `json:"tool"`
	Command string  `json:"command"`
	C       int     `json:"concurrency"`
	Msgs    int     `json:"messages"`
	Seconds float64 `json:"seconds"`
	Rate    float64 `json:"msgs_per_s"`
}

func runTransportRef(sk *sink, m, c int) (transportRef, error) {
	base := sk.Count()
	done := sk.when(base + int64(m))
	start := time.Now()
	ref := transportRef{C: c, Msgs: m}
	if path, err := exec.LookPath("smtp-source"); err == nil {
		args := []string{"-d", "-s", strconv.Itoa(c), "-m", strconv.Itoa(m), "-l", "20480", sk.addr}
		ref.Tool, ref.Command = "postfix smtp-source", "smtp-source "+strings.Join(args, " ")
		out, err := exec.Command(path, args...).CombinedOutput()
		if err != nil {
			return ref, fmt.Errorf("smtp-source: %v: %s", err, out)
		}
	} else {
		ref.Tool, ref.Command = "go-smtp client (smtp-source not installed)", fmt.Sprintf("in-process, %d connections, MAIL/RCPT/DATA per message", c)
		if err := goSource(sk.addr, m, c); err != nil {
			return ref, err
		}
	}
	select {
	case end := <-done:
		ref.Seconds = end.Sub(start).Seconds()
	case <-time.After(30 * time.Second):
		return ref, fmt.Errorf("transport reference: sink counted %d of %d", sk.Count()-base, m)
	}
	ref.Rate = float64(m) / ref.Seconds
	return ref, nil
}

// goSource sends m 20 KB messages over c go-smtp client connections.
func goSource(addr string, m, c int) error {
	body := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXY\r\n"), 20480/64)
	msg := append([]byte("From: a@source.example\r\nTo: b@sink.example\r\nSubject: ref\r\n\r\n"), body...)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, c)
	for range c {
		wg.Go(func() {
			cl, err := smtp.Dial(addr)
			if err != nil {
				errs <- err
				return
			}
			defer cl.Close()
			if err := cl.Hello("source.example"); err != nil {
				errs <- err
				return
			}
			for next.Add(1) <= int64(m) {
				if err := cl.SendMail("a@source.example", []string{"b@sink.example"}, bytes.NewReader(msg)); err != nil {
					errs <- err
					return
				}
			}
			_ = cl.Quit()
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// signRef is reference 2: the project's DKIM signer (go-msgauth) over all
// cores, one goroutine per core, on the rendered bench message.
type signRef struct {
	Type       string  `json:"type"`
	Engine     string  `json:"engine"` // dkim rsa_signer: go or openssl
	Goroutines int     `json:"goroutines"`
	MsgBytes   int     `json:"message_bytes"`
	Seconds    float64 `json:"seconds"`
	Rate       float64 `json:"signs_per_s"`
}

func runSignRef(keyFile, keyType, engine string, msg []byte, dur time.Duration) (signRef, error) {
	k, err := benchKey(keyFile, keyType, engine)
	if err != nil {
		return signRef{}, err
	}
	s := dkim.NewSigner([]*dkim.Key{k})
	if _, err := s.Sign(msg); err != nil {
		return signRef{}, err
	}
	g := runtime.GOMAXPROCS(0)
	var n atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(dur)
	for range g {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				if _, err := s.Sign(msg); err != nil {
					panic(err)
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	return signRef{Type: keyType, Engine: k.Engine(), Goroutines: g, MsgBytes: len(msg), Seconds: secs, Rate: float64(n.Load()) / secs}, nil
}

// benchKey loads (or creates) the bench's DKIM key and sets its RSA engine
// the way the binary's dkim[].rsa_signer does.
func benchKey(keyFile, keyType, engine string) (*dkim.Key, error) {
	k, _, err := dkim.LoadOrCreate(keyFile, fromDomain, selector, keyType)
	if err != nil {
		return nil, err
	}
	if err := k.UseEngine(engine); err != nil {
		return nil, err
	}
	return k, nil
}

// opensslRef is `openssl speed -seconds S -multi nproc rsa2048`.
type opensslRef struct {
	Command string  `json:"command"`
	Version string  `json:"version"`
	SignPS  float64 `json:"rsa2048_sign_per_s"`
}

func runOpenSSL(secs int) (opensslRef, error) {
	path, err := exec.LookPath("openssl")
	if err != nil {
		return opensslRef{}, fmt.Errorf("openssl not installed")
	}
	args := []string{"speed", "-seconds", strconv.Itoa(secs), "-multi", strconv.Itoa(runtime.NumCPU()), "rsa2048"}
	ref := opensslRef{Command: "openssl " + strings.Join(args, " ")}
	if v, err := exec.Command(path, "version").Output(); err == nil {
		ref.Version = strings.TrimSpace(string(v))
	}
	out, err := exec.Command(path, args...).Output()
	if err != nil {
		return ref, fmt.Errorf("%s: %v", ref.Command, err)
	}
	// "rsa 2048 bits 0.000174s 0.000011s   5740.0  92345.0"
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 7 && f[0] == "rsa" && f[1] == "2048" && f[2] == "bits" {
			if v, err := strconv.ParseFloat(f[5], 64); err == nil {
				ref.SignPS = v
			}
		}
	}
	if ref.SignPS == 0 {
		return ref, fmt.Errorf("%s: no rsa 2048 line in output", ref.Command)
	}
	return ref, nil
}

// fsyncStat is write+fdatasync of 4 KB, repeated, in the data directory.
type fsyncStat struct {
	Dir     string  `json:"dir"`
	Count   int     `json:"count"`
	P50Usec float64 `json:"p50_us"`
	P99Usec float64 `json:"p99_us"`
	MaxUsec float64 `json:"max_us"`
}

func measureFsync(dir string, n int) (fsyncStat, error) {
	f, err := os.CreateTemp(dir, "fsync-probe-*")
	if err != nil {
		return fsyncStat{}, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := bytes.Repeat([]byte{'x'}, 4096)
	lat := make([]time.Duration, 0, n)
	for i := range n {
		t := time.Now()
		if _, err := f.WriteAt(buf, int64(i%64)*4096); err != nil {
			return fsyncStat{}, err
		}
		if err := fdatasync(f); err != nil {
			return fsyncStat{}, err
		}
		lat = append(lat, time.Since(t))
	}
	slices.Sort(lat)
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	return fsyncStat{Dir: filepath.Clean(dir), Count: n, P50Usec: us(pct(lat, 50)), P99Usec: us(pct(lat, 99)), MaxUsec: us(lat[len(lat)-1])}, nil
}

// pct is the p-th percentile of sorted durations (nearest rank).
func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// sendRef is reference 3, the send floor: postwarden's MTA alone (mta.Sender:
// go-msgauth signing with the run's key and go-smtp over pooled
// connections) delivering the pre-rendered bench message into the same sink,
// at the binary's delivery concurrency. Nothing is rendered, checked or
// queued, so it bounds what the whole pipeline can reach on this box with
// the libraries the design card fixes; postwarden's rate over it is what
// render, suppression and the durable queue cost.
type sendRef struct {
	Type        string  `json:"type"`
	Engine      string  `json:"engine"`
	Concurrency int     `json:"concurrency"`
	Msgs        int     `json:"messages"`
	Seconds     float64 `json:"seconds"`
	Rate        float64 `json:"msgs_per_s"`
	CPUPerMsgUs float64 `json:"cpu_per_message_us"`
}

func runSendRef(sk *sink, keyFile, keyType, engine string, msg []byte, m, d, concurrency, perDomain int) (sendRef, error) {
	k, err := benchKey(keyFile, keyType, engine)
	if err != nil {
		return sendRef{}, err
	}
	s, err := mta.New(mta.Config{Hostname: "mail." + fromDomain, Mode: mta.ModeMX, Routes: sinkRoutes(d, sk.addr),
		ConcurrencyPerDomain: perDomain, TLSPolicy: map[string]string{"default": mta.TLSNone}},
		dkim.NewSigner([]*dkim.Key{k}), zerolog.Nop())
	if err != nil {
		return sendRef{}, err
	}
	defer s.Close()
	ref := sendRef{Type: keyType, Engine: k.Engine(), Concurrency: concurrency, Msgs: m}
	base := sk.Count()
	done := sk.when(base + int64(m))
	var next atomic.Int64
	var failed atomic.Bool // one failure stops the others: the reference is void
	var wg sync.WaitGroup
	errs := make(chan error, concurrency)
	cpu0 := processCPU()
	start := time.Now()
	for range concurrency {
		wg.Go(func() {
			for !failed.Load() {
				i := next.Add(1)
				if i > int64(m) {
					return
				}
				if err := s.Deliver(context.Background(), fmt.Sprintf("ref%d", i), "bounce@"+fromDomain, recipient(int(i), d), msg); err != nil {
					failed.Store(true)
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return ref, fmt.Errorf("send floor: %w", err)
	}
	select {
	case end := <-done:
		ref.Seconds = end.Sub(start).Seconds()
	case <-time.After(30 * time.Second):
		return ref, fmt.Errorf("send floor: sink counted %d of %d", sk.Count()-base, m)
	}
	ref.CPUPerMsgUs = (processCPU() - cpu0).Seconds() / float64(m) * 1e6
	ref.Rate = float64(m) / ref.Seconds
	return ref, nil
}
