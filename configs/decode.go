// Package configs loads postwarden's YAML files: the server configuration and
// campaign files. Decoding walks the yaml.Node tree so that every problem —
// unknown key, wrong type, missing or bad value — is reported at once as
// "file:line: field: problem". Relative paths are resolved against the folder
// of the file that names them; defaults are applied in one place.
package configs

import (
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Errors is every problem found in one file; it is returned as the error.
type Errors []error

// Error joins the problems with newlines.
func (e Errors) Error() string {
	s := make([]string, len(e))
	for i, err := range e {
		s[i] = err.Error()
	}
	return strings.Join(s, "\n")
}

// Unwrap gives errors.Is and errors.As access to each problem.
func (e Errors) Unwrap() []error { return e }

// decoder walks one file's node tree, collecting problems and key lines.
type decoder struct {
	file  string         // as named in messages
	errs  []lineError    // everything found so far
	lines map[string]int // dotted key path → line
	// failed holds paths already reported as missing or mistyped, so the
	// value checks that follow do not report them twice.
	failed map[string]bool
}

func newDecoder(file string) *decoder {
	return &decoder{file: file, lines: map[string]int{}, failed: map[string]bool{}}
}

// typeErr records that the value at path is not what was expected.
func (d *decoder) typeErr(path string, v *yaml.Node, want string) {
	d.failed[path] = true
	d.errf(v.Line, "%s: expected %s", short(path), want)
}

// lineError is one problem and the line it is reported at, for sorting.
type lineError struct {
	line int
	err  error
}

// errf records a problem at line.
func (d *decoder) errf(line int, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if len(msg) > maxProblem { // a last bound, whatever a site echoes
		msg = strings.ToValidUTF8(msg[:maxProblem], "") + fmt.Sprintf("… (%d bytes)", len(msg))
	}
	d.errs = append(d.errs, lineError{line, fmt.Errorf("%s:%d: %s", d.file, line, msg)})
}

// maxProblem bounds one problem's text in bytes: sites quote bad values
// with Quote and paths with short; this catches any that does not.
const maxProblem = 1024

// fieldErr records a problem with the field at path, at the field's line
// (or line 1 when the field is absent from the file). Paths under one already
// reported as missing or mistyped are skipped.
func (d *decoder) fieldErr(path, format string, args ...any) {
	for p := path; p != ""; p = parent(p) {
		if d.failed[p] {
			return
		}
	}
	line := 1
	for p := path; p != ""; p = parent(p) { // an absent key is reported where its parent is
		if l := d.lines[p]; l != 0 {
			line = l
			break
		}
	}
	d.errf(line, "%s: %s", short(path), fmt.Sprintf(format, args...))
}

// maxQuoted is how many characters of a bad value an error quotes.
const maxQuoted = 80

// Quote returns v quoted (%q) for an error message, cut to its first 80
// characters and marked "…" when longer, so a huge value is never echoed.
func Quote(v string) string {
	r := []rune(v)
	if len(r) <= maxQuoted {
		return strconv.Quote(v)
	}
	return strconv.Quote(string(r[:maxQuoted])) + fmt.Sprintf("… (%d bytes)", len(v))
}

// short cuts v, a key or a path holding keys from the file, to its first
// 80 characters marked "…", for an error that names it unquoted.
func short(v string) string {
	r := []rune(v)
	if len(r) <= maxQuoted {
		return v
	}
	return string(r[:maxQuoted]) + "…"
}

// fileErr is err from reading the file at path, a value from a config, with
// path cut by short (an *fs.PathError names all of it); it wraps the cause,
// so errors.Is(err, fs.ErrNotExist) still holds.
func fileErr(what, path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %s %s: %w", what, pe.Op, short(pe.Path), pe.Err)
	}
	return fmt.Errorf("%s: %s: %w", what, short(path), err)
}

// parent cuts the last ".key" or "[i]" from a path.
func parent(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// err returns the collected problems in line order, or nil.
func (d *decoder) err() error {
	if len(d.errs) == 0 {
		return nil
	}
	sort.SliceStable(d.errs, func(i, j int) bool { return d.errs[i].line < d.errs[j].line })
	out := make(Errors, len(d.errs))
	for i, e := range d.errs {
		out[i] = e.err
	}
	return out
}

// document parses data and returns its top-level mapping, or nil after
// recording why there is none.
func (d *decoder) document(data []byte) *yaml.Node {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		// yaml.v3 syntax errors read "yaml: line 3: …"; keep them whole.
		d.errs = append(d.errs, lineError{0, fmt.Errorf("%s: %w", d.file, err)})
		return nil
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		d.errf(1, "empty file, expected a mapping of keys")
		return nil
	}
	n := resolve(doc.Content[0])
	if n.Kind != yaml.MappingNode {
		d.errf(n.Line, "expected a mapping of keys at the top level")
		return nil
	}
	return n
}

// resolve follows an alias.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// fields decodes mapping node n: each known key's value goes to its function,
// unknown and repeated keys are problems, and each key's line is recorded
// under prefix+key. Missing required keys are reported at the mapping's line.
func (d *decoder) fields(n *yaml.Node, prefix string, known map[string]func(path string, v *yaml.Node), required ...string) {
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		path := prefix + k.Value
		fn, ok := known[k.Value]
		switch {
		case k.Kind != yaml.ScalarNode || !ok:
			d.errf(k.Line, "unknown key %s", Quote(prefix+k.Value))
		case seen[k.Value]:
			d.errf(k.Line, "%s: repeated key (first at line %d)", path, d.lines[path])
		default:
			seen[k.Value] = true
			d.lines[path] = k.Line
			fn(path, v)
		}
	}
	for _, r := range required {
		if !seen[r] {
			d.failed[prefix+r] = true
			d.errf(n.Line, "missing required key %s", Quote(prefix+r))
		}
	}
}

// null reports whether v is an empty value ("key:" or "key: null").
func null(v *yaml.Node) bool {
	return v.Kind == yaml.ScalarNode && v.ShortTag() == "!!null"
}

// str decodes a string; null leaves it empty.
func (d *decoder) str(dst *string) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) {
			return
		}
		if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!str" {
			d.typeErr(path, v, "a string")
			return
		}
		*dst = v.Value
	}
}

// integer decodes an int; null leaves it zero.
func (d *decoder) integer(dst *int) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) {
			return
		}
		n, err := strconv.Atoi(v.Value)
		if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!int" || err != nil {
			d.typeErr(path, v, "an integer")
			return
		}
		*dst = n
	}
}

// duration decodes a duration string; null leaves it zero.
func (d *decoder) duration(dst *time.Duration) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) {
			return
		}
		dur, err := d.parseDuration(path, v)
		if err == nil {
			*dst = dur
		}
	}
}

// durations decodes a sequence of durations; null leaves it nil.
func (d *decoder) durations(dst *[]time.Duration) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) {
			return
		}
		if v.Kind != yaml.SequenceNode {
			d.typeErr(path, v, "a list of durations such as [5m, 1h]")
			return
		}
		out := []time.Duration{}
		for i, e := range v.Content {
			dur, err := d.parseDuration(fmt.Sprintf("%s[%d]", path, i), resolve(e))
			if err == nil {
				out = append(out, dur)
			}
		}
		*dst = out
	}
}

// stringMap decodes a mapping of strings to strings; null leaves it nil.
func (d *decoder) stringMap(dst *map[string]string) func(string, *yaml.Node) {
	return d.mapOf(dst, "a string", func(v *yaml.Node) bool { return v.ShortTag() == "!!str" })
}

// scalarMap decodes a mapping whose values are strings or numbers, kept as
// text ("rates: {default: 0, gmail.com: 20/s}").
func (d *decoder) scalarMap(dst *map[string]string) func(string, *yaml.Node) {
	return d.mapOf(dst, "a string or a number", func(v *yaml.Node) bool {
		t := v.ShortTag()
		return t == "!!str" || t == "!!int" || t == "!!float"
	})
}

// mapOf decodes a mapping of scalars accepted by ok; null leaves it nil.
func (d *decoder) mapOf(dst *map[string]string, want string, ok func(*yaml.Node) bool) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) {
			return
		}
		if v.Kind != yaml.MappingNode {
			d.typeErr(path, v, "a mapping")
			return
		}
		out := map[string]string{}
		for i := 0; i+1 < len(v.Content); i += 2 {
			k, e := resolve(v.Content[i]), resolve(v.Content[i+1])
			if k.Kind != yaml.ScalarNode || e.Kind != yaml.ScalarNode || !ok(e) {
				d.errf(k.Line, "%s: %s: expected %s", short(path), short(k.Value), want)
				continue
			}
			if _, dup := out[k.Value]; dup {
				d.errf(k.Line, "%s: %s: repeated key", short(path), short(k.Value))
			}
			out[k.Value] = e.Value
			d.lines[path+"."+k.Value] = k.Line
		}
		*dst = out
	}
}

// scalarStr decodes a string or a number as text; null leaves it empty.
func (d *decoder) scalarStr(dst *string) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) {
			return
		}
		t := v.ShortTag()
		if v.Kind != yaml.ScalarNode || (t != "!!str" && t != "!!int" && t != "!!float") {
			d.typeErr(path, v, "a string or a number")
			return
		}
		*dst = v.Value
	}
}

// boolean decodes true or false; null leaves it false.
func (d *decoder) boolean(dst *bool) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) {
			return
		}
		b, err := strconv.ParseBool(v.Value)
		if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!bool" || err != nil {
			d.typeErr(path, v, "true or false")
			return
		}
		*dst = b
	}
}

// ParseRate reads a message rate: "0" (unlimited), "20/s", "300/m",
// "1000/h"; it returns messages per second.
func ParseRate(s string) (float64, error) {
	s = strings.TrimSpace(s)
	if s == "0" {
		return 0, nil
	}
	num, unit, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("rate %s: want N/s, N/m or N/h (or 0 for unlimited)", Quote(s))
	}
	n, err := strconv.ParseFloat(num, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("rate %s: %s is not a non-negative number", Quote(s), Quote(num))
	}
	switch unit {
	case "s":
		return n, nil
	case "m":
		return n / 60, nil
	case "h":
		return n / 3600, nil
	}
	return 0, fmt.Errorf("rate %s: unit must be s, m or h", Quote(s))
}

// dayPrefix matches the day part of "7d" or "1d12h".
var dayPrefix = regexp.MustCompile(`^(\d+)d(.*)$`)

// parseDuration reads Go duration syntax plus a leading "<n>d" day count.
func (d *decoder) parseDuration(path string, v *yaml.Node) (time.Duration, error) {
	bad := func() (time.Duration, error) {
		d.failed[path] = true
		d.errf(v.Line, "%s: %s is not a duration (use e.g. 30m, 4h, 7d, 1d12h)", path, Quote(v.Value))
		return 0, fmt.Errorf("bad duration")
	}
	if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!str" {
		return bad()
	}
	dur, err := ParseDuration(v.Value)
	if err != nil {
		return bad()
	}
	if dur <= 0 {
		d.failed[path] = true
		d.errf(v.Line, "%s: %s must be positive", path, Quote(v.Value))
		return 0, fmt.Errorf("bad duration")
	}
	return dur, nil
}

// ParseDuration reads Go duration syntax ("90m", "4h") plus a leading day
// count with the "d" suffix ("7d", "1d12h").
func ParseDuration(s string) (time.Duration, error) {
	// time.ParseDuration's errors quote all of s: they are not passed on.
	bad := fmt.Errorf("duration %s: want e.g. 30m, 4h, 7d, 1d12h", Quote(s))
	m := dayPrefix.FindStringSubmatch(s)
	if m == nil {
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, bad
		}
		return d, nil
	}
	days, err := strconv.Atoi(m[1])
	if err != nil || days > 100000 {
		return 0, fmt.Errorf("duration %s: day count out of range", Quote(s))
	}
	total := time.Duration(days) * 24 * time.Hour
	if m[2] != "" {
		rest, err := time.ParseDuration(m[2])
		if err != nil {
			return 0, bad
		}
		total += rest
	}
	return total, nil
}
