package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	pathpkg "path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
)

// modulePath is the module of this repository; graph keys are relative to it.
const modulePath = "github.com/postwarden/postwarden"

// allowed lists today's exceptions to the layering rules as "from -> to"
// (module-relative package paths) with the issue that will remove each; an
// entry silences that one edge only. There is none today.
var allowed = map[string]string{}

// pkgInfo is one package of the module as go list reports it, with module
// paths made relative ("queue", "mta/inbound").
type pkgInfo struct {
	Path        string
	Imports     []string // module packages imported outside tests
	Deps        []string // module packages depended on, transitively, outside tests
	ExtDeps     []string // every other package depended on, transitively
	TestImports []string // module packages imported by _test.go files of either package
}

// goTool returns the go command of the toolchain running the test.
func goTool(t *testing.T) string {
	t.Helper()
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	p, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go tool to read the import graph: %v", err)
	}
	return p
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// moduleGraph runs go list over the whole module and returns its root folder and
// its packages by relative path.
func moduleGraph(t *testing.T) (string, map[string]*pkgInfo) {
	t.Helper()
	goBin := goTool(t)
	root, err := exec.Command(goBin, "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	cmd := exec.Command(goBin, "list", "-json", modulePath+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -json %s/...: %v\n%s", modulePath, err, stderr.String())
	}
	rel := func(p string) (string, bool) {
		if r, ok := strings.CutPrefix(p, modulePath+"/"); ok {
			return r, true
		}
		return p, p == modulePath
	}
	internal := func(paths []string) []string {
		var r []string
		for _, p := range paths {
			if q, ok := rel(p); ok {
				r = append(r, q)
			}
		}
		return r
	}
	external := func(paths []string) []string {
		var r []string
		for _, p := range paths {
			if _, ok := rel(p); !ok {
				r = append(r, p)
			}
		}
		return r
	}
	pkgs := map[string]*pkgInfo{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			ImportPath                string
			Imports, Deps             []string
			TestImports, XTestImports []string
			Error                     *struct{ Err string }
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("go list -json: %v", err)
		}
		if p.Error != nil {
			t.Fatalf("go list: %s: %s", p.ImportPath, p.Error.Err)
		}
		path, _ := rel(p.ImportPath)
		pkgs[path] = &pkgInfo{
			Path:        path,
			Imports:     internal(p.Imports),
			Deps:        internal(p.Deps),
			ExtDeps:     external(p.Deps),
			TestImports: internal(append(slices.Clone(p.TestImports), p.XTestImports...)),
		}
	}
	if len(pkgs) == 0 {
		t.Fatal("go list found no package in the module")
	}
	return strings.TrimSpace(string(root)), pkgs
}

// under reports whether pkg is dir or inside it ("mta" covers "mta/inbound").
func under(pkg, dir string) bool {
	return pkg == dir || strings.HasPrefix(pkg, dir+"/")
}

// chain returns an import path from -> ... -> to over module packages, outside
// tests, for the failure message.
func chain(pkgs map[string]*pkgInfo, from, to string) string {
	prev := map[string]string{from: ""}
	next := []string{from}
	for len(next) > 0 {
		cur := next[0]
		next = next[1:]
		if cur == to {
			var path []string
			for p := to; p != ""; p = prev[p] {
				path = append([]string{p}, path...)
			}
			return strings.Join(path, " -> ")
		}
		if pk := pkgs[cur]; pk != nil {
			for _, imp := range pk.Imports {
				if _, seen := prev[imp]; !seen {
					prev[imp] = cur
					next = append(next, imp)
				}
			}
		}
	}
	return from + " -> ... -> " + to
}

// layerRule is one of the layering rules of docs/architecture.md: no package
// that from selects depends (transitively, outside tests) on one that forbidden
// selects.
type layerRule struct {
	n         int
	from      func(pkg string) bool
	forbidden func(dep string) bool
}

// layerRules are the numbered rules of docs/architecture.md, "Layering rules".
// Rule 1 (nothing imports cmd or bench, not even a test) and rule 8 (test-support
// packages only in tests and bench) are checked on direct and test imports in
// TestArchitecture itself.
var layerRules = []layerRule{
	{2, func(p string) bool { return p == "templates" }, func(d string) bool {
		return d == "queue" || d == "campaign" || under(d, "mta") ||
			(under(d, "suppression") && d != "suppression/address")
	}},
	{3, func(p string) bool { return p == "queue" }, func(d string) bool {
		return under(d, "mta") || d == "campaign"
	}},
	{4, func(p string) bool { return p == "campaign" }, func(d string) bool {
		return under(d, "mta") || d == "queue"
	}},
	{5, func(p string) bool { return under(p, "mta") }, func(d string) bool {
		return d == "queue" || d == "campaign"
	}},
	{6, func(p string) bool { return under(p, "suppression") }, func(d string) bool {
		return d == "queue" || under(d, "mta") || d == "campaign" || d == "templates"
	}},
	{7, func(p string) bool { return !under(p, "cmd") && !under(p, "bench") }, func(d string) bool {
		return d == "configs"
	}},
	{7, func(p string) bool { return p == "configs" }, func(d string) bool {
		return d == "campaign" || d == "templates" || under(d, "mta/inbound")
	}},
	{9, func(p string) bool { return p == "suppression/address" }, func(string) bool { return true }},
	{10, func(p string) bool { return !under(p, "cmd") && !under(p, "bench") }, func(d string) bool {
		return d == "queue/campaignq"
	}},
	{11, func(p string) bool { return under(p, "campaign/shares") }, func(d string) bool {
		return under(d, "queue") || under(d, "mta") || d == "campaign"
	}},
	{12, func(p string) bool { return under(p, "campaign/report") }, func(d string) bool {
		return under(d, "queue") || under(d, "mta")
	}},
}

// TestArchitecture keeps docs/architecture.md true: its dependency table matches
// the module's real import graph row by row, and no package breaks a layering
// rule listed there.
func TestArchitecture(t *testing.T) {
	root, pkgs := moduleGraph(t)
	names := make([]string, 0, len(pkgs))
	for p := range pkgs {
		names = append(names, p)
	}
	sort.Strings(names)

	violation := func(rule int, from, to string) {
		t.Helper()
		if reason, ok := allowed[from+" -> "+to]; ok {
			t.Logf("allowed exception to rule %d: %s depends on %s (%s)", rule, from, to, reason)
			return
		}
		t.Errorf("layering rule %d of docs/architecture.md: %s must not depend on %s, but %s",
			rule, from, to, chain(pkgs, from, to))
	}

	for _, name := range names {
		p := pkgs[name]
		// Rule 1: nothing imports cmd/... or bench/..., not even a test; only
		// cmd/... imports cmd/internal/... (the binary's own helpers).
		for _, imp := range append(slices.Clone(p.Imports), p.TestImports...) {
			if under(imp, "cmd/internal") && under(name, "cmd") {
				continue
			}
			if (under(imp, "cmd") || under(imp, "bench")) && imp != name {
				violation(1, name, imp)
			}
		}
		// Rule 8: test-support packages (mtatest, bouncetest) only in tests and bench/...
		if !under(name, "bench") {
			for _, imp := range p.Imports {
				if strings.HasSuffix(pathpkg.Base(imp), "test") {
					violation(8, name, imp)
				}
			}
		}
		for _, r := range layerRules {
			if !r.from(name) {
				continue
			}
			for _, dep := range p.Deps {
				if r.forbidden(dep) {
					violation(r.n, name, dep)
				}
			}
		}
	}
	// Rule 2: templates depends on no store, so not on bbolt at all.
	if tp := pkgs["templates"]; tp != nil {
		for _, d := range tp.ExtDeps {
			if under(d, "go.etcd.io/bbolt") {
				violation(2, "templates", d)
			}
		}
	}

	docPath := filepath.Join(root, "docs", "architecture.md")
	doc, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	rows := dependencyTable(t, string(doc))
	for _, name := range names {
		want := formatImports(pkgs[name].Imports)
		got, ok := rows[name]
		if !ok {
			t.Errorf("docs/architecture.md: package %s has no row in the dependency table; add:\n| `%s` | %s | (outside the module); (what it is) |",
				name, name, want)
			continue
		}
		if got != want {
			t.Errorf("docs/architecture.md: the row of %s says it imports %s; go list says %s: write that in the second column",
				name, got, want)
		}
	}
	for name := range rows {
		if _, ok := pkgs[name]; !ok {
			t.Errorf("docs/architecture.md: the dependency table has a row for %s, which is no package of the module: remove it", name)
		}
	}
}

// tableRow matches a row of the dependency table: | `pkg` | imports | ... |
var tableRow = regexp.MustCompile("^\\| `([a-z0-9/_.-]+)` \\| ([^|]*) \\|")

// dependencyTable returns the rows of the table under "## Package dependencies"
// as package -> imports column, normalised by formatImports.
func dependencyTable(t *testing.T, doc string) map[string]string {
	t.Helper()
	_, section, ok := strings.Cut(doc, "\n## Package dependencies\n")
	if !ok {
		t.Fatal(`docs/architecture.md: no "## Package dependencies" section`)
	}
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	rows := map[string]string{}
	for _, line := range strings.Split(section, "\n") {
		m := tableRow.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if _, dup := rows[m[1]]; dup {
			t.Errorf("docs/architecture.md: two rows for %s", m[1])
		}
		var imps []string
		for _, f := range strings.Split(m[2], ",") {
			f = strings.Trim(strings.TrimSpace(f), "`")
			if f != "" && f != "—" {
				imps = append(imps, f)
			}
		}
		rows[m[1]] = formatImports(imps)
	}
	if len(rows) == 0 {
		t.Fatal("docs/architecture.md: the dependency table has no rows")
	}
	return rows
}

// formatImports writes a list of module packages as the table's second column.
func formatImports(imps []string) string {
	if len(imps) == 0 {
		return "—"
	}
	s := slices.Clone(imps)
	sort.Strings(s)
	for i := range s {
		s[i] = "`" + s[i] + "`"
	}
	return strings.Join(s, ", ")
}
