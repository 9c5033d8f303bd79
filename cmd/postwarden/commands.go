package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/postwarden/postwarden/campaign"
	"github.com/postwarden/postwarden/mta/dkim"
)

func sortStrings(s []string) { sort.Strings(s) }

// --- campaign ---

func (c *cli) campaignCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "campaign", Short: "Validate and send campaigns"}
	validate := &cobra.Command{
		Use:   "validate FILE",
		Short: "Check config, campaign, templates and every recipient row without sending",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.campaignValidate(args[0])
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
		Short: "Show a campaign's record and its messages by state",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.call(cmd.Context(), "campaign.status", campaignStatusArgs{ID: args[0]}, c.printFields)
		},
	}
	cmd.AddCommand(validate, send, status)
	return cmd
}

// campaignValidate needs no store: it runs in this process even beside a daemon.
func (c *cli) campaignValidate(file string) error {
	cfg, err := c.loadConfig()
	if err != nil {
		return err
	}
	spec, cf, err := loadSpec(&env{cfg: cfg, msgIDKey: []byte("validate")}, file)
	if err != nil {
		return err
	}
	summary, problems := campaign.Validate(spec)
	for _, p := range problems {
		if cf != nil && strings.HasPrefix(p.Error(), "templates:") {
			fmt.Fprintf(c.stderr, "%s:%d: template: %v\n", cf.Path, cf.Line("template"), p)
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
		Short: "Counts by state and by domain, oldest message",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.call(cmd.Context(), "queue.stats", nil, c.printFields)
		},
	}
	cmd.AddCommand(ls, show, stats,
		c.queueAction("retry", "Deliver now: ID…, - (IDs on stdin) or ALL", false),
		c.queueAction("hold", "Stop delivering: ID…, - or ALL", false),
		c.queueAction("release", "Release held messages: ID…, - or ALL", false),
		c.queueAction("delete", "Cancel messages (kept as records): ID…, - or ALL, with --reason", true),
	)
	return cmd
}

func (c *cli) queueAction(action, short string, needReason bool) *cobra.Command {
	var a idArgs
	cmd := &cobra.Command{
		Use:   action + " ID…|ALL",
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 && args[0] == "ALL" {
				a.All = true
			} else {
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
	cmd.Flags().StringVar(&a.Campaign, "campaign", "", "with ALL: only this campaign")
	cmd.Flags().StringVar(&a.State, "state", "", "with ALL: only this state")
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
	for i, a := range v.History {
		fmt.Fprintf(w, "attempt %d: %s %s %s %s\n", i+1, a.Time.Local().Format(time.RFC3339), a.Outcome, a.Remote, a.Reply)
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

// --- dkim and dns ---

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
			path := out
			if path == "" {
				cfg, err := c.loadConfig()
				if err != nil {
					return err
				}
				path = filepath.Join(cfg.DataDir, "dkim", domain+"."+selector+".key")
			}
			if err := dkim.WriteNew(path, keyType); err != nil {
				return err
			}
			k, _, err := dkim.LoadOrCreate(path, domain, selector, keyType)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stderr, "wrote %s (mode 0600); publish:\n", path)
			fmt.Fprintln(c.stdout, k.DNSRecord())
			return nil
		},
	}
	keygen.Flags().StringVar(&domain, "domain", "", "signing domain (d=)")
	keygen.Flags().StringVar(&selector, "selector", "", "selector (s=)")
	keygen.Flags().StringVar(&keyType, "type", "rsa", "rsa (2048 bits) or ed25519")
	keygen.Flags().StringVar(&out, "out", "", "key file (default <data_dir>/dkim/<domain>.<selector>.key)")
	cmd.AddCommand(keygen)
	return cmd
}

func (c *cli) dnsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "dns",
		Short: "Print the DNS records to publish, in zone-file form",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := c.loadConfig()
			if err != nil {
				return err
			}
			keys, created, err := loadDKIM(cfg)
			if err != nil {
				return err
			}
			for _, k := range created {
				fmt.Fprintf(c.stderr, "generated DKIM key %s\n", k.Path)
			}
			fmt.Fprintf(c.stdout, "; DKIM (RFC 6376): one TXT record per configured key\n")
			for _, k := range keys {
				fmt.Fprintln(c.stdout, k.DNSRecord())
			}
			return nil
		},
	}
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
