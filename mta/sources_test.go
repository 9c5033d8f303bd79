package mta

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/adaptive"
	"github.com/postwarden/postwarden/mta/mtatest"
	"github.com/postwarden/postwarden/mta/providers"
	"github.com/postwarden/postwarden/mta/warmup"
)

// twoSources are the egress sources of the tests: two loopback addresses of
// this host, each with its own EHLO name.
var twoSources = []Source{
	{Name: "ip2", Address: "127.0.0.2", EHLO: "mta2.example.com"},
	{Name: "ip3", Address: "127.0.0.3", EHLO: "mta3.example.com"},
}

// clientsOf counts the sink's messages by client address and EHLO name.
func clientsOf(sink *mtatest.Sink) map[string]int {
	out := map[string]int{}
	for _, m := range sink.Messages() {
		out[m.Client+" "+m.Helo]++
	}
	return out
}

// TestSourcesWarmup: two sources on 127.0.0.2 and 127.0.0.3. The source
// the pool puts first for Microsoft has a warm-up cap of 10 on day 1: of 25
// messages to 25 Microsoft 365 tenants, exactly 10 leave from it (its
// address, its EHLO name) and 15 from the other. A pool of that source alone
// holds the rest until the next UTC day (no attempt), when day 2's cap lets
// them through.
func TestSourcesWarmup(t *testing.T) {
	z, domains := tenants(25)
	dnsAddr := startMXZone(t, z)
	sink, err := mtatest.Start(mtatest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })

	pool := []PoolMember{{Source: "ip2"}, {Source: "ip3"}}
	first := order(pool, "microsoft")[0]
	other := map[string]string{"ip2": "ip3", "ip3": "ip2"}[first]
	addr := map[string]string{"ip2": "127.0.0.2 mta2.example.com", "ip3": "127.0.0.3 mta3.example.com"}
	tracker := warmup.New(warmup.Schedule{first: {10, 20}})
	s := shapedSender(t, Config{DNSServer: dnsAddr, SMTPPort: sink.Port(), Providers: microsoftTable(t, 0, 0),
		Sources: twoSources, Pools: map[string][]PoolMember{"default": pool, "solo": {{Source: first}}}, Warmup: tracker})
	day1 := time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return day1 }

	used := map[string]int{}
	for i, d := range domains {
		src, prov, _, _, err := s.DeliverVia(context.Background(), context.Background(), fmt.Sprintf("w%d", i),
			"news@sender.example", "ana@"+d, []byte("Subject: hi\r\n\r\nhello\r\n"), "", "")
		if err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		if prov != "microsoft" {
			t.Fatalf("%s: provider %q, want microsoft", d, prov)
		}
		used[src]++
	}
	if used[first] != 10 || used[other] != 15 {
		t.Fatalf("sources used %v, want %s: 10 (its day-1 cap), %s: 15", used, first, other)
	}
	if got := clientsOf(sink); got[addr[first]] != 10 || got[addr[other]] != 15 || len(got) != 2 {
		t.Fatalf("sink saw %v, want 10 from %q and 15 from %q", got, addr[first], addr[other])
	}

	// The solo pool has no room left today: held until the next UTC day, unsent.
	before := sink.Count()
	_, _, _, _, err = s.DeliverVia(context.Background(), context.Background(), "solo1", "news@sender.example",
		"bob@"+domains[0], []byte("Subject: hi\r\n\r\nhello\r\n"), "solo", "")
	var derr *DeliveryError
	if !errors.As(err, &derr) || derr.Stage != StageHold || !derr.Temporary() {
		t.Fatalf("over the cap: %v, want a temporary hold", err)
	}
	if want := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC); !derr.RetryAt().Equal(want) {
		t.Fatalf("held until %v, want %v", derr.RetryAt(), want)
	}
	if sink.Count() != before {
		t.Fatal("a held message reached the sink")
	}
	st := s.WarmupState()
	if len(st) != 1 || st[0].Day != 1 || st[0].Cap != 10 || st[0].Room("microsoft") != 0 {
		t.Fatalf("warm-up state %+v, want day 1, cap 10, no room", st)
	}

	// Day 2: a cap of 20.
	s.now = func() time.Time { return day1.Add(24 * time.Hour) }
	for i := range 20 {
		src, _, _, _, err := s.DeliverVia(context.Background(), context.Background(), fmt.Sprintf("d2-%d", i),
			"news@sender.example", fmt.Sprintf("c%d@%s", i, domains[i%len(domains)]), []byte("Subject: hi\r\n\r\nhello\r\n"), "solo", "")
		if err != nil || src != first {
			t.Fatalf("day 2 message %d: source %q, %v", i, src, err)
		}
	}
	if _, _, _, _, err := s.DeliverVia(context.Background(), context.Background(), "d2-over", "news@sender.example",
		"dan@"+domains[0], []byte("Subject: hi\r\n\r\nhello\r\n"), "solo", ""); !errors.As(err, &derr) || derr.Stage != StageHold {
		t.Fatalf("21st message of day 2: %v, want a hold", err)
	}
}

// TestSourceSticksForRetries: a message that went out from one source keeps
// it (the pool's order is only for its first attempt), and a failed attempt
// gives its warm-up room back.
func TestSourceSticksForRetries(t *testing.T) {
	z, domains := tenants(1)
	dnsAddr := startMXZone(t, z)
	fail := true
	sink, err := mtatest.Start(mtatest.Options{Rcpt: func(string, int) error {
		if fail {
			return errors.New("451 try later")
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	pool := []PoolMember{{Source: "ip2"}, {Source: "ip3"}}
	second := order(pool, "microsoft")[1]
	tracker := warmup.New(warmup.Schedule{second: {1}})
	s := shapedSender(t, Config{DNSServer: dnsAddr, SMTPPort: sink.Port(), Providers: microsoftTable(t, 0, 0),
		Sources: twoSources, Pools: map[string][]PoolMember{"default": pool}, Warmup: tracker})
	for range 3 { // each failure returns the one message of room
		src, _, _, _, err := s.DeliverVia(context.Background(), context.Background(), "r1", "news@sender.example",
			"ana@"+domains[0], []byte("Subject: hi\r\n\r\nhello\r\n"), "", second)
		if err == nil || src != second {
			t.Fatalf("attempt through %s: source %q, err %v; want the sticky source and a deferral", second, src, err)
		}
	}
	fail = false
	src, _, _, _, err := s.DeliverVia(context.Background(), context.Background(), "r1", "news@sender.example",
		"ana@"+domains[0], []byte("Subject: hi\r\n\r\nhello\r\n"), "", second)
	if err != nil || src != second {
		t.Fatalf("retry: source %q, %v; want %s", src, err, second)
	}
	if m := sink.Messages(); len(m) != 1 || m[0].Helo != map[string]string{"ip2": "mta2.example.com", "ip3": "mta3.example.com"}[second] {
		t.Fatalf("sink saw %+v", m)
	}
}

// TestPoolWeights: over many providers, each source is first for a share
// of them proportional to its weight, and a provider's first source is stable.
func TestPoolWeights(t *testing.T) {
	pool := []PoolMember{{Source: "a", Weight: 3}, {Source: "b", Weight: 1}}
	firsts := map[string]int{}
	const n = 8000
	for i := range n {
		p := fmt.Sprintf("site:mx%d.example.net", i)
		o := order(pool, p)
		if o2 := order(pool, p); o2[0] != o[0] {
			t.Fatalf("%s: first source %s then %s", p, o[0], o2[0])
		}
		firsts[o[0]]++
	}
	if share := float64(firsts["a"]) / n; share < 0.72 || share > 0.78 {
		t.Fatalf("weight 3 of 4 is first for %.3f of providers, want about 0.75", share)
	}
}

// TestSourceConfigErrors: what New refuses, naming the source or pool.
func TestSourceConfigErrors(t *testing.T) {
	for name, cfg := range map[string]Config{
		"bad address":  {Sources: []Source{{Name: "a", Address: "mta1.example.com"}}},
		"twice":        {Sources: []Source{{Name: "a", Address: "127.0.0.2"}, {Name: "a", Address: "127.0.0.3"}}},
		"pool unknown": {Sources: []Source{{Name: "a", Address: "127.0.0.2"}}, Pools: map[string][]PoolMember{"p": {{Source: "b"}}}},
		"no sources":   {Pools: map[string][]PoolMember{"p": {{Source: "b"}}}},
		"warmup":       {Sources: []Source{{Name: "a", Address: "127.0.0.2"}}, Warmup: warmup.New(warmup.Schedule{"z": {1}})},
	} {
		cfg.Mode, cfg.Hostname = ModeMX, "out.example.com"
		if _, err := New(cfg, nil, zerolog.Nop()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestMXLookupsCached: with the providers' resolver, 10 messages to each of
// 3 domains ask the DNS server for MX records 3 times, not 30; the provider
// still shapes them, and a null MX still bounces at once (RFC 7505).
func TestMXLookupsCached(t *testing.T) {
	z, domains := tenants(3)
	z.set("nomail.example", ".")
	dnsAddr := startMXZone(t, z)
	sink, err := mtatest.Start(mtatest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	tab := microsoftTable(t, 2, 0)
	r, err := providers.NewResolver(providers.ResolverConfig{Server: dnsAddr}, tab, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	s := shapedSender(t, Config{DNSServer: dnsAddr, SMTPPort: sink.Port(), Providers: tab, MXResolver: r})
	for _, d := range domains {
		for i := range 10 {
			_, prov, _, _, err := s.DeliverVia(context.Background(), context.Background(), "c", "news@sender.example",
				fmt.Sprintf("u%d@%s", i, d), []byte("Subject: hi\r\n\r\nhello\r\n"), "", "")
			if err != nil || prov != "microsoft" {
				t.Fatalf("%s: provider %q, %v", d, prov, err)
			}
		}
	}
	if n := z.mxQ.Load(); n != 3 {
		t.Errorf("%d MX queries for 30 messages to 3 domains, want 3", n)
	}
	err = s.Deliver(context.Background(), "n", "news@sender.example", "ana@nomail.example", []byte("Subject: hi\r\n\r\nhello\r\n"))
	var derr *DeliveryError
	if !errors.As(err, &derr) || derr.Temporary() || derr.Enhanced != "5.1.10" {
		t.Errorf("null MX: %v, want a permanent 5.1.10", err)
	}
	if sink.Count() != 30 {
		t.Errorf("sink has %d messages, want 30", sink.Count())
	}
}

// TestSuspendedSourceHandsOver: a 451 4.7.650 on the source the pool puts
// first for Microsoft suspends that (source, microsoft) pair under the
// shipped rule, and the pool's other source carries the rest (retries that
// stuck to the suspended source included). When both
// are suspended, messages wait without an attempt until the first suspension
// ends.
func TestSuspendedSourceHandsOver(t *testing.T) {
	z, domains := tenants(10)
	dnsAddr := startMXZone(t, z)
	pool := []PoolMember{{Source: "ip2"}, {Source: "ip3"}}
	first := order(pool, "microsoft")[0]
	firstIP := map[string]string{"ip2": "127.0.0.2", "ip3": "127.0.0.3"}[first]
	sink, err := mtatest.Start(mtatest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	clock := &fakeClock{t: time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)}
	eng, err := adaptive.New(adaptive.DefaultRules(), adaptive.Config{Now: clock.now}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	s := shapedSender(t, Config{DNSServer: dnsAddr, SMTPPort: sink.Port(), Providers: microsoftTable(t, 0, 0),
		Sources: twoSources, Pools: map[string][]PoolMember{"default": pool}, Adaptive: eng})
	s.now = clock.now

	// The first source is suspended for Microsoft, as a 451 4.7.650 on it does.
	eng.Observe(first, "microsoft", 451, "4.7.650", "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.")
	for i, d := range domains {
		src, _, _, _, err := s.DeliverVia(context.Background(), context.Background(), fmt.Sprintf("h%d", i),
			"news@sender.example", "ana@"+d, []byte("Subject: hi\r\n\r\nhello\r\n"), "", first)
		if err != nil || src == first {
			t.Fatalf("%s: source %q, %v; want the pool's other source", d, src, err)
		}
	}
	for _, m := range sink.Messages() {
		if m.Client == firstIP {
			t.Fatalf("a message left from the suspended source %s", first)
		}
	}
	// Both suspended: held until the earlier end, no attempt.
	other := map[string]string{"ip2": "ip3", "ip3": "ip2"}[first]
	clock.add(5 * time.Minute)
	eng.Observe(other, "microsoft", 451, "4.7.650", "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.")
	before := sink.Count()
	_, _, _, _, err = s.DeliverVia(context.Background(), context.Background(), "h-held", "news@sender.example",
		"bob@"+domains[0], []byte("Subject: hi\r\n\r\nhello\r\n"), "", "")
	var derr *DeliveryError
	want := time.Date(2026, 12, 6, 9, 15, 0, 0, time.UTC) // the first suspension's end
	if !errors.As(err, &derr) || derr.Stage != StageHold || !derr.RetryAt().Equal(want) {
		t.Fatalf("whole pool suspended: %v, want a hold until %v", err, want)
	}
	if sink.Count() != before {
		t.Fatal("a message was sent while the whole pool was suspended")
	}
}
