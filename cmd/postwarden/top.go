package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/postwarden/postwarden/queue"
)

// topInterval is how often `queue top` refreshes on a terminal.
const topInterval = 2 * time.Second

// topRows is how many domains `queue top` shows.
const topRows = 20

func (c *cli) topCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "top",
		Short: "Top domains, providers and sources by queued messages and the delivery rates, refreshed every 2 s on a terminal (ctrl-C exits)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			f, ok := c.stdout.(*os.File)
			live := ok && !c.jsonOut && term.IsTerminal(int(f.Fd()))
			return c.top(cmd.Context(), live)
		},
	}
}

// top prints the queue's top domains once, or until ctx ends when live.
func (c *cli) top(ctx context.Context, live bool) error {
	for {
		var frame strings.Builder
		var err error
		if c.jsonOut {
			err = c.call(ctx, "queue.stats", nil, nil)
		} else {
			saved := c.stdout
			c.stdout = &frame
			err = c.call(ctx, "queue.stats", nil, func(raw json.RawMessage) error {
				return renderTop(&frame, raw, time.Now())
			})
			c.stdout = saved
		}
		if err != nil || c.code != 0 || !live {
			fmt.Fprint(c.stdout, frame.String())
			return err
		}
		// Clear the screen and home the cursor (ECMA-48 ED and CUP), then draw.
		fmt.Fprint(c.stdout, "\x1b[H\x1b[2J"+frame.String())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(topInterval):
		}
	}
}

// renderTop draws one `queue top` frame from a queue.stats record.
func renderTop(w io.Writer, raw json.RawMessage, now time.Time) error {
	var v statsView
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	pending := v.ByState["ready"] + v.ByState["deferred"] + v.ByState["held"] + v.ByState["active"]
	fmt.Fprintf(w, "postwarden queue top — %s\n", now.Local().Format(time.TimeOnly))
	fmt.Fprintf(w, "pending %d (ready %d, deferred %d, held %d, in flight %d)   delivered %d  bounced %d\n",
		pending, v.ByState["ready"], v.ByState["deferred"], v.ByState["held"], v.ByState["active"],
		v.ByState["delivered"], v.ByState["bounced"])
	fmt.Fprintf(w, "delivered/min %.1f (1m) %.1f (5m) %.1f (15m)   last 15m: deferred %d, bounced %d\n",
		v.Rates["1m"], v.Rates["5m"], v.Rates["15m"], v.Recent["deferred"], v.Recent["bounced"])
	if v.Oldest != nil {
		fmt.Fprintf(w, "oldest pending %s ago\n", now.Sub(*v.Oldest).Round(time.Second))
	}
	for _, sp := range v.Suspensions {
		fmt.Fprintf(w, "suspended: %s until %s (%s)\n", sp.Selector, sp.Until.Local().Format(time.DateTime), sp.Reason)
	}
	fmt.Fprintln(w)
	t := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(t, "DOMAIN\tQUEUED\tDEFERRED\tHELD\tIN FLIGHT")
	for _, d := range topDomains(v.ByDomain, topRows) {
		ds := v.DomainStates[d]
		fmt.Fprintf(t, "%s\t%d\t%d\t%d\t%d\n", d, v.ByDomain[d], ds["deferred"], ds["held"], ds["active"])
	}
	if n := len(v.ByDomain) - topRows; n > 0 {
		fmt.Fprintf(t, "(%d more domains)\t\t\t\t\n", n)
	}
	for _, g := range []struct {
		col, more string
		by        map[string]int
		states    map[string]map[queue.State]int
	}{{"PROVIDER", "providers", v.ByProvider, v.ProviderStates}, {"SOURCE", "sources", v.BySource, v.SourceStates}} {
		if len(g.by) == 0 {
			continue
		}
		fmt.Fprintln(t, "\t\t\t\t")
		fmt.Fprintln(t, g.col+"\tQUEUED\tDEFERRED\tHELD\tIN FLIGHT")
		for _, d := range topDomains(g.by, topRows) {
			ds := g.states[d]
			fmt.Fprintf(t, "%s\t%d\t%d\t%d\t%d\n", nameOrUnknown(d), g.by[d], ds["deferred"], ds["held"], ds["active"])
		}
		if n := len(g.by) - topRows; n > 0 {
			fmt.Fprintf(t, "(%d more %s)\t\t\t\t\n", n, g.more)
		}
	}
	return t.Flush()
}
