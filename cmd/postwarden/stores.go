package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/storefile"
	"github.com/postwarden/postwarden/suppression/subscribers"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// storeNames are the stores of a data directory, in opening order; each
// lives in <data_dir>/<name>.db and is listed in <data_dir>/stores.json.
var storeNames = []string{"suppression", "queue", "subscribers", "audit"}

func storePath(cfg *configs.Server, name string) string {
	return filepath.Join(cfg.DataDir, name+".db")
}

// openStore opens one store into e with what the data directory knows of it.
func (e *env) openStore(name string, x storefile.Expect) (id string, err error) {
	cfg, log := e.cfg, e.log.With().Str("component", name).Logger()
	path := storePath(cfg, name)
	x.Name = name
	switch name {
	case "suppression":
		e.supp, err = suppression.Open(suppression.Config{Path: path, OpenTimeout: storeOpenTimeout, Box: e.box, Expect: x}, log)
		if err == nil {
			id = e.supp.ID()
		}
	case "queue":
		e.queue, err = queue.Open(queue.Config{Path: path, Retry: cfg.Delivery.Retry, MaxAge: cfg.Delivery.MaxAge,
			OpenTimeout: storeOpenTimeout, Box: e.box, Expect: x, OnCampaignEvent: e.onCampaignEvent}, log)
		if err == nil {
			id = e.queue.ID()
		}
	case "subscribers":
		e.subs, err = subscribers.Open(subscribers.Config{Path: path, OpenTimeout: storeOpenTimeout, Box: e.box, Expect: x}, log)
		if err == nil {
			id = e.subs.ID()
		}
	case "audit":
		e.audit, err = audit.OpenFile(path, storeOpenTimeout, x, log)
		if err == nil {
			id = e.audit.ID()
		}
	default:
		return "", fmt.Errorf("unknown store %q (stores: %s)", name, strings.Join(storeNames, ", "))
	}
	if err != nil {
		return "", storeHint(e.cfg, name, err)
	}
	return id, nil
}

// storeHint adds what the operator can do to a store that cannot be opened.
func storeHint(cfg *configs.Server, name string, err error) error {
	switch {
	case errors.Is(err, storefile.ErrMissing), errors.Is(err, storefile.ErrEmpty), errors.Is(err, storefile.ErrWrongID):
		return fmt.Errorf("%w; restore the %s store from a backup, or start it empty with `postwarden db init %s`", err, name, name)
	case errors.Is(err, storefile.ErrDamaged):
		return fmt.Errorf("%w; `postwarden db check` names every damaged store; restore it from a backup, or start it empty with `postwarden db init %s`", err, name)
	}
	return lockHint(cfg, err)
}

// anyStoreFile reports whether dir holds a file of any store (even an empty one).
func anyStoreFile(cfg *configs.Server) bool {
	for _, n := range storeNames {
		if _, err := os.Lstat(storePath(cfg, n)); !errors.Is(err, fs.ErrNotExist) {
			return true
		}
	}
	return false
}

// storeLayout is what a data directory holds, decided before anything is opened.
type storeLayout struct {
	manifest *storefile.Manifest // nil: none yet
	fresh    bool                // no manifest and no store file: the stores may be created
}

// inspectDataDir checks data_dir: it must exist unless create is set (then
// it is made); a fresh one (no manifest, no store) may only be filled by a
// command that creates.
func inspectDataDir(cfg *configs.Server, create bool) (storeLayout, error) {
	if err := requireDataDir(cfg, create); err != nil {
		return storeLayout{}, err
	}
	m, err := storefile.LoadManifest(cfg.DataDir)
	if err != nil {
		return storeLayout{}, err
	}
	l := storeLayout{manifest: m, fresh: m == nil && !anyStoreFile(cfg)}
	if l.fresh && !create {
		return l, fmt.Errorf("data_dir %s holds no stores (is data_dir right? this command creates nothing; `postwarden serve` or `postwarden campaign send` create them)", cfg.DataDir)
	}
	return l, nil
}

// requireDataDir checks that data_dir is a directory; with create, a
// missing one is made.
func requireDataDir(cfg *configs.Server, create bool) error {
	fi, err := os.Stat(cfg.DataDir)
	switch {
	case errors.Is(err, fs.ErrNotExist) && create:
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("data_dir %s: %w", cfg.DataDir, err)
		}
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("data_dir %s does not exist (is data_dir right? this command creates nothing; `postwarden serve` or `postwarden campaign send` create a new data directory)", cfg.DataDir)
	case err != nil:
		return fmt.Errorf("data_dir %s: %w", cfg.DataDir, err)
	case !fi.IsDir():
		return fmt.Errorf("data_dir %s is not a directory", cfg.DataDir)
	}
	return nil
}

// expect says what the layout knows of a store before it is opened.
func (l storeLayout) expect(cfg *configs.Server, name string) (storefile.Expect, error) {
	x := storefile.Expect{Name: name}
	switch {
	case l.manifest != nil:
		id, ok := l.manifest.Stores[name]
		if !ok {
			return x, fmt.Errorf("%s does not list the %s store; create it with `postwarden db init %s`",
				filepath.Join(cfg.DataDir, storefile.ManifestFile), name, name)
		}
		x.ID, x.Exist = id, true
	case l.fresh:
		x.Exist = false
	default: // a data directory from before the manifest: adopt what is there
		x.Exist = true
	}
	return x, nil
}

// loadKey reads a key file, creating it only in a fresh data directory by a
// command that creates: a new data key beside existing stores would not open
// them, a new token key would void every unsubscribe link sent.
func loadKey(path, field string, mayCreate bool, loadOrCreate func(string) ([]byte, error)) ([]byte, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) && !mayCreate {
		return nil, fmt.Errorf("%s %s does not exist (restore it from a backup; it is created only with a new data directory)", field, path)
	}
	return loadOrCreate(path)
}

// openStores opens the key files and the stores of e.cfg's data directory,
// and writes the manifest when the stores were just created or adopted.
func (e *env) openStores(create bool) (tokenKey []byte, err error) {
	cfg := e.cfg
	l, err := inspectDataDir(cfg, create)
	if err != nil {
		return nil, err
	}
	mayCreate := create && l.fresh
	tokenKey, err = loadKey(cfg.TokenKeyFile, "token_key_file", mayCreate, unsubscribe.LoadOrCreateKey)
	if err != nil {
		return nil, err
	}
	dataKey, err := loadKey(cfg.DataKeyFile, "data_key_file", mayCreate, sealed.LoadOrCreateKey)
	if err != nil {
		return nil, err
	}
	if e.box, err = sealed.New(dataKey); err != nil {
		return nil, fmt.Errorf("data_key_file %s: %w", cfg.DataKeyFile, err)
	}
	ids := map[string]string{}
	for _, name := range storeNames {
		x, err := l.expect(cfg, name)
		if err != nil {
			return nil, err
		}
		if ids[name], err = e.openStore(name, x); err != nil {
			return nil, err
		}
	}
	if l.manifest == nil {
		m := &storefile.Manifest{Stores: ids}
		if err := m.Save(cfg.DataDir); err != nil {
			return nil, err
		}
		if l.fresh {
			e.log.Info().Str("data_dir", cfg.DataDir).Msg("stores created")
		} else {
			e.log.Warn().Str("data_dir", cfg.DataDir).Str("manifest", storefile.ManifestFile).Msg("existing stores adopted into a new manifest")
		}
	}
	return tokenKey, nil
}

// --- db init / db check ---

func (c *cli) dbInitCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "init STORE…",
		Short: "Start a store empty, knowingly: an existing file is kept aside as <file>.replaced-<time> (stores: " + strings.Join(storeNames, ", ") + ")",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := c.loadConfig()
			if err != nil {
				return err
			}
			if daemonClient(cfg.AdminSocket) != nil {
				return fmt.Errorf("db init: the daemon answers on %s; stop `postwarden serve` first", cfg.AdminSocket)
			}
			log, err := c.logger(zerolog.WarnLevel)
			if err != nil {
				return err
			}
			return c.dbInit(cfg, log, args)
		},
	}
}

// dbInit creates each named store new, moving an existing file aside, and
// records its id in the manifest (when the data directory has one; without
// one, the next command adopts every store present).
func (c *cli) dbInit(cfg *configs.Server, log zerolog.Logger, names []string) error {
	for _, n := range names {
		if !contains(storeNames, n) {
			return fmt.Errorf("db init: unknown store %q (stores: %s)", n, strings.Join(storeNames, ", "))
		}
	}
	if _, err := os.Stat(cfg.DataDir); err != nil {
		return fmt.Errorf("db init: data_dir %s: %w", cfg.DataDir, err)
	}
	m, err := storefile.LoadManifest(cfg.DataDir)
	if err != nil {
		return err
	}
	dataKey, err := loadKey(cfg.DataKeyFile, "data_key_file", false, sealed.LoadOrCreateKey)
	if err != nil {
		return err
	}
	e := &env{cfg: cfg, log: log}
	if e.box, err = sealed.New(dataKey); err != nil {
		return fmt.Errorf("data_key_file %s: %w", cfg.DataKeyFile, err)
	}
	for _, name := range names {
		path := storePath(cfg, name)
		unlock, err := storefile.Lock(path)
		if err != nil {
			return fmt.Errorf("db init %s: %w", name, err)
		}
		aside := ""
		if _, err := os.Lstat(path); err == nil {
			aside = fmt.Sprintf("%s.replaced-%s", path, time.Now().UTC().Format("20060102T150405Z"))
			if err := os.Rename(path, aside); err != nil {
				unlock()
				return fmt.Errorf("db init %s: %w", name, err)
			}
		}
		unlock()
		id, err := e.openStore(name, storefile.Expect{Name: name})
		if err != nil {
			return err
		}
		if err := e.closeStore(name); err != nil {
			return err
		}
		if m != nil {
			m.Stores[name] = id
			if err := m.Save(cfg.DataDir); err != nil {
				return err
			}
		}
		fmt.Fprintf(c.stdout, "%s: new empty %s store (id %s)\n", path, name, id)
		if aside != "" {
			fmt.Fprintf(c.stdout, "  the old file is kept as %s\n", aside)
		}
	}
	return nil
}

// closeStore closes one store opened by openStore.
func (e *env) closeStore(name string) error {
	var c io.Closer
	switch { // a typed nil in c would not be nil
	case name == "suppression" && e.supp != nil:
		c, e.supp = e.supp, nil
	case name == "queue" && e.queue != nil:
		c, e.queue = e.queue, nil
	case name == "subscribers" && e.subs != nil:
		c, e.subs = e.subs, nil
	case name == "audit" && e.audit != nil:
		c, e.audit = e.audit, nil
	default:
		return nil
	}
	return c.Close()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (c *cli) dbCheckCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "Check every store file (pages, consistency, id against stores.json); exit 2 naming the damaged ones",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := c.loadConfig()
			if err != nil {
				return err
			}
			return c.dbCheck(cfg)
		},
	}
}

// dbCheck checks each store file read-only, beside a running daemon too as
// far as its lock allows.
func (c *cli) dbCheck(cfg *configs.Server) error {
	if fi, err := os.Stat(cfg.DataDir); err != nil || !fi.IsDir() {
		return fmt.Errorf("db check: data_dir %s does not exist or is not a directory", cfg.DataDir)
	}
	m, err := storefile.LoadManifest(cfg.DataDir)
	if err != nil {
		return err
	}
	if m == nil {
		fmt.Fprintf(c.stdout, "%s: none yet (the stores present are adopted into one at the next start)\n", filepath.Join(cfg.DataDir, storefile.ManifestFile))
	}
	var bad []string
	for _, name := range storeNames {
		path := storePath(cfg, name)
		x := storefile.Expect{Name: name, Exist: true}
		if m != nil {
			x.ID = m.Stores[name]
		}
		id, err := storefile.Inspect(path, x, storeOpenTimeout)
		switch {
		case errors.Is(err, storefile.ErrLocked):
			fmt.Fprintf(c.stdout, "%s: not checked: %v\n", path, err)
			bad = append(bad, name+" (locked)")
		case err != nil:
			fmt.Fprintf(c.stdout, "%s: BAD: %v\n", path, err)
			bad = append(bad, name)
		case m != nil && m.Stores[name] == "":
			fmt.Fprintf(c.stdout, "%s: BAD: not listed in %s\n", path, storefile.ManifestFile)
			bad = append(bad, name)
		default:
			fmt.Fprintf(c.stdout, "%s: ok (id %s)\n", path, id)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("db check: %s", strings.Join(bad, ", "))
	}
	return nil
}
