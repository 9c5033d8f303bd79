package main

// Prometheus metrics on metrics_listen (off unless set). The queue's depth and
// the campaign event totals are read from the store at scrape time; delivery
// attempts are counted as they happen, through queue.RunnerConfig.Observer.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/queue"
)

// maxDomainLabels caps the domain label's values; other domains count as "other".
const maxDomainLabels = 50

// metrics holds postwarden's collectors and is the runner's queue.Observer.
type metrics struct {
	reg        *prometheus.Registry
	deliveries *prometheus.CounterVec
	latency    *prometheus.HistogramVec

	mu      sync.Mutex
	domains map[string]bool // domains with their own label value
}

// newMetrics registers the collectors. seed names the domains that get their
// own label first (the biggest in the queue at start); after that, the first
// domains seen take the free places, up to maxDomainLabels.
func newMetrics(q *queue.Store, seed []string) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postwarden_deliveries_total",
			Help: "Delivery attempts by outcome (delivered, deferred, bounced, throttled, expired, cancelled) and recipient domain (top 50, the rest \"other\").",
		}, []string{"outcome", "domain"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "postwarden_delivery_attempt_seconds",
			Help:    "Time spent handing one message to the remote MTA, by outcome.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"outcome"}),
		domains: map[string]bool{},
	}
	for _, d := range seed {
		if len(m.domains) >= maxDomainLabels {
			break
		}
		m.domains[d] = true
	}
	m.reg.MustRegister(m.deliveries, m.latency, &queueCollector{q: q},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// domainLabel returns d, or "other" once maxDomainLabels domains have a label.
func (m *metrics) domainLabel(d string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.domains[d] {
		return d
	}
	if len(m.domains) < maxDomainLabels {
		m.domains[d] = true
		return d
	}
	return "other"
}

// Attempt implements queue.Observer.
func (m *metrics) Attempt(domain, outcome string, d time.Duration) {
	m.deliveries.WithLabelValues(outcome, m.domainLabel(domain)).Inc()
	if d > 0 {
		m.latency.WithLabelValues(outcome).Observe(d.Seconds())
	}
}

// queueCollector reads the queue's counters at scrape time.
type queueCollector struct{ q *queue.Store }

var (
	descDepth = prometheus.NewDesc("postwarden_queue_messages",
		"Messages in the queue by state.", []string{"state"}, nil)
	descOldest = prometheus.NewDesc("postwarden_queue_oldest_pending_seconds",
		"Age of the oldest pending message (0 if none).", nil, nil)
	descSuspended = prometheus.NewDesc("postwarden_queue_suspensions",
		"Active delivery suspensions.", nil, nil)
	descRate = prometheus.NewDesc("postwarden_delivered_per_minute",
		"Messages delivered per minute over the window (1m, 5m, 15m).", []string{"window"}, nil)
	descBounces = prometheus.NewDesc("postwarden_bounces_total",
		"Bounces counted for campaigns, by kind (hard, soft).", []string{"kind"}, nil)
	descComplaints = prometheus.NewDesc("postwarden_complaints_total",
		"Spam complaints (feedback reports) counted for campaigns.", nil, nil)
	descUnsubscribes = prometheus.NewDesc("postwarden_unsubscribes_total",
		"Unsubscribes counted for campaigns.", nil, nil)
	descScrapeErr = prometheus.NewDesc("postwarden_queue_scrape_error",
		"1 if reading the queue for this scrape failed.", nil, nil)
)

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDepth, descOldest, descSuspended, descRate, descBounces, descComplaints, descUnsubscribes, descScrapeErr} {
		ch <- d
	}
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	failed := 0.0
	if st, err := c.q.Stats(); err != nil {
		failed = 1
	} else {
		for _, s := range queue.States {
			ch <- prometheus.MustNewConstMetric(descDepth, prometheus.GaugeValue, float64(st.ByState[s]), string(s))
		}
		age := 0.0
		if !st.Oldest.IsZero() {
			age = time.Since(st.Oldest).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(descOldest, prometheus.GaugeValue, age)
		windows := make([]string, 0, len(st.Rates))
		for w := range st.Rates {
			windows = append(windows, w)
		}
		sort.Strings(windows)
		for _, w := range windows {
			ch <- prometheus.MustNewConstMetric(descRate, prometheus.GaugeValue, st.Rates[w], w)
		}
	}
	if sus, err := c.q.Suspensions(); err == nil {
		ch <- prometheus.MustNewConstMetric(descSuspended, prometheus.GaugeValue, float64(len(sus)))
	}
	totals, err := eventTotals(c.q)
	if err != nil {
		failed = 1
	} else {
		ch <- prometheus.MustNewConstMetric(descBounces, prometheus.CounterValue, float64(totals["bounced_hard"]), "hard")
		ch <- prometheus.MustNewConstMetric(descBounces, prometheus.CounterValue, float64(totals["bounced_soft"]), "soft")
		ch <- prometheus.MustNewConstMetric(descComplaints, prometheus.CounterValue, float64(totals["complained"]))
		ch <- prometheus.MustNewConstMetric(descUnsubscribes, prometheus.CounterValue, float64(totals["unsubscribed"]))
	}
	ch <- prometheus.MustNewConstMetric(descScrapeErr, prometheus.GaugeValue, failed)
}

// eventTotals sums the campaign event counters over every campaign with a record.
func eventTotals(q *queue.Store) (map[string]int, error) {
	ids, err := q.Campaigns()
	if err != nil {
		return nil, err
	}
	totals := map[string]int{}
	for _, id := range ids {
		ev, err := q.CampaignEvents(id)
		if err != nil {
			return nil, err
		}
		for k, n := range ev {
			totals[k] += n
		}
	}
	return totals, nil
}

// metricsServer serves /metrics on addr until Close.
type metricsServer struct {
	srv  *http.Server
	addr string
}

// listenMetrics starts the Prometheus endpoint.
func listenMetrics(addr string, m *metrics, log zerolog.Logger) (*metricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics_listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Timeout: 10 * time.Second}))
	ms := &metricsServer{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second},
		addr: ln.Addr().String(),
	}
	go func() {
		if err := ms.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("metrics server stopped")
		}
	}()
	log.Info().Str("metrics", ms.addr).Msg("serving Prometheus metrics")
	return ms, nil
}

// Close stops the endpoint.
func (ms *metricsServer) Close(ctx context.Context) error { return ms.srv.Shutdown(ctx) }

// startMetrics starts metrics when cfg asks for them, with extra collectors;
// it returns the runner's observer (nil when off) and a stop function.
func startMetrics(addr string, q *queue.Store, log zerolog.Logger, extra ...prometheus.Collector) (queue.Observer, func(context.Context), error) {
	if addr == "" {
		return nil, func(context.Context) {}, nil
	}
	var seed []string
	if st, err := q.Stats(); err == nil {
		seed = topDomains(st.ByDomain, maxDomainLabels)
	}
	m := newMetrics(q, seed)
	m.reg.MustRegister(extra...)
	ms, err := listenMetrics(addr, m, log)
	if err != nil {
		return nil, nil, err
	}
	return m, func(ctx context.Context) { _ = ms.Close(ctx) }, nil
}
