package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

const exitCodesHelp = `
Exit status:
  0  success (for a question: yes)
  1  a "no" or "not found" answer; a campaign with invalid rows
  2  an error: bad usage, a bad file, a store or network failure
`

// groupAnnotation marks a command that only groups verbs: run alone, it
// refuses with its usage.
const groupAnnotation = "postwarden-group"

// usageError is a command line the command cannot run: an unknown verb, a
// bad flag, a wrong number of arguments. It exits 2 with the command's
// usage on stderr.
type usageError struct {
	cmd *cobra.Command
	err error
}

func (u *usageError) Error() string { return u.err.Error() }
func (u *usageError) Unwrap() error { return u.err }

// strictUsage makes every command of the tree answer a bad command line
// with a usageError: a group given an unknown verb or none (cobra would
// print its help and exit 0), a flag it does not know, arguments its Args
// refuses. Help texts end with the exit codes.
func strictUsage(root *cobra.Command) {
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return &usageError{cmd, err} })
	// A group runs only to refuse a missing verb: its usage is its verbs.
	tmpl := strings.Replace(root.UsageTemplate(), "Usage:{{if .Runnable}}",
		"Usage:{{if and .Runnable (not .HasAvailableSubCommands)}}", 1)
	root.SetUsageTemplate(tmpl + exitCodesHelp)
	var walk func(*cobra.Command)
	walk = func(cmd *cobra.Command) {
		if cmd.Example == "" {
			cmd.Example = examples[cmd.CommandPath()]
		}
		switch {
		case cmd.HasSubCommands() && cmd.Run == nil && cmd.RunE == nil:
			if cmd.Annotations == nil {
				cmd.Annotations = map[string]string{}
			}
			cmd.Annotations[groupAnnotation] = "true"
			cmd.Args = func(cmd *cobra.Command, args []string) error {
				if len(args) > 0 {
					return &usageError{cmd, fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath())}
				}
				return nil
			}
			cmd.RunE = func(cmd *cobra.Command, _ []string) error {
				return &usageError{cmd, fmt.Errorf("%q needs a command", cmd.CommandPath())}
			}
		case cmd.Args != nil:
			check := cmd.Args
			cmd.Args = func(cmd *cobra.Command, args []string) error {
				if err := check(cmd, args); err != nil {
					return &usageError{cmd, err}
				}
				return nil
			}
		}
		for _, sub := range cmd.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// jsonRequested reports whether a command line asks for --json, read from
// the arguments themselves: a line that fails to parse never sets the flag.
func jsonRequested(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		if a == "--json" || a == "--json=true" {
			return true
		}
	}
	return false
}

// cliError is an error as `--json` prints it on stderr: one object.
type cliError struct {
	Error string `json:"error"`
	Exit  int    `json:"exit"`
	Usage string `json:"usage,omitempty"` // the command's usage line, for a usage error
}

// reportError prints a failed command's error on stderr and returns its
// exit status: text, with the usage after a usage error, or a JSON object
// when --json was asked for.
func reportError(stderr io.Writer, err error, asJSON bool) int {
	code := exitCode(err)
	if code == 0 {
		code = 2
	}
	var ue *usageError
	isUsage := errors.As(err, &ue)
	if isUsage {
		code = 2
	}
	if asJSON {
		ce := cliError{Error: err.Error(), Exit: code}
		if isUsage {
			ce.Usage = ue.cmd.UseLine()
			if ue.cmd.HasAvailableSubCommands() {
				ce.Usage = ue.cmd.CommandPath() + " [command]"
			}
		}
		b, _ := json.Marshal(ce)
		fmt.Fprintf(stderr, "%s\n", b)
		return code
	}
	fmt.Fprintf(stderr, "postwarden: %v\n", err)
	if isUsage {
		fmt.Fprintf(stderr, "\n%s", strings.TrimLeft(ue.cmd.UsageString(), "\n"))
	}
	return code
}
