package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/postwarden/postwarden/suppression"
)

func (c *cli) suppressCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "suppress", Short: "Manage who is never mailed"}
	var a suppressArgs
	add := c.argCommand("add ADDR|@DOMAIN", "Suppress an address or a whole domain, globally or for one list", "suppress.add",
		func(target string) any { a.Target = target; return a })
	add.Flags().StringVar(&a.List, "list", "", "only this list (default: every list)")
	add.Flags().StringVar(&a.Reason, "reason", "manual", "why: "+suppression.ReasonList())
	add.Flags().StringVar(&a.Note, "note", "", "free text kept with the entry")
	var ra suppressArgs
	remove := c.argCommand("remove ADDR|@DOMAIN", "Remove a suppression entry", "suppress.remove",
		func(target string) any { ra.Target = target; return ra })
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
	imp := c.argCommand("import CSV", "Import suppressions from a CSV (header row; email column, optional list, reason, source, note)", "suppress.import",
		func(path string) any { ia.Path = absPath(path); return ia })
	imp.Flags().StringVar(&ia.List, "list", "", "list for rows without one (default: every list)")
	imp.Flags().StringVar(&ia.Reason, "reason", "manual", "reason for rows without one")
	cmd.AddCommand(add, remove, check, ls, imp)
	return cmd
}
