package storefile

import (
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// newStore writes a real bbolt file with a few hundred records and returns its path and id.
func newStore(t *testing.T) (string, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.db")
	db, id, err := Open(path, &bbolt.Options{Timeout: time.Second}, Expect{Name: "s"})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("data"))
		if err != nil {
			return err
		}
		for i := range 2000 {
			if err := b.Put([]byte(strings.Repeat("k", 10)+string(rune('a'+i%26))+time.Duration(i).String()), []byte(strings.Repeat("v", 100))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return path, id
}

// scribble overwrites pages [from, to) of path with pseudo-random bytes.
func scribble(t *testing.T, path string, from, to int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	r := rand.New(rand.NewSource(int64(from)))
	for p := from; p < to; p++ {
		r.Read(buf)
		if _, err := f.WriteAt(buf, int64(p)*4096); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOpenRefusesBadFiles(t *testing.T) {
	opts := &bbolt.Options{Timeout: time.Second}
	cases := []struct {
		name  string
		bad   func(t *testing.T, path string)
		x     Expect
		want  error
		after func(t *testing.T, path string)
	}{
		{"missing, must exist", func(t *testing.T, p string) { os.Remove(p) }, Expect{Exist: true}, ErrMissing, nil},
		{"empty", func(t *testing.T, p string) { os.Truncate(p, 0) }, Expect{}, ErrEmpty, func(t *testing.T, p string) {
			if fi, _ := os.Stat(p); fi.Size() != 0 {
				t.Fatalf("the empty file was written to: %d bytes", fi.Size())
			}
		}},
		{"cut to 8 KB", func(t *testing.T, p string) { os.Truncate(p, 8192) }, Expect{}, ErrDamaged, nil},
		{"cut in half", func(t *testing.T, p string) {
			fi, _ := os.Stat(p)
			os.Truncate(p, fi.Size()/2/4096*4096)
		}, Expect{}, ErrDamaged, nil},
		{"cut mid-page", func(t *testing.T, p string) {
			fi, _ := os.Stat(p)
			os.Truncate(p, fi.Size()-100)
		}, Expect{}, ErrDamaged, nil},
		{"both meta pages scribbled", func(t *testing.T, p string) { scribble(t, p, 0, 2) }, Expect{}, ErrDamaged, nil},
		{"data pages scribbled", func(t *testing.T, p string) { scribble(t, p, 2, 8) }, Expect{}, ErrDamaged, nil},
		{"another id", func(t *testing.T, p string) {}, Expect{ID: "someotherid"}, ErrWrongID, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path, _ := newStore(t)
			c.bad(t, path)
			db, _, err := Open(path, opts, c.x)
			if db != nil {
				db.Close()
			}
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("Open: %v, want %v naming %s", err, c.want, path)
			}
			if c.after != nil {
				c.after(t, path)
			}
		})
	}
}

func TestOpenKeepsIDAndCreatesOnlyWhenAllowed(t *testing.T) {
	path, id := newStore(t)
	db, got, err := Open(path, nil, Expect{ID: id, Exist: true})
	if err != nil || got != id {
		t.Fatalf("reopen: %q, %v; want id %q", got, err, id)
	}
	db.Close()
	if got, err := Inspect(path, Expect{ID: id}, time.Second); err != nil || got != id {
		t.Fatalf("Inspect: %q, %v", got, err)
	}
	missing := filepath.Join(t.TempDir(), "new.db")
	if _, _, err := Open(missing, nil, Expect{Exist: true}); !errors.Is(err, ErrMissing) {
		t.Fatalf("Open missing with Exist: %v", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a file was created: %v", err)
	}
}

// Inspect finds damage that Open leaves to `db check` on large files.
func TestInspectNamesDamage(t *testing.T) {
	path, id := newStore(t)
	scribble(t, path, 3, 7)
	if _, err := Inspect(path, Expect{ID: id}, time.Second); !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Inspect: %v", err)
	}
}

func TestGuardTurnsPanicIntoError(t *testing.T) {
	f := func() (err error) {
		defer Guard("/x/y.db", &err)()
		var m map[string]int
		m["boom"] = 1
		return nil
	}
	if err := f(); !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "/x/y.db") {
		t.Fatalf("Guard: %v", err)
	}
}

func TestManifestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if m, err := LoadManifest(dir); m != nil || err != nil {
		t.Fatalf("no manifest: %v %v", m, err)
	}
	m := &Manifest{Stores: map[string]string{"queue": "a", "audit": "b"}}
	if err := m.Save(dir); err != nil {
		t.Fatal(err)
	}
	got, err := LoadManifest(dir)
	if err != nil || got.Stores["queue"] != "a" || len(got.Names()) != 2 {
		t.Fatalf("LoadManifest: %+v %v", got, err)
	}
	os.WriteFile(filepath.Join(dir, ManifestFile), nil, 0o600)
	if _, err := LoadManifest(dir); err == nil || !strings.Contains(err.Error(), ManifestFile) {
		t.Fatalf("empty manifest: %v", err)
	}
}
