package compact

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// Deleted bytes stay in a bbolt file until Rewrite; after it they are gone,
// and what was kept is still there.
func TestRewriteDropsDeletedBytes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("marguerite.okonkwo@acme.example")
	err = db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucket([]byte("b"))
		if err != nil {
			return err
		}
		if err := b.Put([]byte("keep"), []byte("kept value")); err != nil {
			return err
		}
		return b.Put([]byte("gone"), secret)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error { return tx.Bucket([]byte("b")).Delete([]byte("gone")) }); err != nil {
		t.Fatal(err)
	}
	if raw, _ := os.ReadFile(path); !bytes.Contains(raw, secret) {
		t.Skip("bbolt already overwrote the freed page; nothing to prove here")
	}
	if err := Rewrite(db, path, time.Second); err != nil {
		t.Fatal(err)
	}
	db.Close()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, secret) {
		t.Error("deleted bytes survive the rewrite")
	}
	db, err = bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bbolt.Tx) error {
		if v := tx.Bucket([]byte("b")).Get([]byte("keep")); string(v) != "kept value" {
			t.Errorf("kept value = %q", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + ".compact"); !os.IsNotExist(err) {
		t.Errorf("temp file left: %v", err)
	}
}
