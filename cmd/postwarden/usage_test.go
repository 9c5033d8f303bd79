package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/postwarden/postwarden/mta/mtatest"
)

func runArgs(args ...string) result {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// Unknown verbs, a missing verb, bad flags and wrong arguments exit 2 with
// the usage on stderr, at every level of the command tree (cobra alone
// prints a group's help and exits 0 for `postwarden queue bogus`).
func TestUsageErrorsExitTwo(t *testing.T) {
	cases := [][]string{
		{"bogus"},
		{"queue", "ls", "--bogus"},
		{"suppress", "check"},
		{"suppress", "check", "a@b.example", "c@d.example"},
	}
	var groups func(*cobra.Command)
	groups = func(cmd *cobra.Command) {
		if !cmd.HasSubCommands() {
			return
		}
		path := strings.Fields(cmd.CommandPath())[1:]
		cases = append(cases, append(append([]string{}, path...), "nosuchverb"))
		// A pure group refuses a missing verb; a verb with verbs of its own
		// (queue suspend) runs and answers for itself.
		if len(path) > 0 && cmd.Annotations[groupAnnotation] == "true" {
			cases = append(cases, path)
		}
		for _, sub := range cmd.Commands() {
			groups(sub)
		}
	}
	groups((&cli{}).rootCommand())
	if len(cases) < 15 {
		t.Fatalf("only %d cases: the command tree was not walked", len(cases))
	}
	for _, args := range cases {
		r := runArgs(args...)
		if r.code != 2 || r.stdout != "" || !strings.HasPrefix(r.stderr, "postwarden: ") || !strings.Contains(r.stderr, "\nUsage:\n") ||
			!strings.Contains(r.stderr, "Exit status:") {
			t.Errorf("%q: exit %d, stdout %q, stderr:\n%s", args, r.code, r.stdout, r.stderr)
		}
	}
	// The usage of a group lists its verbs, not a run of the group itself.
	if r := runArgs("queue", "bogus"); !strings.Contains(r.stderr, "postwarden queue [command]") || strings.Contains(r.stderr, "postwarden queue [flags]") ||
		!strings.Contains(r.stderr, `unknown command "bogus" for "postwarden queue"`) {
		t.Errorf("queue bogus:\n%s", r.stderr)
	}
	// Help still exits 0, and ends with the exit codes.
	if r := runArgs("queue", "ls", "--help"); r.code != 0 || !strings.Contains(r.stdout, "Exit status:") {
		t.Errorf("queue ls --help: exit %d\n%s", r.code, r.stdout)
	}
}

// With --json, a failed command's error is one JSON object on stderr,
// usage errors, errors before the op and the op's own alike.
func TestJSONErrorsOnStderr(t *testing.T) {
	check := func(name string, r result, code int, usage bool) {
		t.Helper()
		var ce cliError
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if r.code != code || len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &ce) != nil || ce.Exit != code || ce.Error == "" || (ce.Usage != "") != usage {
			t.Errorf("%s: exit %d, stderr:\n%s", name, r.code, r.stderr)
		}
	}
	check("unknown verb", runArgs("--json", "queue", "bogus"), 2, true)
	check("bad flag", runArgs("queue", "ls", "--json", "--bogus"), 2, true)
	check("missing config", runArgs("--json", "-c", t.TempDir()+"/none.yaml", "queue", "ls"), 2, false)
	h := newHarness(t, mtatest.Options{})
	h.mustRun(0, "campaign", "send", h.campaign("json-1", "email,first_name,company\nana@acme.example,Ana,Acme\n"))
	check("op's answer", h.run("--json", "queue", "show", "0000000000000000"), 1, false)
	// Without --json the same answers stay text.
	if r := h.run("queue", "show", "0000000000000000"); r.code != 1 || !strings.HasPrefix(r.stderr, "postwarden: ") {
		t.Errorf("text: exit %d, stderr %q", r.code, r.stderr)
	}
}

// Every duration a log line carries says its unit in its name: zerolog's
// Dur writes milliseconds (DurationFieldUnit, left at its default), so
// the field ends in _ms.
func TestLogDurationsNameTheirUnit(t *testing.T) {
	if zerolog.DurationFieldUnit != time.Millisecond {
		t.Fatalf("zerolog.DurationFieldUnit is %v", zerolog.DurationFieldUnit)
	}
	durField := regexp.MustCompile(`\.Dur\("([^"]+)"`)
	seen := 0
	err := filepath.WalkDir("../..", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range durField.FindAllStringSubmatch(string(src), -1) {
			seen++
			if !strings.HasSuffix(m[1], "_ms") {
				t.Errorf("%s: log field %q is a duration in milliseconds: name it %s_ms", p, m[1], m[1])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen == 0 {
		t.Fatal("no .Dur field found: the walk read nothing")
	}
}

// `suppress add --reason` names its allowed values in its help and in the
// error for a wrong one, from the one list the store checks.
func TestSuppressReasonsListed(t *testing.T) {
	want := "unsubscribed, hard_bounce, complaint, manual, erased or restricted"
	if r := runArgs("suppress", "add", "--help"); r.code != 0 || !strings.Contains(r.stdout, want) {
		t.Errorf("help: %s", r.stdout)
	}
	h := newHarness(t, mtatest.Options{})
	if r := h.mustRun(2, "suppress", "add", "ana@acme.example", "--reason", "bored"); !strings.Contains(r.stderr, want) {
		t.Errorf("error: %q", r.stderr)
	}
}

// Every verb's help shows examples, then the exit codes.
func TestEveryVerbHasExamples(t *testing.T) {
	var walk func(*cobra.Command)
	n := 0
	walk = func(cmd *cobra.Command) {
		if cmd.Runnable() && cmd.Annotations[groupAnnotation] == "" && !cmd.Hidden && cmd.Name() != "help" && cmd.Name() != "completion" {
			n++
			if cmd.Example == "" {
				t.Errorf("%s has no examples", cmd.CommandPath())
			}
		}
		for _, sub := range cmd.Commands() {
			walk(sub)
		}
	}
	walk((&cli{}).rootCommand())
	if n < 40 {
		t.Fatalf("only %d verbs walked", n)
	}
	r := runArgs("queue", "retry", "--help")
	if i, j := strings.Index(r.stdout, "Examples:"), strings.Index(r.stdout, "Exit status:"); i < 0 || j < i {
		t.Errorf("queue retry --help:\n%s", r.stdout)
	}
}
