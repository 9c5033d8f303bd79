package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/mta/bounce"
	"github.com/postwarden/postwarden/mta/inbound"
	"github.com/postwarden/postwarden/mta/inbound/handover"
	"github.com/postwarden/postwarden/mta/verp"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// --- bounce ---

func (c *cli) bounceCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "bounce", Short: "Inspect bounce messages and complaint reports"}
	var table bool
	parse := &cobra.Command{
		Use:   "parse FILE…",
		Short: "Print, as JSON Lines, what each bounce or ARF report says about its recipients (changes nothing)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.bounceParse(args, table)
		},
	}
	parse.Flags().BoolVar(&table, "table", false, "print a table instead of JSON Lines")
	cmd.AddCommand(parse)
	return cmd
}

// bounceLine is one recipient found in one file.
type bounceLine struct {
	File         string `json:"file"`
	Recipient    string `json:"recipient"`
	Status       string `json:"status"`
	Action       string `json:"action"`
	Kind         string `json:"kind"`
	Reason       string `json:"reason"`   // bounce.Reason…: why; only user/host unknown, moved and null MX suppress
	Provider     string `json:"provider"` // bounce.ProviderOf the reporting or answering host, "" when not recognised
	FeedbackType string `json:"feedback_type,omitempty"`
}

// bounceParse parses files locally: no store, no daemon. It prints JSON
// Lines, one object per recipient found (a file with none gets a note on
// stderr). A file that cannot be read is reported after the others and
// makes the exit status 2.
func (c *cli) bounceParse(files []string, table bool) error {
	var tw *tabwriter.Writer
	if table && !c.jsonOut {
		tw = tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "FILE\tRECIPIENT\tSTATUS\tACTION\tKIND\tREASON\tPROVIDER")
	}
	var failed []string
	for _, name := range files {
		reps, err := parseBounceFile(name)
		if err != nil {
			fmt.Fprintf(c.stderr, "postwarden: %v\n", err)
			failed = append(failed, name)
			continue
		}
		found := 0
		for _, r := range reps {
			if r.Recipient == "" {
				continue
			}
			found++
			l := bounceLine{File: name, Recipient: maskIf(c.reveal, r.Recipient), Status: r.Status,
				Action: r.Action, Kind: r.Kind, Reason: r.Reason, Provider: r.Provider, FeedbackType: r.FeedbackType}
			if tw == nil {
				b, _ := json.Marshal(l)
				fmt.Fprintf(c.stdout, "%s\n", b)
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.File, dash(l.Recipient), dash(l.Status), dash(l.Action), l.Kind, dash(l.Reason), dash(l.Provider))
		}
		if found == 0 {
			fmt.Fprintf(c.stderr, "%s: no recipient found (kind %s)\n", name, reps[0].Kind)
		}
	}
	if tw != nil {
		tw.Flush()
	}
	if len(failed) > 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("%d of %d files could not be read", len(failed), len(files))}
	}
	return nil
}

// parseBounceFile reads and parses one file.
func parseBounceFile(name string) ([]bounce.Report, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("bounce parse: %w", err)
	}
	defer f.Close()
	reps, err := bounce.Parse(f)
	if err != nil {
		return nil, fmt.Errorf("bounce parse %s: %w", name, err)
	}
	return reps, nil
}

// dash shows "-" for an empty table cell.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// --- inbound listener ---

// verpKey derives the VERP MAC key from the token key: HMAC-SHA256(tokenKey, "postwarden verp").
func verpKey(tokenKey []byte) []byte {
	m := hmac.New(sha256.New, tokenKey)
	m.Write([]byte("postwarden verp"))
	return m.Sum(nil)
}

// startInbound starts the SMTP listener for bounces, complaints and mailto
// unsubscribes on smtp_listen; nil, nil when smtp_listen is empty. On a
// cluster node with a bounce domain it first starts the report hand-over
// (with or without a listener here: other nodes' listeners hand this
// node's reports to it).
func startInbound(cfg *configs.Server, e *env, log zerolog.Logger) (*inbound.Server, error) {
	clustered := cfg.Cluster != nil && e.verp != nil
	if cfg.SMTPListen == "" && !clustered {
		return nil, nil
	}
	deps := inbound.Deps{
		VERP:       e.verp,
		Mailto:     e.tokens,
		Bounces:    queueBounces{e.queue},
		Suppressor: auditedSuppressor{e, "inbound"},
		Unsubscriber: mailUnsubscriber{e, unsubscribe.NewRecorder(unsubscribe.Config{
			Suppressor: e.suppressions(), Events: e.queue, Timings: e.queue, History: listsAdapter{subs: e.subs, w: e.consent()}}, log)},
		Events: e.queue,
	}
	if clustered {
		h, err := e.startHandover(deps, log.With().Str("component", "handover").Logger())
		if err != nil {
			return nil, err
		}
		deps.Handover = h
	}
	if cfg.SMTPListen == "" {
		return nil, nil
	}
	srv, err := inbound.Start(inbound.Config{
		Listen:           cfg.SMTPListen,
		Domain:           cfg.BounceDomain,
		Hostname:         cfg.Hostname,
		MaxConns:         cfg.Inbound.MaxConnections,
		MaxConnsPerIP:    cfg.Inbound.MaxConnectionsPerIP,
		MaxBytesInFlight: cfg.Inbound.MaxBytesInFlight,
		MaxMessageBytes:  cfg.Inbound.MaxMessageBytes,
		ReadTimeout:      cfg.Inbound.ReadTimeout,
	}, deps, log)
	if err != nil {
		return nil, fmt.Errorf("smtp_listen %s: %w", cfg.SMTPListen, err)
	}
	return srv, nil
}

// startHandover starts this node's end of the report hand-over: reports
// taken by another node's listener about this node's messages are applied
// here through inbound.Local, the listener's own path (record, suppression
// through the replica, campaign events, audit); stopped with the workers,
// before the stores close.
func (e *env) startHandover(deps inbound.Deps, log zerolog.Logger) (*handover.Handover, error) {
	local, err := inbound.NewLocal(deps, log)
	if err != nil {
		return nil, err
	}
	js, done, err := e.clusterJS(context.Background())
	if err != nil {
		return nil, err
	}
	cc := e.cfg.Cluster
	h, err := handover.New(js, e.box, handover.Config{Tag: verp.NodeTag(cc.Node), Replicas: cc.Replicas,
		Dir: e.reportsOutbox()}, local, log)
	if err != nil {
		done()
		return nil, fmt.Errorf("cluster: %w", err)
	}
	h.Start(context.Background())
	e.handover = h
	e.closers = append(e.closers, func() { h.Close(); done() })
	return h, nil
}

// reportsOutbox is where a cluster node keeps the reports it could not
// hand over yet (handover.Config.Dir).
func (e *env) reportsOutbox() string { return filepath.Join(e.cfg.DataDir, "reports-outbox") }

// queueBounces records reports on queued messages.
type queueBounces struct{ q *queue.Store }

func (a queueBounces) Bounce(id string, r bounce.Report) (to, list, campaign string, err error) {
	m, err := a.q.RecordBounce(id, queue.BounceRecord{Recipient: r.Recipient, Status: r.Status, Action: r.Action,
		Diagnostic: r.Diagnostic, RemoteMTA: r.RemoteMTA, Kind: r.Kind, Reason: r.Reason})
	if errors.Is(err, queue.ErrNotFound) {
		return "", "", "", errors.Join(inbound.ErrUnknownMessage, err)
	}
	if err != nil {
		return "", "", "", err
	}
	return m.To, m.List, m.Campaign, nil
}

func (a queueBounces) Recipient(id string) (string, error) {
	m, err := a.q.Get(id)
	if err == nil && m.Erased {
		err = fmt.Errorf("message %s: %w", id, queue.ErrErased)
	}
	if errors.Is(err, queue.ErrNotFound) {
		return "", errors.Join(inbound.ErrUnknownMessage, err)
	}
	return m.To, err
}

// mailUnsubscriber records a mailto unsubscribe through the same Recorder
// rules as the one-click POST: audited as the recipient's own action
// ("inbound"), the claim's list suppressed (reason unsubscribed), the consent
// history told, the campaign counting the person once; a repeat adds nothing.
type mailUnsubscriber struct {
	e   *env
	rec *unsubscribe.Recorder
}

func (u mailUnsubscriber) Unsubscribe(c unsubscribe.Claim, source string) error {
	audit := func(detail string) error {
		return (httpAuditor{u.e}).action("inbound", "suppress.add", c.Address, detail)
	}
	_, err := u.rec.Record(c, suppression.Entry{Target: c.Address, List: c.List, Reason: suppression.Unsubscribed, Source: source}, audit)
	return err
}

// handoverCollector exposes the report hand-over of a cluster node: reports
// kept here until the stream takes them, and those handed, applied, failed
// (each retried) and dropped (unopenable) since start.
type handoverCollector struct{ h *handover.Handover }

var (
	descHandoverOutbox = prometheus.NewDesc("postwarden_cluster_reports_outbox",
		"Bounce and complaint reports about other nodes' messages kept on this node until the PW_REPORTS stream stores them.", nil, nil)
	descHandoverTotal = prometheus.NewDesc("postwarden_cluster_reports_total",
		"Reports about messages of another node: handed (to the stream), kept (in the outbox first), applied (here, for another node's listener), failed (Apply failed, retried), dropped (could not be opened).", []string{"event"}, nil)
)

func (c handoverCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descHandoverOutbox
	ch <- descHandoverTotal
}

func (c handoverCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.h.Stats()
	ch <- prometheus.MustNewConstMetric(descHandoverOutbox, prometheus.GaugeValue, float64(st.Outbox))
	for ev, n := range map[string]int64{"handed": st.Handed, "kept": st.Kept, "applied": st.Applied, "failed": st.Failed, "dropped": st.Dropped} {
		ch <- prometheus.MustNewConstMetric(descHandoverTotal, prometheus.CounterValue, float64(n), ev)
	}
}
