package main

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// copyDir copies the regular files of src into dst (created).
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	os.RemoveAll(dst)
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		if fi.IsDir() {
			return os.MkdirAll(to, 0o700)
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, fi.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// storeDamages are the ways a store file goes bad.
var storeDamages = map[string]func(t *testing.T, path string){
	"empty": func(t *testing.T, p string) {
		if err := os.Truncate(p, 0); err != nil {
			t.Fatal(err)
		}
	},
	"cut to 8 KB": func(t *testing.T, p string) {
		if err := os.Truncate(p, 8192); err != nil {
			t.Fatal(err)
		}
	},
	// Random bytes over every page but the two meta pages: bbolt opens the
	// file and then meets garbage (once "panic: invalid freelist page" or a
	// fatal fault on the mapped pages).
	"pages scribbled": func(t *testing.T, p string) {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fi, _ := f.Stat()
		r := rand.New(rand.NewSource(7))
		buf := make([]byte, 4096)
		for off := int64(2 * 4096); off < fi.Size(); off += 4096 {
			r.Read(buf)
			if _, err := f.WriteAt(buf, off); err != nil {
				t.Fatal(err)
			}
		}
	},
}

// Every command family, run as a real process against each store made empty,
// cut short or scribbled over, exits 2 with an error naming the file: no
// panic, no fatal fault, and the bad file is not replaced by a new store.
func TestBadStoreFilesAreErrors(t *testing.T) {
	bin := buildBinary(t)
	h := newHarness(t, mtatest.Options{})
	file := h.campaign("stores-1", "email,first_name,company\nana@acme.example,Ana,Acme\nbo@globex.example,Bo,Globex\n")
	h.mustRun(0, "campaign", "send", file)
	h.mustRun(0, "suppress", "add", "carl@initech.example")
	h.appendConfig("lists:\n  news: {name: \"Product news\", double_opt_in: false}\n")
	h.mustRun(0, "subscribers", "import", h.write("subs.csv", "email,name,company,consented_at,ip,source\ndee@umbrella.example,Dee,Umbrella,2025-01-02,192.0.2.1,fair\n"), "--list", "news")
	data := filepath.Join(h.dir, "var")
	good := filepath.Join(h.dir, "var.good")
	copyDir(t, data, good)

	commands := [][]string{
		{"queue", "stats"},
		{"queue", "ls"},
		{"campaign", "status", "stores-1"},
		{"campaign", "send", "--no-wait", file},
		{"suppress", "check", "carl@initech.example"},
		{"suppress", "add", "eve@acme.example"},
		{"subscribers", "ls"},
		{"audit", "verify"},
		{"db", "check"},
		{"serve"},
	}
	for _, store := range storeNames {
		for damage, bad := range storeDamages {
			t.Run(store+"/"+damage, func(t *testing.T) {
				copyDir(t, good, data)
				path := filepath.Join(data, store+".db")
				bad(t, path)
				before, _ := os.ReadFile(path)
				for _, args := range commands {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					cmd := exec.CommandContext(ctx, bin, append([]string{"-c", h.cfgPath}, args...)...)
					var stdout, stderr bytes.Buffer
					cmd.Stdout, cmd.Stderr = &stdout, &stderr
					err := cmd.Run()
					cancel()
					var ee *exec.ExitError
					code := 0
					if errors.As(err, &ee) {
						code = ee.ExitCode()
					} else if err != nil {
						t.Fatalf("%v: %v", args, err)
					}
					out := stdout.String() + stderr.String()
					if code != 2 || !strings.Contains(out, path) ||
						strings.Contains(out, "panic") || strings.Contains(out, "fatal error") || strings.Contains(out, "goroutine ") {
						t.Fatalf("postwarden %s: exit %d, want 2 naming %s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, path, stdout.String(), stderr.String())
					}
					if args[0] == "db" && !strings.Contains(stderr.String(), "db check: "+store) {
						t.Fatalf("db check does not name the %s store:\n%s", store, stderr.String())
					}
				}
				if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
					t.Fatalf("%s was changed by the commands (%d bytes, was %d)", path, len(after), len(before))
				}
			})
		}
	}
}

// Read-only commands against a mistyped data_dir say so and exit 2; they
// create no data directory, no store, no key.
func TestReadOnlyCommandsCreateNothing(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	cfg := strings.Replace(readConfig(t, h), "data_dir: var", "data_dir: vra", 1)
	h.write("postwarden.yaml", cfg)
	file := h.campaign("ro-1", "email,first_name,company\nana@acme.example,Ana,Acme\n")
	for _, args := range [][]string{
		{"dns"},
		{"check-dns", "example.com"},
		{"queue", "ls"},
		{"queue", "stats"},
		{"queue", "show", "x"},
		{"suppress", "check", "ana@acme.example"},
		{"suppress", "ls"},
		{"subscribers", "ls"},
		{"campaign", "status", "ro-1"},
		{"audit", "verify"},
		{"audit", "ls"},
		{"db", "check"},
	} {
		r := h.run(args...)
		if r.code != 2 || !strings.Contains(r.stderr, filepath.Join(h.dir, "vra")) {
			t.Fatalf("postwarden %s: exit %d, want 2 naming the data_dir\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
		if _, err := os.Stat(filepath.Join(h.dir, "vra")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("postwarden %s created the data directory", strings.Join(args, " "))
		}
	}
	// campaign validate reads no store, but a missing data_dir is a mistyped
	// config: it is named, exit 2, and nothing is created.
	if r := h.run("campaign", "validate", file); r.code != 2 || !strings.Contains(r.stderr, filepath.Join(h.dir, "vra")+" does not exist") {
		t.Fatalf("campaign validate: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(h.dir, "vra")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("campaign validate created the data directory")
	}
	// An existing but empty data directory: still nothing is created.
	if err := os.Mkdir(filepath.Join(h.dir, "vra"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"queue", "ls"}, {"suppress", "check", "ana@acme.example"}, {"dns"}} {
		if r := h.run(args...); r.code != 2 {
			t.Fatalf("postwarden %s in an empty data_dir: exit %d\n%s", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(h.dir, "vra")); len(ents) != 0 {
		t.Fatalf("read-only commands created %v", ents)
	}
}

// A data directory knows its stores: one that goes missing, or is swapped
// for another data directory's, is refused; `db init` starts it empty on
// purpose, keeping the old file aside.
func TestStoreManifest(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.mustRun(0, "suppress", "add", "carl@initech.example")
	data := filepath.Join(h.dir, "var")
	manifest, err := os.ReadFile(filepath.Join(data, "stores.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range storeNames {
		if !strings.Contains(string(manifest), `"`+n+`"`) {
			t.Fatalf("stores.json lacks %s:\n%s", n, manifest)
		}
	}

	// Deleted: no silent fresh store, for writing commands too.
	supp := filepath.Join(data, "suppression.db")
	os.Rename(supp, supp+".away")
	for _, args := range [][]string{{"suppress", "check", "carl@initech.example"}, {"suppress", "add", "x@acme.example"}} {
		if r := h.run(args...); r.code != 2 || !strings.Contains(r.stderr, supp) || !strings.Contains(r.stderr, "db init suppression") {
			t.Fatalf("missing store, postwarden %s: exit %d\n%s", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	if _, err := os.Stat(supp); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a new suppression.db was created")
	}

	// Swapped for another data directory's file.
	other := newHarness(t, mtatest.Options{})
	other.mustRun(0, "suppress", "add", "dan@acme.example")
	b, _ := os.ReadFile(filepath.Join(other.dir, "var", "suppression.db"))
	os.WriteFile(supp, b, 0o600)
	if r := h.run("suppress", "ls"); r.code != 2 || !strings.Contains(r.stderr, "store id") {
		t.Fatalf("swapped store: exit %d\n%s", r.code, r.stderr)
	}
	if r := h.run("db", "check"); r.code != 2 || !strings.Contains(r.stderr, "suppression") {
		t.Fatalf("db check on a swapped store: exit %d\n%s", r.code, r.stderr)
	}

	// The right file back: all good again.
	os.Rename(supp+".away", supp)
	h.mustRun(0, "suppress", "check", "carl@initech.example")
	h.mustRun(0, "db", "check")

	// db init starts it empty, knowingly, and keeps the old one.
	os.Truncate(supp, 0)
	r := h.mustRun(0, "db", "init", "suppression")
	if !strings.Contains(r.stdout, "kept as") {
		t.Fatalf("db init: %s", r.stdout)
	}
	h.mustRun(1, "suppress", "check", "carl@initech.example")
	h.mustRun(0, "db", "check")
	if m, _ := filepath.Glob(supp + ".replaced-*"); len(m) != 1 {
		t.Fatalf("old file not kept: %v", m)
	}
}

// A data directory from before the manifest keeps working: its stores are
// adopted; an empty file among them is not.
func TestStoresWithoutManifestAreAdopted(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.mustRun(0, "suppress", "add", "carl@initech.example")
	data := filepath.Join(h.dir, "var")
	os.Remove(filepath.Join(data, "stores.json"))
	os.Truncate(filepath.Join(data, "audit.db"), 0)
	if r := h.run("suppress", "check", "carl@initech.example"); r.code != 2 || !strings.Contains(r.stderr, "audit.db") {
		t.Fatalf("empty audit.db adopted: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(data, "stores.json")); err == nil {
		t.Fatal("a manifest was written although a store is empty")
	}
	h.mustRun(0, "db", "init", "audit")
	h.mustRun(0, "suppress", "check", "carl@initech.example")
	if _, err := os.Stat(filepath.Join(data, "stores.json")); err != nil {
		t.Fatalf("stores not adopted: %v", err)
	}
	h.mustRun(0, "db", "check")
}

// A serve that has to generate its DKIM key says so in the audit log.
func TestServeAuditsGeneratedDKIMKey(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.serve()
	r := h.mustRun(0, "audit", "ls")
	if !strings.Contains(r.stdout, "dkim.generated") {
		t.Fatalf("no dkim.generated entry:\n%s", r.stdout)
	}
}

// db check beside a running daemon says which stores it could not check and why.
func TestDBCheckBesideDaemon(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.serve()
	r := h.run("db", "check")
	if r.code != 2 || !strings.Contains(r.stdout, "not checked") || !strings.Contains(r.stdout, "postwarden serve") {
		t.Fatalf("db check beside serve: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
}
