package natsnode

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	"github.com/rs/zerolog"
)

// authServer starts a nats-server with JetStream that takes the nkey user
// pub and the user "pw" with password "hunter2".
func authServer(t *testing.T, pub string) string {
	t.Helper()
	srv, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(), NoSigs: true,
		Nkeys: []*server.NkeyUser{{Nkey: pub}},
		Users: []*server.User{{Username: "pw", Password: "hunter2"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(30 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	return srv.Addr().String()
}

// TestCredentials: an nkey seed file and a user and password in the URL
// both get in; no credentials does not; the password is never logged.
func TestCredentials(t *testing.T) {
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := user.Seed()
	pub, _ := user.PublicKey()
	addr := authServer(t, pub)
	seedFile := filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := zerolog.New(zerolog.SyncWriter(&logs)).Level(zerolog.DebugLevel)
	ctx := context.Background()

	for _, c := range []struct {
		name string
		cfg  Config
	}{
		{"nkey seed", Config{Node: "n1", URLs: []string{"nats://" + addr}, Credentials: seedFile, FailFast: true}},
		{"user and password", Config{Node: "n1", URLs: []string{"nats://pw:hunter2@" + addr}, FailFast: true}},
	} {
		n, err := Start(ctx, c.cfg, log)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if st := n.State(); !st.Connected || strings.Contains(st.Server, "hunter2") {
			t.Errorf("%s: state %+v", c.name, st)
		}
		n.Close()
	}
	if _, err := Start(ctx, Config{Node: "n1", URLs: []string{"nats://" + addr}, FailFast: true, ReadyTimeout: -1}, log); err == nil {
		t.Error("no credentials: connected")
	}
	if _, err := Start(ctx, Config{Node: "n1", URLs: []string{"nats://pw:wrong@" + addr}, FailFast: true, ReadyTimeout: -1}, log); err == nil || strings.Contains(err.Error(), "wrong") {
		t.Errorf("bad password: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.creds")
	os.WriteFile(bad, []byte("not a credential\n"), 0o600)
	if _, err := Start(ctx, Config{Node: "n1", URLs: []string{"nats://" + addr}, Credentials: bad, FailFast: true}, log); err == nil || !strings.Contains(err.Error(), "neither a .creds file nor a user nkey seed") {
		t.Errorf("bad credentials file: %v", err)
	}
	if strings.Contains(logs.String(), "hunter2") || strings.Contains(logs.String(), string(seed)) {
		t.Errorf("a secret was logged:\n%s", logs.String())
	}
}
