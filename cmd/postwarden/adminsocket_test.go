package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/mtatest"
)

// An admin_socket that names a store file by mistake: serve refuses to
// start, names the path, and the store survives with its records.
func TestServeKeepsFileAtAdminSocketPath(t *testing.T) {
	h := newHarness(t, mtatest.Options{})
	h.mustRun(0, "suppress", "add", "gone@acme.example") // creates var/suppression.db with a record
	store := filepath.Join(h.dir, "var", "suppression.db")
	cfg := readFile(t, h.cfgPath) + "admin_socket: var/suppression.db\n"
	h.write("postwarden.yaml", cfg)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := serve(ctx, h.config(), zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
	if err == nil || !strings.Contains(err.Error(), store) {
		t.Errorf("serve = %v, want an error naming %s", err, store)
	}
	if fi, err := os.Lstat(store); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("the suppression store is gone: %v", err)
	}
	h.write("postwarden.yaml", strings.TrimSuffix(cfg, "admin_socket: var/suppression.db\n"))
	if out := h.mustRun(0, "suppress", "ls").stdout; !strings.Contains(out, "acme.example") {
		t.Errorf("suppression record lost:\n%s", out)
	}
}
