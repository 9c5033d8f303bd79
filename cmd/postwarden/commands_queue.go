package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/postwarden/postwarden/queue"
)

func (c *cli) queueCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "queue", Short: "Inspect and act on the delivery queue"}
	var la queueListArgs
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the messages in the queue (ready, active, deferred, held), like mailq; --all or --state for finished records",
		Example: `  postwarden queue ls
  postwarden queue ls --campaign spring-2026 --state deferred
  postwarden queue ls --rcpt ana@acme.example --all
  postwarden --json queue ls --provider microsoft`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			t := c.table("ID", "STATE", "ATTEMPTS", "NEXT", "CAMPAIGN", "RCPT", "LAST REPLY")
			n := 0
			err := c.call(cmd.Context(), "queue.ls", la, func(raw json.RawMessage) error {
				var v msgView
				if err := json.Unmarshal(raw, &v); err != nil {
					return err
				}
				n++
				next := "-"
				if v.NextAttempt != nil {
					next = v.NextAttempt.Local().Format(time.DateTime)
				}
				fmt.Fprintf(t, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", v.ID, v.State, v.Attempts, next, v.Campaign, v.Rcpt, oneLine(v.LastReply, 60))
				return nil
			})
			t.Flush()
			if err == nil && !c.jsonOut {
				what := "in the queue"
				if la.All || la.State != "" {
					what = "listed"
				}
				noun := "messages"
				if n == 1 {
					noun = "message"
				}
				fmt.Fprintf(c.stdout, "-- %d %s %s\n", n, noun, what)
			}
			return err
		},
	}
	ls.Flags().StringVar(&la.Campaign, "campaign", "", "only this campaign")
	ls.Flags().StringVar(&la.State, "state", "", "only this state: ready|deferred|held|active|delivered|bounced|expired|cancelled")
	ls.Flags().StringVar(&la.Domain, "domain", "", "only this recipient domain")
	ls.Flags().StringVar(&la.Provider, "provider", "", "only messages whose last attempt found this provider (e.g. microsoft)")
	ls.Flags().StringVar(&la.Source, "source", "", "only messages whose last attempt went through this egress source")
	ls.Flags().StringVar(&la.OlderThan, "older-than", "", "only messages older than this (e.g. 2h, 3d)")
	ls.Flags().IntVar(&la.Limit, "limit", 0, "at most this many")
	ls.Flags().StringVar(&la.Rcpt, "rcpt", "", "only this recipient address (matched through the keyed index)")
	ls.Flags().BoolVar(&la.All, "all", false, "finished records too (delivered, bounced, expired, cancelled)")

	show := &cobra.Command{
		Use:   "show ID…",
		Short: "Show a message: envelope (the VERP MAIL FROM), state, every attempt with the server reached, its full reply and the remote queue id",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ids, err := c.readIDs(args)
			if err != nil {
				return err
			}
			return c.call(cmd.Context(), "queue.show", idArgs{IDs: ids}, c.printMessage)
		},
	}
	cat := &cobra.Command{
		Use:   "cat ID…",
		Short: "Print a stored message, like postcat -q: its header, addresses masked; --reveal prints the whole message (audited)",
		Example: `  postwarden queue cat 0187c2a4f1d00003
  postwarden --reveal queue cat 0187c2a4f1d00003 > message.eml`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ids, err := c.readIDs(args)
			if err != nil {
				return err
			}
			return c.call(cmd.Context(), "queue.cat", idArgs{IDs: ids}, func(raw json.RawMessage) error {
				var v catView
				if err := json.Unmarshal(raw, &v); err != nil {
					return err
				}
				if len(ids) > 1 {
					fmt.Fprintf(c.stdout, "*** %s ***\n", v.ID)
				}
				io.WriteString(c.stdout, v.Message)
				if v.Hidden {
					fmt.Fprint(c.stdout, "\r\n[body not shown: --reveal prints the whole message, and is audited]\n")
				}
				return nil
			})
		},
	}
	var clusterWide bool
	stats := &cobra.Command{
		Use:   "stats [--cluster]",
		Short: "Counts by state, by domain, by provider and by source, oldest message, delivery rate over the last minutes (--cluster: every node's counts by state, from their last beat)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if clusterWide {
				return c.clusterQueueStats(cmd.Context())
			}
			return c.call(cmd.Context(), "queue.stats", nil, c.printStats)
		},
	}
	stats.Flags().BoolVar(&clusterWide, "cluster", false, "every node of the cluster, as each last reported")
	cmd.AddCommand(ls, show, cat, stats, c.topCommand(), c.suspendCommand(), c.resumeCommand(),
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
	for _, g := range []struct {
		col    string
		by     map[string]int
		states map[string]map[queue.State]int
	}{{"DOMAIN", v.ByDomain, v.DomainStates}, {"PROVIDER", v.ByProvider, v.ProviderStates}, {"SOURCE", v.BySource, v.SourceStates}} {
		if len(g.by) == 0 {
			continue
		}
		t := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(t, g.col+"\tPENDING\tDEFERRED\tHELD")
		for _, d := range topDomains(g.by, 0) {
			fmt.Fprintf(t, "%s\t%d\t%d\t%d\n", nameOrUnknown(d), g.by[d], g.states[d]["deferred"], g.states[d]["held"])
		}
		t.Flush()
	}
	return nil
}

// nameOrUnknown prints a provider or source name; "" (none found yet) is "(unknown)".
func nameOrUnknown(name string) string {
	if name == "" {
		return "(unknown)"
	}
	return name
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
	fmt.Fprintf(w, "id:        %s\ncampaign:  %s\nlist:      %s\nfrom:      %s\n", v.ID, v.Campaign, v.List, v.From)
	if v.EnvelopeFrom != "" && v.EnvelopeFrom != v.From {
		fmt.Fprintf(w, "envelope:  %s\n", v.EnvelopeFrom) // the MAIL FROM (VERP) a remote's logs show
	}
	fmt.Fprintf(w, "rcpt:      %s\nstate:     %s\nattempts:  %d\ncreated:   %s\n",
		v.Rcpt, v.State, v.Attempts, v.Created.Local().Format(time.RFC3339))
	if v.NextAttempt != nil {
		fmt.Fprintf(w, "next:      %s\n", v.NextAttempt.Local().Format(time.RFC3339))
	}
	fmt.Fprintf(w, "pool:      %s\nsource:    %s\nprovider:  %s\n", orDefault(v.Pool), nameOrUnknown(v.Source), nameOrUnknown(v.Provider))
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
		if a.Source != "" || a.Provider != "" {
			fmt.Fprintf(w, " (source %s, provider %s)", nameOrUnknown(a.Source), nameOrUnknown(a.Provider))
		}
		if a.Reply != "" {
			fmt.Fprintf(w, ": %s", a.Reply)
		}
		if a.RemoteQueueID != "" {
			fmt.Fprintf(w, " (remote queue id %s)", a.RemoteQueueID)
		}
		fmt.Fprintln(w)
	}
	return nil
}

// orDefault prints a pool name; "" is the default pool.
func orDefault(pool string) string {
	if pool == "" {
		return "(default)"
	}
	return pool
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
