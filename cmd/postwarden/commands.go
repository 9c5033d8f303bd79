package main

import (
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"
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

// argCommand is a subcommand that takes one argument: args puts it into the
// op's arguments (flags fill the rest), the op runs, and its record is
// printed field by field.
func (c *cli) argCommand(use, short, op string, args func(arg string) any) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			return c.call(cmd.Context(), op, args(a[0]), c.printFields)
		},
	}
}
