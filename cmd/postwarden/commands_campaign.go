package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/postwarden/postwarden/campaign"
	"github.com/postwarden/postwarden/mta/preflight"
)

func (c *cli) campaignCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "campaign", Short: "Validate and send campaigns"}
	var validateOffline bool
	validate := &cobra.Command{
		Use:   "validate FILE",
		Short: "Check config, campaign, templates and every recipient row, then the preflight (DKIM, SPF, DMARC, public_url, size, links) without sending",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.campaignValidate(cmd.Context(), args[0], validateOffline)
		},
	}
	validate.Flags().BoolVar(&validateOffline, "offline", false, "skip the preflight's DNS checks (DKIM record, SPF, DMARC, link domains); keep the local ones")
	var noWait, skipInvalid, force, sendOffline bool
	var testTo string
	var testRow int
	send := &cobra.Command{
		Use:   "send FILE",
		Short: "Render, check and enqueue a campaign, then deliver it (or hand it to the daemon)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a := campaignSendArgs{File: absPath(args[0]), NoWait: noWait, SkipInvalid: skipInvalid, Force: force, TestTo: testTo, TestRow: testRow}
			if testTo != "" {
				return c.call(cmd.Context(), "campaign.send", a, c.printTestSend)
			}
			ran, err := c.sendPreflight(cmd.Context(), a.File, sendOffline, force)
			if err != nil {
				return err
			}
			a.Preflighted = ran
			return c.call(cmd.Context(), "campaign.send", a, c.printSendResult)
		},
	}
	send.Flags().BoolVar(&noWait, "no-wait", false, "only enqueue; do not deliver in this process")
	send.Flags().StringVar(&testTo, "test-to", "", "send one rendered row (--test-row, default 1) to this address only: not counted, not recorded as the campaign")
	send.Flags().IntVar(&testRow, "test-row", 1, "with --test-to: the data row to render")
	send.Flags().BoolVar(&force, "force", false, "send despite failed preflight checks, or a re-run whose subject or templates changed since the campaign's earlier run")
	send.Flags().BoolVar(&sendOffline, "offline", false, "skip the preflight's DNS checks (the local ones still run)")
	send.Flags().BoolVar(&skipInvalid, "skip-invalid", false, "accept invalid rows (never sent): exit 0 instead of 1")
	status := &cobra.Command{
		Use:   "status ID",
		Short: "Enqueued, delivered, deferred, bounced, complained, unsubscribed and suppressed counts of a campaign",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.call(cmd.Context(), "campaign.status", campaignStatusArgs{ID: args[0]}, c.printCampaignStatus)
		},
	}
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the campaigns: list, last run, state (sending, paused, finished) and counts",
		Example: `  postwarden campaign ls
  postwarden --json campaign ls`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			t := c.table("ID", "LIST", "STARTED", "STATE", "ENQUEUED", "DELIVERED", "PENDING", "BOUNCED")
			defer t.Flush()
			return c.call(cmd.Context(), "campaign.ls", nil, func(raw json.RawMessage) error {
				var v campaignListView
				if err := json.Unmarshal(raw, &v); err != nil {
					return err
				}
				started := "-"
				if !v.Started.IsZero() {
					started = v.Started.Local().Format(time.DateTime)
				}
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\n", v.ID, v.List, started, v.State, v.Enqueued, v.Delivered, v.Pending, v.Bounced)
				return nil
			})
		},
	}
	var pv campaignPreviewArgs
	preview := &cobra.Command{
		Use:   "preview FILE --row N [--html]",
		Short: "Render one recipient's message (data row N) as send would, with its real links; sends nothing (addresses masked unless --reveal)",
		Example: `  postwarden campaign preview campaigns/spring.yaml --row 1
  postwarden campaign preview campaigns/spring.yaml --row 12 --html > row12.html`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if pv.Row < 1 {
				return &usageError{cmd, errors.New("--row N is required (1 = the first row after the header)")}
			}
			a := pv
			a.File = absPath(args[0])
			return c.call(cmd.Context(), "campaign.preview", a, func(raw json.RawMessage) error {
				var v previewView
				if err := json.Unmarshal(raw, &v); err != nil {
					return err
				}
				if v.Skip != "" {
					fmt.Fprintf(c.stderr, "note: send would leave row %d out (%s)\n", v.Row, v.Skip)
				}
				fmt.Fprint(c.stdout, v.Message)
				return nil
			})
		},
	}
	preview.Flags().IntVar(&pv.Row, "row", 0, "the data row to render (1 = the first after the header)")
	preview.Flags().BoolVar(&pv.HTML, "html", false, "print only the HTML part (to open in a browser)")
	var pause campaignPauseArgs
	pauseCmd := &cobra.Command{
		Use:   "pause ID --reason R",
		Short: "Pause a campaign: no new attempts, its messages kept, until `campaign resume` (audited)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(pause.Reason) == "" {
				return errors.New("campaign pause: --reason is required")
			}
			pause.ID = args[0]
			return c.call(cmd.Context(), "campaign.pause", pause, c.printFields)
		},
	}
	pauseCmd.Flags().StringVar(&pause.Reason, "reason", "", "why (logged and audited)")
	var resume campaignPauseArgs
	resumeCmd := c.argCommand("resume ID", "Continue a paused campaign; its brakes then judge only what follows (audited)", "campaign.resume",
		func(id string) any { resume.ID = id; return resume })
	resumeCmd.Flags().StringVar(&resume.Reason, "reason", "", "why (optional; audited)")
	var reportOut string
	reportCmd := &cobra.Command{
		Use:   "report ID [--out FILE.html]",
		Short: "Write a campaign's compliance report for a data-protection officer: one self-contained HTML page, no address on it (audited)",
		Long: `Write a campaign's compliance report: who ran it and when, the campaign and
config file hashes, the legal basis and the LIA's hash and headings, the
exclusions and privacy URL, every count (rows, invalid, suppressed, skipped,
enqueued, delivered, deferred, bounced by reason and kind, complained,
unsubscribed, expired, cancelled), charts (deliveries over time, bounces by
reason, outcomes by provider, unsubscribes over time and their time to
suppression), brakes, pauses, suspensions and the campaign's audit entries.

The page is one HTML file with inline SVG charts: no script, nothing fetched.
It names no person. It goes to --out, by default report-ID.html in the
current folder; --out - writes it to stdout. With --json the report's data
is printed instead and no page is written. Producing it is audited
(campaign.report). Through the daemon when one runs, else from the stores.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out := reportOut
			if out == "" {
				out = "report-" + args[0] + ".html"
			}
			return c.call(cmd.Context(), "campaign.report", campaignReportArgs{ID: args[0]}, func(raw json.RawMessage) error {
				return c.writeReport(raw, out)
			})
		},
	}
	reportCmd.Flags().StringVar(&reportOut, "out", "", "the HTML file to write (default report-ID.html; - for stdout)")
	cmd.AddCommand(validate, send, status, ls, preview, pauseCmd, resumeCmd, reportCmd)
	return cmd
}

// campaignValidate needs no store: it runs in this process even beside a daemon.
// After the campaign's own checks it runs the preflight; a FAIL there is a
// failed validation (exit 2) too.
func (c *cli) campaignValidate(ctx context.Context, file string, offline bool) error {
	cfg, err := c.loadConfig()
	if err != nil {
		return err
	}
	// Validation creates nothing and reads no store, but a data_dir that is
	// not there is a mistyped config more often than not: say so and stop
	// (exit 2), as every read-only command does, rather than validate a
	// campaign against keys that do not exist.
	if err := requireDataDir(cfg, false); err != nil {
		return err
	}
	spec, cf, err := loadSpec(&env{cfg: cfg, msgIDKey: []byte("validate")}, file)
	if err != nil {
		return err
	}
	summary, problems := campaign.Validate(ctx, spec)
	for _, p := range problems {
		var te campaign.TemplateError
		if cf != nil && errors.As(p, &te) {
			fmt.Fprintf(c.stderr, "%s:%d: template: %v\n", cf.Path, cf.Line("template"), p)
			continue
		}
		var re campaign.RowError
		if !c.reveal && errors.As(p, &re) {
			fmt.Fprintln(c.stderr, re.Masked())
			continue
		}
		fmt.Fprintln(c.stderr, p)
	}
	var checks []preflight.Check
	if spec.Templates != nil {
		if checks, err = c.campaignPreflight(ctx, cfg, spec, offline); err != nil {
			return err
		}
	}
	failed := countFailed(checks)
	if c.jsonOut { // the summary's fields and the checks, as "preflight"
		b, _ := json.Marshal(struct {
			campaign.Summary
			Preflight []preflight.Check `json:"preflight"`
		}{summary, checks})
		fmt.Fprintf(c.stdout, "%s\n", b)
	} else {
		c.printPreflight(c.stdout, checks, false)
		fmt.Fprintf(c.stdout, "campaign %s: %d rows, %d invalid, %d problems, %d preflight failures\n", spec.ID, summary.Rows, summary.Invalid, len(problems), failed)
	}
	if len(problems) > 0 || failed > 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("campaign %s is not valid (%d problems, %d preflight failures)", file, len(problems), failed)}
	}
	return nil
}

func (c *cli) printTestSend(raw json.RawMessage) error {
	var v testSendView
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	if v.Skip != "" {
		fmt.Fprintf(c.stderr, "note: the campaign itself would leave row %d out (%s)\n", v.Row, v.Skip)
	}
	switch {
	case v.Daemon:
		fmt.Fprintf(c.stdout, "test of campaign %s (row %d) for %s handed to the running daemon\n", v.Campaign, v.Row, v.To)
	default:
		fmt.Fprintf(c.stdout, "test of campaign %s (row %d) for %s: %s\n", v.Campaign, v.Row, v.To, v.State)
	}
	return nil
}

func (c *cli) printSendResult(raw json.RawMessage) error {
	var r sendResult
	if err := json.Unmarshal(raw, &r); err != nil {
		return err
	}
	s := r.Summary
	w := c.stdout
	fmt.Fprintf(w, "campaign %s\n", s.Campaign)
	fmt.Fprintf(w, "  rows read      %d\n", s.Rows)
	fmt.Fprintf(w, "  invalid rows   %d\n", s.Invalid)
	for _, l := range s.InvalidLines {
		fmt.Fprintf(w, "    %s\n", l)
	}
	fmt.Fprintf(w, "  suppressed     %s\n", countsLine(s.Suppressed))
	fmt.Fprintf(w, "  skipped        %s\n", countsLine(s.Skipped))
	fmt.Fprintf(w, "  enqueued       %d\n", s.Enqueued)
	// A resumed run: what an earlier run finished, and what it left queued.
	fmt.Fprintf(w, "  already sent   %d\n", s.AlreadySent-s.AlreadyQueued)
	if s.AlreadyQueued > 0 {
		fmt.Fprintf(w, "  already queued %d (enqueued by an earlier run, not delivered yet)\n", s.AlreadyQueued)
	}
	if r.Delivery != nil {
		states := make([]string, 0, len(r.Delivery))
		for st, n := range r.Delivery {
			states = append(states, fmt.Sprintf("%s %d", st, n))
		}
		sort.Strings(states)
		fmt.Fprintf(w, "delivery: %s\n", strings.Join(states, ", "))
	}
	if r.Daemon {
		fmt.Fprintln(w, "delivery: handed to the running daemon (see `postwarden campaign status`)")
	}
	if cs := r.Cluster; cs != nil {
		if cs.New {
			fmt.Fprintf(w, "cluster: %d recipients published in %d shares; every serving node delivers its part (see `postwarden campaign status`)\n", cs.Rows, cs.Shards)
		} else {
			fmt.Fprintf(w, "cluster: campaign %s was published already (%d recipients in %d shares); nothing added\n", s.Campaign, cs.Rows, cs.Shards)
		}
	}
	if r.CaptureDir != "" {
		fmt.Fprintf(w, "signed messages (capture mode): %s\n", r.CaptureDir)
	}
	for _, k := range r.DKIMKeys {
		fmt.Fprintf(w, "new DKIM key %s; publish:\n%s\n", k.Path, k.DNSRecord)
	}
	return nil
}

func (c *cli) printCampaignStatus(raw json.RawMessage) error {
	var st campaignStatus
	if err := json.Unmarshal(raw, &st); err != nil {
		return err
	}
	var rec campaign.Record
	_ = json.Unmarshal(st.Record, &rec)
	w := c.stdout
	fmt.Fprintf(w, "campaign %s\n", st.ID)
	if rec.ID != "" {
		fmt.Fprintf(w, "  list           %s\n", rec.List)
		fmt.Fprintf(w, "  started        %s by %s\n", rec.Started.Local().Format(time.DateTime), rec.RunBy)
		if !rec.Finished.IsZero() {
			fmt.Fprintf(w, "  all enqueued   %s\n", rec.Finished.Local().Format(time.DateTime))
		}
	}
	// "finished" only when nothing is pending: an enqueued campaign is still sending.
	switch {
	case st.Brake != nil && st.Brake.Paused:
		fmt.Fprintf(w, "  state          paused, %d pending\n", st.Pending)
	case st.Pending > 0:
		fmt.Fprintf(w, "  state          sending, %d pending\n", st.Pending)
	default:
		fmt.Fprintf(w, "  state          finished: nothing pending\n")
	}
	if st.Rate > 0 {
		fmt.Fprintf(w, "  rate           %g/s\n", st.Rate)
	}
	if cl := st.Cluster; cl != nil {
		outcomes := map[string]int{}
		for o, n := range cl.Outcomes {
			outcomes[string(o)] = n
		}
		fmt.Fprintf(w, "  cluster        %d recipients: %s; %d without a final outcome\n", cl.Recipients, countsLine(outcomes), cl.Pending)
		fmt.Fprintf(w, "  shares         %s; held by %s; done by %s\n", countsLine(cl.Shares), countsLine(cl.Holders), countsLine(cl.DoneBy))
		fmt.Fprintln(w, "  this node:")
	}
	fmt.Fprintf(w, "  enqueued       %d\n", st.Enqueued)
	fmt.Fprintf(w, "  delivered      %d\n", st.Delivered)
	fmt.Fprintf(w, "  pending        %d (ready %d, deferred %d, held %d, in flight %d)\n", st.Pending,
		st.Queue["ready"], st.Deferred, st.Queue["held"], st.Queue["active"])
	fmt.Fprintf(w, "  bounced        %d (hard %d, soft %d)\n", st.Bounced, st.BouncedHard, st.BouncedSoft)
	fmt.Fprintf(w, "  expired        %d\n", st.Expired)
	fmt.Fprintf(w, "  cancelled      %d\n", st.Cancelled)
	fmt.Fprintf(w, "  complained     %d\n", st.Complained)
	fmt.Fprintf(w, "  unsubscribed   %d\n", st.Unsubscribed)
	fmt.Fprintf(w, "  suppressed at enqueue %s\n", countsLine(st.Suppressed))
	fmt.Fprintf(w, "  skipped at enqueue    %s\n", countsLine(st.Skipped))
	printBrake(w, st.Brake)
	return nil
}
