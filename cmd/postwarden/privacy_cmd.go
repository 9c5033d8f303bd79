package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/audit/auditstream"
)

// subjectCommand is `postwarden subject export|erase|restrict|unrestrict`.
func (c *cli) subjectCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "subject", Short: "Data subject requests: export, erase, restrict (GDPR Art. 15-20)"}
	verb := func(name, short string) *cobra.Command {
		var a subjectArgs
		sc := &cobra.Command{
			Use:   name + " ADDR --reason R",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				a.Address = args[0]
				if strings.TrimSpace(a.Reason) == "" {
					return fmt.Errorf("subject %s: --reason is required (it is kept in the audit log)", name)
				}
				print := c.printFields
				if name == "export" {
					print = c.printExport(a.Format)
				}
				return c.call(cmd.Context(), "subject."+name, a, print)
			},
		}
		sc.Flags().StringVar(&a.Reason, "reason", "", "why (request reference; kept in the audit log)")
		if name == "export" {
			sc.Flags().StringVar(&a.Format, "format", "json", "json (complete, machine-readable) or csv")
		}
		return sc
	}
	cmd.AddCommand(
		verb("export", "Everything held about a person, as JSON or CSV"),
		verb("erase", "Erase a person's data everywhere; keep only a tombstone that blocks re-contact"),
		verb("restrict", "Keep the data, process nothing (reversible)"),
		verb("unrestrict", "Lift a restriction"),
	)
	return cmd
}

// printExport writes an export as it is: JSON indented, or the CSV text.
func (c *cli) printExport(format string) func(json.RawMessage) error {
	return func(raw json.RawMessage) error {
		if format == "csv" {
			var m map[string]string
			if err := json.Unmarshal(raw, &m); err != nil {
				return err
			}
			_, err := fmt.Fprint(c.stdout, m["csv"])
			return err
		}
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return err
		}
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(c.stdout, "%s\n", b)
		return err
	}
}

// auditCommand is `postwarden audit ls|verify`.
func (c *cli) auditCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "The hash-chained audit log of who did what"}
	var a auditArgs
	ls := &cobra.Command{
		Use:   "ls [--since 7d|DATE]",
		Short: "List audit entries",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			t := c.table("SEQ", "TIME", "WHO", "ACTION", "TARGET", "REASON")
			defer t.Flush()
			return c.call(cmd.Context(), "audit.ls", a, func(raw json.RawMessage) error {
				var en audit.Entry
				if err := json.Unmarshal(raw, &en); err != nil {
					return err
				}
				fmt.Fprintf(t, "%d\t%s\t%s\t%s\t%s\t%s\n", en.Seq, en.Time.Local().Format(time.DateTime), en.Who, en.Action, oneLine(en.Target, 40), oneLine(en.Reason, 50))
				return nil
			})
		},
	}
	ls.Flags().StringVar(&a.Since, "since", "", "only entries since a date, a time or a duration ago")
	var va auditArgs
	verify := &cobra.Command{
		Use:   "verify [--cluster]",
		Short: "Recompute the hash chain; exit 1 and name the first bad entry if it was changed (--cluster: every node's chain as published, and this node's against it)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.call(cmd.Context(), "audit.verify", va, func(raw json.RawMessage) error {
				var n auditstream.NodeResult
				if err := json.Unmarshal(raw, &n); err == nil && n.Node != "" {
					fmt.Fprintln(c.stdout, nodeVerdict(n))
					return nil
				}
				var r audit.VerifyResult
				if err := json.Unmarshal(raw, &r); err != nil {
					return err
				}
				fmt.Fprintln(c.stdout, r.String())
				return nil
			})
		},
	}
	verify.Flags().BoolVar(&va.Cluster, "cluster", false, "also verify every node's chain as published to the cluster")
	cmd.AddCommand(ls, verify)
	return cmd
}

// nodeVerdict is one line of `audit verify --cluster` per node.
func nodeVerdict(n auditstream.NodeResult) string {
	if !n.OK {
		return fmt.Sprintf("node %s: audit chain BROKEN (%d entries published): %s", n.Node, n.Entries, n.Problem)
	}
	also := ""
	if n.Local {
		also = ", matches the local log"
	}
	return fmt.Sprintf("node %s: audit chain verified: %d entries published, head entry %d%s", n.Node, n.Entries, n.HeadSeq, also)
}

// dbCommand is `postwarden db prune|compact|check|init`.
func (c *cli) dbCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "db", Short: "Store maintenance: retention, compaction, checks, and starting a store empty"}
	cmd.AddCommand(c.dbCheckCommand(), c.dbInitCommand())
	cmd.AddCommand(&cobra.Command{
		Use:   "prune",
		Short: "Apply the retention periods (finished messages, pending opt-ins, audit entries)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.call(cmd.Context(), "db.prune", nil, c.printFields)
		},
	}, &cobra.Command{
		Use:   "compact",
		Short: "Rewrite the store files so freed pages (deleted data) are gone",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.call(cmd.Context(), "db.compact", nil, c.printFields)
		},
	})
	return cmd
}
