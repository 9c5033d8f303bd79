package main

// Provider-aware delivery (issue 12): the provider table and the adaptive
// engine handed to the MTA, the live state `providers ls` shows when a
// daemon runs (op "providers-live"), and the adaptive Prometheus series.

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/mta/adaptive"
	"github.com/postwarden/postwarden/mta/providers"
	"github.com/postwarden/postwarden/mta/warmup"
)

// shaping builds what mx delivery is shaped by: the provider table, and the
// adaptive engine with delivery.adaptive (kept in e for the op and metrics).
// Other modes get neither.
func (e *env) shaping() (*providers.Table, *adaptive.Engine, error) {
	if e.cfg.Delivery.Mode != configs.ModeMX {
		return nil, nil, nil
	}
	t, err := providerTable(e.cfg)
	if err != nil {
		return nil, nil, err
	}
	if !e.cfg.Delivery.Adaptive {
		return t, nil, nil
	}
	table := e.cfg.Delivery.ProviderTable
	if table == nil {
		if table, err = configs.BuiltinProviders(); err != nil {
			return nil, nil, err
		}
	}
	// the reply rules of configs/providers.yaml, delivery.providers' first
	eng, err := adaptive.New(table.AdaptiveRules(), adaptive.Config{}, e.log.With().Str("component", "adaptive").Logger())
	if err != nil {
		return nil, nil, err
	}
	e.adaptive = eng
	return t, eng, nil
}

// liveRow is one line of the live part of `providers ls`: a (source,
// provider) pair the daemon has sent to or judged.
type liveRow struct {
	Live                  bool      `json:"live"` // tells these lines from the table's in --json
	Source                string    `json:"source"`
	Provider              string    `json:"provider"`
	Open                  int       `json:"open_connections"`
	Connections           int       `json:"connections"` // in force, after adaptive factors
	Rate                  string    `json:"rate"`
	MessagesPerConnection int       `json:"messages_per_connection"`
	RateFactor            float64   `json:"rate_factor"`
	ConnFactor            float64   `json:"connections_factor"`
	SuspendedUntil        time.Time `json:"suspended_until,omitzero"`
	RecoverAt             time.Time `json:"recover_at,omitzero"`
	LastChange            string    `json:"last_change,omitempty"`
	LastChangeAt          time.Time `json:"last_change_at,omitzero"`
	Why                   string    `json:"why,omitempty"`
	Reply                 string    `json:"reply,omitempty"`
}

// opProvidersLive reports the daemon's shaping state by pair; outside the
// daemon (no sender) it reports nothing.
func opProvidersLive(_ context.Context, e *env, _ request, o *out) error {
	if e.sender == nil {
		return nil
	}
	t, err := providerTable(e.cfg)
	if err != nil {
		return err
	}
	rows := map[string]*liveRow{}
	row := func(source, provider string) *liveRow {
		k := source + "\x00" + provider
		if rows[k] == nil {
			rows[k] = &liveRow{Live: true, Source: source, Provider: provider, RateFactor: 1, ConnFactor: 1}
		}
		return rows[k]
	}
	for p, n := range e.sender.ProviderConns() {
		row(p.Source, p.Provider).Open = n
	}
	if e.adaptive != nil {
		for _, st := range e.adaptive.State() {
			r := row(st.Source, st.Provider)
			r.RateFactor, r.ConnFactor, r.SuspendedUntil, r.RecoverAt = st.RateFactor, st.ConnFactor, st.SuspendedUntil, st.RecoverAt
			if st.Last.Kind != 0 {
				r.LastChange, r.LastChangeAt, r.Why, r.Reply = st.Last.Kind.String(), st.Last.Time, st.Last.Note, st.Last.Reply
			}
		}
	}
	keys := make([]string, 0, len(rows))
	for k := range rows {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		r := rows[k]
		if r.Provider != adaptive.AllProviders {
			p, ok := t.Lookup(r.Provider)
			if !ok {
				p = providers.Provider{Name: r.Provider, Site: true}
			}
			l := t.Shaping("", p)
			if e.adaptive != nil {
				al, _ := e.adaptive.Limits(r.Source, r.Provider, adaptive.Limits{Rate: l.Rate, Connections: l.Connections, MessagesPerConnection: l.MessagesPerConnection})
				l = providers.Limits{Rate: al.Rate, Connections: al.Connections, MessagesPerConnection: al.MessagesPerConnection}
			}
			r.Connections, r.Rate, r.MessagesPerConnection = l.Connections, providers.FormatRate(l.Rate), l.MessagesPerConnection
		}
		if err := o.Record(r); err != nil {
			return err
		}
	}
	for _, st := range e.sender.WarmupState() {
		if err := o.Record(warmupRow{Warmup: true, SourceState: st}); err != nil {
			return err
		}
	}
	return nil
}

// warmupRow is a source's warm-up in the live part of `providers ls`.
type warmupRow struct {
	Warmup bool `json:"warmup"` // tells these lines from the others in --json
	warmup.SourceState
}

// providersLive prints the daemon's live shaping state after the table;
// without a daemon it prints nothing (the table is all there is).
func (c *cli) providersLive(ctx context.Context, cfg *configs.Server) error {
	hc := daemonClient(cfg.AdminSocket)
	if hc == nil {
		return nil
	}
	var rows []liveRow
	var warm []warmupRow
	code, err := callDaemon(ctx, hc, "providers-live", request{Args: json.RawMessage("{}")}, func(l line) error {
		if l.Record == nil {
			return nil
		}
		if c.jsonOut {
			_, err := fmt.Fprintf(c.stdout, "%s\n", l.Record)
			return err
		}
		var w warmupRow
		if err := json.Unmarshal(l.Record, &w); err != nil {
			return err
		}
		if w.Warmup {
			warm = append(warm, w)
			return nil
		}
		var r liveRow
		if err := json.Unmarshal(l.Record, &r); err != nil {
			return err
		}
		rows = append(rows, r)
		return nil
	})
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("providers ls: the daemon's live state: exit %d", code)
	}
	if c.jsonOut {
		return nil
	}
	if err := c.printWarmup(warm); err != nil {
		return err
	}
	fmt.Fprintln(c.stdout, "\nlive (daemon):")
	if len(rows) == 0 {
		fmt.Fprintln(c.stdout, "  no provider sent to or judged yet")
		return nil
	}
	w := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "SOURCE\tPROVIDER\tOPEN\tCONN\tRATE\tMSG/CONN\tFACTORS\tSUSPENDED UNTIL\tLAST CHANGE\tWHY")
	for _, r := range rows {
		src := r.Source
		if src == "" {
			src = "(default)"
		}
		until, last := "-", "-"
		if !r.SuspendedUntil.IsZero() {
			until = r.SuspendedUntil.UTC().Format(time.RFC3339)
		}
		if r.LastChange != "" {
			last = r.LastChange + " " + r.LastChangeAt.UTC().Format(time.RFC3339)
		}
		why := r.Why
		if r.Reply != "" {
			why += " (" + oneLine(r.Reply, 120) + ")"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\trate×%.2f conn×%.2f\t%s\t%s\t%s\n", src, r.Provider, r.Open,
			countOrDash(r.Connections), orDash(r.Rate), countOrDash(r.MessagesPerConnection), r.RateFactor, r.ConnFactor,
			until, last, orDash(why))
	}
	return w.Flush()
}

// printWarmup prints each scheduled source's warm-up day and the room left
// today per provider it sent to (any other provider has the whole cap).
func (c *cli) printWarmup(rows []warmupRow) error {
	if len(rows) == 0 {
		return nil
	}
	fmt.Fprintln(c.stdout, "\nwarm-up (daemon):")
	w := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "SOURCE\tDAY\tCAP/PROVIDER TODAY\tROOM TODAY")
	for _, r := range rows {
		day, capText := "not used yet (day 1 at first use)", fmt.Sprint(r.Cap)
		if r.Day > 0 {
			day = fmt.Sprintf("%d of %d", r.Day, r.Days)
		}
		if r.Finished {
			day, capText = fmt.Sprintf("%d (schedule of %d days over)", r.Day, r.Days), "none"
		}
		provs := make([]string, 0, len(r.Used))
		for p := range r.Used {
			provs = append(provs, p)
		}
		sort.Strings(provs)
		room := "every provider: " + capText
		if len(provs) > 0 && !r.Finished {
			room = ""
			for _, p := range provs {
				room += fmt.Sprintf("%s: %d (sent %d), ", p, r.Room(p), r.Used[p])
			}
			room += "others: " + capText
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.Source, day, capText, room)
	}
	return w.Flush()
}

// adaptiveCollector exports the adaptive engine's changes and factors at scrape time.
type adaptiveCollector struct{ eng *adaptive.Engine }

var (
	adaptiveChangesDesc = prometheus.NewDesc("postwarden_adaptive_changes_total",
		"Adaptive throttling changes by sending source, provider and kind (throttle, suspend_pair, suspend_source, recover, resume_pair, resume_source).",
		[]string{"source", "provider", "kind"}, nil)
	adaptiveFactorDesc = prometheus.NewDesc("postwarden_adaptive_factor",
		"Current adaptive factor of a (source, provider) pair's limit (rate or connections); 1 is unthrottled.",
		[]string{"source", "provider", "limit"}, nil)
	adaptiveSuspendedDesc = prometheus.NewDesc("postwarden_adaptive_suspended",
		"1 while the source is suspended for the provider (\"*\": every provider).",
		[]string{"source", "provider"}, nil)
)

// Describe implements prometheus.Collector.
func (c adaptiveCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- adaptiveChangesDesc
	ch <- adaptiveFactorDesc
	ch <- adaptiveSuspendedDesc
}

// Collect implements prometheus.Collector.
func (c adaptiveCollector) Collect(ch chan<- prometheus.Metric) {
	for k, n := range c.eng.Changes() {
		ch <- prometheus.MustNewConstMetric(adaptiveChangesDesc, prometheus.CounterValue, float64(n), k.Source, k.Provider, k.Kind.String())
	}
	now := time.Now()
	for _, st := range c.eng.State() {
		if st.Provider != adaptive.AllProviders {
			ch <- prometheus.MustNewConstMetric(adaptiveFactorDesc, prometheus.GaugeValue, st.RateFactor, st.Source, st.Provider, "rate")
			ch <- prometheus.MustNewConstMetric(adaptiveFactorDesc, prometheus.GaugeValue, st.ConnFactor, st.Source, st.Provider, "connections")
		}
		v := 0.0
		if st.SuspendedUntil.After(now) {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(adaptiveSuspendedDesc, prometheus.GaugeValue, v, st.Source, st.Provider)
	}
}

// collectors returns the extra Prometheus collectors of the daemon's delivery.
func (e *env) collectors() []prometheus.Collector {
	var cs []prometheus.Collector
	if e.adaptive != nil {
		cs = append(cs, adaptiveCollector{eng: e.adaptive})
	}
	if e.rep != nil {
		cs = append(cs, replicaCollector{rep: e.rep})
	}
	if e.handover != nil {
		cs = append(cs, handoverCollector{h: e.handover})
	}
	return cs
}
