package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/mta"
	"github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/mta/verp"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/subscribers"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// env is everything an op may use: the config and the opened stores. The
// daemon builds one for its whole life; the CLI builds one per command when
// no daemon answers on the admin socket.
type env struct {
	cfg      *configs.Server
	log      zerolog.Logger
	supp     *suppression.Store
	queue    *queue.Store
	tokens   *unsubscribe.Tokens
	msgIDKey []byte
	// box seals personal fields and derives lookup indexes (data_key_file).
	box *sealed.Box
	// subs is the consent store (subscribers.db).
	subs *subscribers.Store
	// audit is the hash-chained log of who did what (audit.db).
	audit *audit.Log
	// verp encodes envelope senders on bounce_domain; nil when unset.
	verp *verp.Codec
	// daemon is true inside `serve`: delivery is the daemon's runner's job.
	daemon bool
}

// storeOpenTimeout bounds the wait for bbolt's file lock.
const storeOpenTimeout = time.Second

// openEnv opens the stores under the config's data_dir.
func openEnv(cfg *configs.Server, log zerolog.Logger) (*env, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir %s: %w", cfg.DataDir, err)
	}
	key, err := unsubscribe.LoadOrCreateKey(cfg.TokenKeyFile)
	if err != nil {
		return nil, err
	}
	tokens, err := unsubscribe.NewTokens(key, cfg.PublicURL)
	if err != nil {
		return nil, err
	}
	dataKey, err := sealed.LoadOrCreateKey(cfg.DataKeyFile)
	if err != nil {
		return nil, err
	}
	box, err := sealed.New(dataKey)
	if err != nil {
		return nil, fmt.Errorf("data_key_file %s: %w", cfg.DataKeyFile, err)
	}
	supp, err := suppression.Open(suppression.Config{
		Path:        filepath.Join(cfg.DataDir, "suppression.db"),
		OpenTimeout: storeOpenTimeout,
		Box:         box,
	}, log.With().Str("component", "suppression").Logger())
	if err != nil {
		return nil, lockHint(cfg, err)
	}
	q, err := queue.Open(queue.Config{
		Path:        filepath.Join(cfg.DataDir, "queue.db"),
		Retry:       cfg.Delivery.Retry,
		MaxAge:      cfg.Delivery.MaxAge,
		OpenTimeout: storeOpenTimeout,
		Box:         box,
	}, log.With().Str("component", "queue").Logger())
	if err != nil {
		supp.Close()
		return nil, lockHint(cfg, err)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte("postwarden message-id"))
	e := &env{cfg: cfg, log: log, supp: supp, queue: q, tokens: tokens, msgIDKey: mac.Sum(nil), box: box}
	if e.subs, err = subscribers.Open(subscribers.Config{
		Path:        filepath.Join(cfg.DataDir, "subscribers.db"),
		OpenTimeout: storeOpenTimeout,
		Box:         box,
	}, log.With().Str("component", "subscribers").Logger()); err != nil {
		e.Close()
		return nil, lockHint(cfg, err)
	}
	if e.audit, err = audit.Open(filepath.Join(cfg.DataDir, "audit.db"), storeOpenTimeout, log.With().Str("component", "audit").Logger()); err != nil {
		e.Close()
		return nil, lockHint(cfg, err)
	}
	if cfg.BounceDomain != "" {
		if e.verp, err = verp.New(verpKey(key), cfg.BounceDomain); err != nil {
			e.Close()
			return nil, fmt.Errorf("bounce_domain: %w", err)
		}
	}
	return e, nil
}

// lockHint explains a bbolt lock timeout: another process holds the store.
func lockHint(cfg *configs.Server, err error) error {
	if errors.Is(err, bolterrors.ErrTimeout) {
		return fmt.Errorf("%w (another postwarden process holds the store; if `postwarden serve` runs, its admin socket %s should answer)", err, cfg.AdminSocket)
	}
	return err
}

// Close closes the stores.
func (e *env) Close() error {
	errs := []error{e.queue.Close(), e.supp.Close()}
	if e.subs != nil {
		errs = append(errs, e.subs.Close())
	}
	if e.audit != nil {
		errs = append(errs, e.audit.Close())
	}
	return errors.Join(errs...)
}

// createdKey is a DKIM key generated on first use, whose record must be published.
type createdKey struct {
	Path      string `json:"path"`
	DNSRecord string `json:"dns_record"`
}

// loadDKIM loads every configured key, generating missing ones.
func loadDKIM(cfg *configs.Server) ([]*dkim.Key, []createdKey, error) {
	var keys []*dkim.Key
	var created []createdKey
	for _, k := range cfg.DKIM {
		key, isNew, err := dkim.LoadOrCreate(k.KeyFile, k.Domain, k.Selector, k.Type)
		if err != nil {
			return nil, nil, fmt.Errorf("dkim %s/%s: %w", k.Domain, k.Selector, err)
		}
		key.RelaxedBody = k.BodyCanonicalization == "relaxed"
		if err := key.UseEngine(k.RSASigner); err != nil {
			return nil, nil, fmt.Errorf("dkim %s/%s: rsa_signer %s: %w", k.Domain, k.Selector, k.RSASigner, err)
		}
		keys = append(keys, key)
		if isNew {
			created = append(created, createdKey{Path: k.KeyFile, DNSRecord: key.DNSRecord()})
		}
	}
	return keys, created, nil
}

// newSender builds the MTA from the config, with its DKIM keys. With a
// bounce_domain, every message leaves with its VERP envelope sender, so a
// bounce names the queue message it is about.
func (e *env) newSender() (*mta.Sender, []createdKey, error) {
	cfg, log := e.cfg, e.log
	var envelopeFrom func(id, from string) string
	if e.verp != nil {
		envelopeFrom = func(id, _ string) string { return e.verp.Address(id) }
	}
	keys, created, err := loadDKIM(cfg)
	if err != nil {
		return nil, nil, err
	}
	for _, k := range keys {
		// Which code signs says how fast RSA goes (~4x apart); never the key itself.
		ev := log.Info()
		if k.EngineFallback != nil {
			ev = log.Warn().AnErr("openssl", k.EngineFallback)
		}
		ev.Str("domain", k.Domain).Str("selector", k.Selector).Str("type", k.Type()).
			Str("signer", k.Engine()).Msg("dkim key")
	}
	s, err := mta.New(mta.Config{
		Hostname:                 cfg.Hostname,
		Mode:                     cfg.Delivery.Mode,
		CaptureDir:               cfg.Delivery.CaptureDir,
		Relay:                    cfg.Delivery.Relay,
		Routes:                   cfg.Delivery.Routes,
		ConcurrencyPerDomain:     cfg.Delivery.ConcurrencyPerDomain,
		SMTPPort:                 cfg.Delivery.SMTPPort,
		TLSPolicy:                cfg.Delivery.TLS,
		MTASTS:                   cfg.Delivery.MTASTS,
		MaxMessagesPerConnection: cfg.Delivery.MaxMessagesPerConnection,
		Rates:                    cfg.Delivery.Rates,
		DNSServer:                cfg.Delivery.Resolver,
		EnvelopeFrom:             envelopeFrom,
	}, dkim.NewSigner(keys), log.With().Str("component", "mta").Logger())
	if err != nil {
		return nil, nil, err
	}
	return s, created, nil
}

// localUser names the person running the CLI, for logs and records.
func localUser() string {
	if u, err := user.Current(); err == nil {
		return "local:" + u.Username
	}
	return fmt.Sprintf("local:uid:%d", os.Getuid())
}
