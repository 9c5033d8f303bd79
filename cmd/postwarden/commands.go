package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/postwarden/postwarden/campaign"
	"github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression/address"
)

func sortStrings(s []string) { sort.Strings(s) }

// countsLine prints "N (reason a, reason b)" for counts by reason.
func countsLine(m map[string]int) string {
	total := 0
	parts := make([]string, 0, len(m))
	for k, n := range m {
		total += n
		parts = append(parts, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return "0"
	}
	return fmt.Sprintf("%d (%s)", total, strings.Join(parts, ", "))
}

// --- campaign ---

func (c *cli) campaignCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "campaign", Short: "Validate and send campaigns"}
	validate := &cobra.Command{
		Use:   "validate FILE",
		Short: "Check config, campaign, templates and every recipient row without sending",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.campaignValidate(cmd.Context(), args[0])
		},
	}
	var noWait bool
	send := &cobra.Command{
		Use:   "send FILE",
		Short: "Render, check and enqueue a campaign, then deliver it (or hand it to the daemon)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.call(cmd.Context(), "campaign.send", campaignSendArgs{File: absPath(args[0]), NoWait: noWait}, c.printSendResult)
		},
	}
	send.Flags().BoolVar(&noWait, "no-wait", false, "only enqueue; do not deliver in this process")
	status := &cobra.Command{
		Use:   "status ID",
		Short: "Enqueued, delivered, deferred, bounced, complained, unsubscribed and suppressed counts of a campaign",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.call(cmd.Context(), "campaign.status", campaignStatusArgs{ID: args[0]}, c.printCampaignStatus)
		},
	}
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
	resumeCmd := &cobra.Command{
		Use:   "resume ID",
		Short: "Continue a paused campaign; its brakes then judge only what follows (audited)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resume.ID = args[0]
			return c.call(cmd.Context(), "campaign.resume", resume, c.printFields)
		},
	}
	resumeCmd.Flags().StringVar(&resume.Reason, "reason", "", "why (optional; audited)")
	cmd.AddCommand(validate, send, status, pauseCmd, resumeCmd)
	return cmd
}

// campaignValidate needs no store: it runs in this process even beside a daemon.
func (c *cli) campaignValidate(ctx context.Context, file string) error {
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
		if cf != nil && strings.HasPrefix(p.Error(), "templates:") {
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
	if c.jsonOut {
		b, _ := json.Marshal(summary)
		fmt.Fprintf(c.stdout, "%s\n", b)
	} else {
		fmt.Fprintf(c.stdout, "campaign %s: %d rows, %d invalid, %d problems\n", spec.ID, summary.Rows, summary.Invalid, len(problems))
	}
	if len(problems) > 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("campaign %s is not valid (%d problems)", file, len(problems))}
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
	total := 0
	reasons := make([]string, 0, len(s.Suppressed))
	for k, n := range s.Suppressed {
		total += n
		reasons = append(reasons, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(reasons)
	fmt.Fprintf(w, "  suppressed     %d", total)
	if len(reasons) > 0 {
		fmt.Fprintf(w, " (%s)", strings.Join(reasons, ", "))
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  skipped        %s\n", countsLine(s.Skipped))
	fmt.Fprintf(w, "  enqueued       %d\n", s.Enqueued)
	fmt.Fprintf(w, "  already sent   %d\n", s.AlreadySent)
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
			fmt.Fprintf(w, "  finished       %s\n", rec.Finished.Local().Format(time.DateTime))
		}
	}
	if st.Rate > 0 {
		fmt.Fprintf(w, "  rate           %g/s\n", st.Rate)
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
	total := 0
	var reasons []string
	for k, n := range st.Suppressed {
		total += n
		reasons = append(reasons, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(reasons)
	fmt.Fprintf(w, "  suppressed at enqueue %d", total)
	if len(reasons) > 0 {
		fmt.Fprintf(w, " (%s)", strings.Join(reasons, ", "))
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  skipped at enqueue    %s\n", countsLine(st.Skipped))
	printBrake(w, st.Brake)
	return nil
}

// --- queue ---

func (c *cli) queueCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "queue", Short: "Inspect and act on the delivery queue"}
	var la queueListArgs
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List queued and finished messages",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			t := c.table("ID", "STATE", "ATTEMPTS", "NEXT", "CAMPAIGN", "RCPT", "LAST REPLY")
			defer t.Flush()
			return c.call(cmd.Context(), "queue.ls", la, func(raw json.RawMessage) error {
				var v msgView
				if err := json.Unmarshal(raw, &v); err != nil {
					return err
				}
				next := "-"
				if v.NextAttempt != nil {
					next = v.NextAttempt.Local().Format(time.DateTime)
				}
				fmt.Fprintf(t, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", v.ID, v.State, v.Attempts, next, v.Campaign, v.Rcpt, oneLine(v.LastReply, 60))
				return nil
			})
		},
	}
	ls.Flags().StringVar(&la.Campaign, "campaign", "", "only this campaign")
	ls.Flags().StringVar(&la.State, "state", "", "only this state: ready|deferred|held|active|delivered|bounced|expired|cancelled")
	ls.Flags().StringVar(&la.Domain, "domain", "", "only this recipient domain")
	ls.Flags().StringVar(&la.OlderThan, "older-than", "", "only messages older than this (e.g. 2h, 3d)")
	ls.Flags().IntVar(&la.Limit, "limit", 0, "at most this many")

	show := &cobra.Command{
		Use:   "show ID…",
		Short: "Show a message: envelope, state, every attempt",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ids, err := c.readIDs(args)
			if err != nil {
				return err
			}
			return c.call(cmd.Context(), "queue.show", idArgs{IDs: ids}, c.printMessage)
		},
	}
	stats := &cobra.Command{
		Use:   "stats",
		Short: "Counts by state and by domain, oldest message, delivery rate over the last minutes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.call(cmd.Context(), "queue.stats", nil, c.printStats)
		},
	}
	cmd.AddCommand(ls, show, stats, c.topCommand(), c.suspendCommand(), c.resumeCommand(),
		c.queueAction("retry", "Deliver now (flush): ID…, - (IDs on stdin), ALL, --domain D or --campaign C", false),
		c.queueAction("hold", "Stop delivering: ID…, -, ALL, --domain D or --campaign C", false),
		c.queueAction("release", "Release held messages: ID…, -, ALL, --domain D or --campaign C", false),
		c.queueAction("delete", "Cancel messages (kept as records): ID…, -, ALL, --domain or --campaign, with --reason", true),
		c.queueAction("bounce", "Fail messages on purpose (state bounced, recorded): ID…, -, ALL, --domain or --campaign, with --reason", true),
	)
	return cmd
}

// printStats prints `queue stats`.
func (c *cli) printStats(raw json.RawMessage) error {
	var v statsView
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	w := c.stdout
	fmt.Fprintf(w, "messages: %d\n", v.Total)
	for _, st := range validStates {
		if n := v.ByState[st]; n > 0 {
			fmt.Fprintf(w, "  %-10s %d\n", st, n)
		}
	}
	if v.Oldest != nil {
		fmt.Fprintf(w, "oldest pending: %s (%s ago)\n", v.Oldest.Local().Format(time.DateTime), time.Since(*v.Oldest).Round(time.Second))
	}
	fmt.Fprintf(w, "delivered/min: %.1f (1m)  %.1f (5m)  %.1f (15m)\n", v.Rates["1m"], v.Rates["5m"], v.Rates["15m"])
	fmt.Fprintf(w, "last 15 min: delivered %d, deferred %d, bounced %d\n", v.Recent["delivered"], v.Recent["deferred"], v.Recent["bounced"])
	for _, sp := range v.Suspensions {
		fmt.Fprintf(w, "suspended: %s until %s: %s\n", sp.Selector, sp.Until.Local().Format(time.DateTime), sp.Reason)
	}
	if len(v.ByDomain) > 0 {
		t := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(t, "DOMAIN\tPENDING\tDEFERRED\tHELD")
		for _, d := range topDomains(v.ByDomain, 0) {
			fmt.Fprintf(t, "%s\t%d\t%d\t%d\n", d, v.ByDomain[d], v.DomainStates[d]["deferred"], v.DomainStates[d]["held"])
		}
		t.Flush()
	}
	return nil
}

// topDomains returns the domains by descending count (then name); n > 0 keeps the first n.
func topDomains(m map[string]int, n int) []string {
	ds := make([]string, 0, len(m))
	for d := range m {
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool {
		if m[ds[i]] != m[ds[j]] {
			return m[ds[i]] > m[ds[j]]
		}
		return ds[i] < ds[j]
	})
	if n > 0 && len(ds) > n {
		ds = ds[:n]
	}
	return ds
}

func (c *cli) suspendCommand() *cobra.Command {
	var a suspendArgs
	cmd := &cobra.Command{
		Use:   "suspend --domain D|--campaign C --duration 30m --reason R",
		Short: "Stop delivering to a domain or a campaign for a while (no attempts are spent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.Domain == "" && a.Campaign == "" {
				return errors.New("queue suspend: --domain or --campaign is required")
			}
			if strings.TrimSpace(a.Reason) == "" {
				return errors.New("queue suspend: --reason is required")
			}
			return c.call(cmd.Context(), "queue.suspend", a, c.printSuspension)
		},
	}
	cmd.Flags().StringVar(&a.Domain, "domain", "", "recipient domain")
	cmd.Flags().StringVar(&a.Campaign, "campaign", "", "campaign id")
	cmd.Flags().StringVar(&a.Duration, "duration", "30m", "how long (e.g. 30m, 2h, 1d)")
	cmd.Flags().StringVar(&a.Reason, "reason", "", "why (logged and kept)")
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List active suspensions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.call(cmd.Context(), "queue.suspended", nil, c.printSuspension)
		},
	}
	cmd.AddCommand(ls)
	return cmd
}

func (c *cli) printSuspension(raw json.RawMessage) error {
	var sp queue.Suspension
	if err := json.Unmarshal(raw, &sp); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "%s suspended until %s: %s\n", sp.Selector, sp.Until.Local().Format(time.DateTime), sp.Reason)
	return nil
}

func (c *cli) resumeCommand() *cobra.Command {
	var a suspendArgs
	cmd := &cobra.Command{
		Use:   "resume --domain D|--campaign C",
		Short: "End a suspension; the messages it held are due at once",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.Domain == "" && a.Campaign == "" {
				return errors.New("queue resume: --domain or --campaign is required")
			}
			return c.call(cmd.Context(), "queue.resume", a, c.printFields)
		},
	}
	cmd.Flags().StringVar(&a.Domain, "domain", "", "recipient domain")
	cmd.Flags().StringVar(&a.Campaign, "campaign", "", "campaign id")
	return cmd
}

func (c *cli) queueAction(action, short string, needReason bool) *cobra.Command {
	var a idArgs
	cmd := &cobra.Command{
		Use:   action + " ID…|-|ALL|--domain D|--campaign C",
		Short: short,
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) == 0 && (a.Domain != "" || a.Campaign != ""):
				// --domain and --campaign are a bulk selection by themselves.
			case len(args) == 0:
				return fmt.Errorf("queue %s: give message IDs, - (IDs on stdin), ALL, --domain or --campaign", action)
			case len(args) == 1 && args[0] == "ALL":
				a.All = true
			default:
				for _, x := range args {
					if strings.EqualFold(x, "all") {
						return fmt.Errorf("queue %s: the bulk form is the upper-case word ALL, alone", action)
					}
				}
				ids, err := c.readIDs(args)
				if err != nil {
					return err
				}
				a.IDs = ids
			}
			if needReason && strings.TrimSpace(a.Reason) == "" {
				return fmt.Errorf("queue %s: --reason is required", action)
			}
			return c.call(cmd.Context(), "queue."+action, a, c.printFields)
		},
	}
	cmd.Flags().StringVar(&a.Campaign, "campaign", "", "every message of this campaign (bulk)")
	cmd.Flags().StringVar(&a.Domain, "domain", "", "every message to this recipient domain (bulk)")
	cmd.Flags().StringVar(&a.State, "state", "", "with a bulk selection: only this state")
	if needReason {
		cmd.Flags().StringVar(&a.Reason, "reason", "", "why (logged and kept with the message)")
	}
	return cmd
}

func (c *cli) printMessage(raw json.RawMessage) error {
	var v msgView
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	w := c.stdout
	fmt.Fprintf(w, "id:        %s\ncampaign:  %s\nlist:      %s\nfrom:      %s\nrcpt:      %s\nstate:     %s\nattempts:  %d\ncreated:   %s\n",
		v.ID, v.Campaign, v.List, v.From, v.Rcpt, v.State, v.Attempts, v.Created.Local().Format(time.RFC3339))
	if v.NextAttempt != nil {
		fmt.Fprintf(w, "next:      %s\n", v.NextAttempt.Local().Format(time.RFC3339))
	}
	if v.Reason != "" {
		fmt.Fprintf(w, "reason:    %s\n", v.Reason)
	}
	if v.LastReply != "" {
		fmt.Fprintf(w, "last reply: %s\n", v.LastReply)
	}
	if len(v.Headers) > 0 {
		fmt.Fprintln(w, "headers:")
		for _, h := range v.Headers {
			fmt.Fprintf(w, "  %s: %s\n", h.Name, oneLine(h.Value, 200))
		}
	}
	if len(v.History) > 0 {
		fmt.Fprintln(w, "history:")
	}
	for i, a := range v.History {
		fmt.Fprintf(w, "  %d. %s %s", i+1, a.Time.Local().Format(time.RFC3339), a.Outcome)
		if a.Remote != "" {
			fmt.Fprintf(w, " [%s]", a.Remote)
		}
		if a.Reply != "" {
			fmt.Fprintf(w, ": %s", a.Reply)
		}
		fmt.Fprintln(w)
	}
	return nil
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// table is a tabwriter that prints its header before the first row.
func (c *cli) table(cols ...string) *tabwriter.Writer {
	t := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	if !c.jsonOut {
		fmt.Fprintln(t, strings.Join(cols, "\t"))
	}
	return t
}

// --- suppress ---

func (c *cli) suppressCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "suppress", Short: "Manage who is never mailed"}
	var a suppressArgs
	add := &cobra.Command{
		Use:   "add ADDR|@DOMAIN",
		Short: "Suppress an address or a whole domain, globally or for one list",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a.Target = args[0]
			return c.call(cmd.Context(), "suppress.add", a, c.printFields)
		},
	}
	add.Flags().StringVar(&a.List, "list", "", "only this list (default: every list)")
	add.Flags().StringVar(&a.Reason, "reason", "manual", "unsubscribed|hard_bounce|complaint|manual|erased")
	add.Flags().StringVar(&a.Note, "note", "", "free text kept with the entry")
	var ra suppressArgs
	remove := &cobra.Command{
		Use:   "remove ADDR|@DOMAIN",
		Short: "Remove a suppression entry",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ra.Target = args[0]
			return c.call(cmd.Context(), "suppress.remove", ra, c.printFields)
		},
	}
	remove.Flags().StringVar(&ra.List, "list", "", "the list of the entry (default: the global entry)")
	var ca suppressArgs
	check := &cobra.Command{
		Use:   "check ADDR",
		Short: "Exit 0 and print the reason if ADDR is suppressed, exit 1 if not",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ca.Target = args[0]
			return c.call(cmd.Context(), "suppress.check", ca, func(raw json.RawMessage) error {
				var v entryView
				if err := json.Unmarshal(raw, &v); err != nil {
					return err
				}
				fmt.Fprintf(c.stdout, "suppressed: %s (%s, list %s, since %s)\n", v.Reason, v.Target, v.List, v.Time.Local().Format(time.RFC3339))
				return nil
			})
		},
	}
	check.Flags().StringVar(&ca.List, "list", "", "check for this list too")
	var la suppressArgs
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List suppression entries",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			t := c.table("TARGET", "LIST", "REASON", "SOURCE", "SINCE")
			defer t.Flush()
			return c.call(cmd.Context(), "suppress.ls", la, func(raw json.RawMessage) error {
				var v entryView
				if err := json.Unmarshal(raw, &v); err != nil {
					return err
				}
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\n", v.Target, v.List, v.Reason, v.Source, v.Time.Local().Format(time.DateTime))
				return nil
			})
		},
	}
	ls.Flags().StringVar(&la.List, "list", "", "only entries of this list")
	var ia suppressArgs
	imp := &cobra.Command{
		Use:   "import CSV",
		Short: "Import suppressions from a CSV (header row; email column, optional list, reason, source, note)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ia.Path = absPath(args[0])
			return c.call(cmd.Context(), "suppress.import", ia, c.printFields)
		},
	}
	imp.Flags().StringVar(&ia.List, "list", "", "list for rows without one (default: every list)")
	imp.Flags().StringVar(&ia.Reason, "reason", "manual", "reason for rows without one")
	cmd.AddCommand(add, remove, check, ls, imp)
	return cmd
}

// --- dkim ---

// keygenArgs are the arguments of the dkim.keygen op.
type keygenArgs struct {
	Domain   string `json:"domain"`
	Selector string `json:"selector"`
	Type     string `json:"type"`
	Out      string `json:"out,omitempty"`
}

func absIfSet(p string) string {
	if p == "" {
		return ""
	}
	return absPath(p)
}

// opDKIMKeygen writes a new key (never over an existing one) and records it.
func opDKIMKeygen(ctx context.Context, e *env, req request, o *out) error {
	var a keygenArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	path := a.Out
	if path == "" {
		path = filepath.Join(e.cfg.DataDir, "dkim", a.Domain+"."+a.Selector+".key")
	}
	if err := dkim.WriteNew(path, a.Type); err != nil {
		return err
	}
	k, _, err := dkim.LoadOrCreate(path, a.Domain, a.Selector, a.Type)
	if err != nil {
		return err
	}
	if err := e.record(req, "dkim.keygen", a.Selector+"._domainkey."+a.Domain, "", map[string]string{"type": k.Type(), "path": path}); err != nil {
		return err
	}
	return o.Record(createdKey{Path: path, DNSRecord: k.DNSRecord()})
}

// selectorPattern is a DKIM selector: one or more DNS labels (RFC 6376 §3.1).
var selectorPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

func (c *cli) dkimCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "dkim", Short: "DKIM keys"}
	var domain, selector, keyType, out string
	keygen := &cobra.Command{
		Use:   "keygen --domain D --selector S [--type rsa|ed25519]",
		Short: "Generate a DKIM key (mode 0600) and print the DNS record to publish",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if domain == "" || selector == "" {
				return errors.New("dkim keygen: --domain and --selector are required")
			}
			// Check both before they become part of a file name.
			d, err := address.NormalizeDomain(domain)
			if err != nil {
				return fmt.Errorf("dkim keygen: --domain %q: %w", domain, err)
			}
			sel := strings.ToLower(selector)
			if !selectorPattern.MatchString(sel) {
				return fmt.Errorf("dkim keygen: --selector %q: want DNS labels (letters, digits, '-', '.')", selector)
			}
			domain, selector = d, sel
			// The key is written by whoever holds the stores (the daemon, or
			// this process), so the change is in the audit log.
			return c.call(cmd.Context(), "dkim.keygen", keygenArgs{Domain: domain, Selector: selector, Type: keyType, Out: absIfSet(out)},
				func(raw json.RawMessage) error {
					var k createdKey
					if err := json.Unmarshal(raw, &k); err != nil {
						return err
					}
					fmt.Fprintf(c.stderr, "wrote %s (mode 0600); publish:\n", k.Path)
					fmt.Fprintln(c.stdout, k.DNSRecord)
					return nil
				})
		},
	}
	keygen.Flags().StringVar(&domain, "domain", "", "signing domain (d=)")
	keygen.Flags().StringVar(&selector, "selector", "", "selector (s=)")
	keygen.Flags().StringVar(&keyType, "type", "rsa", "rsa (2048 bits) or ed25519")
	keygen.Flags().StringVar(&out, "out", "", "key file (default <data_dir>/dkim/<domain>.<selector>.key)")
	cmd.AddCommand(keygen)
	return cmd
}

// --- progress ---

// progressBar draws a bar on a terminal and nothing elsewhere.
type progressBar struct {
	bar *progressbar.ProgressBar
	on  bool
	w   io.Writer
}

func newProgressBar(w io.Writer, jsonOut bool) *progressBar {
	f, ok := w.(*os.File)
	return &progressBar{on: ok && !jsonOut && term.IsTerminal(int(f.Fd())), w: w}
}

// Update moves the bar to p.
func (b *progressBar) Update(p progress) {
	if !b.on {
		return
	}
	if b.bar == nil {
		b.bar = progressbar.NewOptions64(p.Total,
			progressbar.OptionSetWriter(b.w),
			progressbar.OptionSetDescription("recipients"),
			progressbar.OptionShowBytes(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	_ = b.bar.Set64(p.Bytes)
	b.bar.Describe(fmt.Sprintf("%d recipients", p.Rows))
}

// Clear wipes the bar so a line can be printed.
func (b *progressBar) Clear() {
	if b.bar != nil {
		_ = b.bar.Clear()
	}
}

// Finish removes the bar.
func (b *progressBar) Finish() {
	if b.bar != nil {
		_ = b.bar.Finish()
	}
}
