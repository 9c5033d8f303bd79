package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"time"

	"github.com/rs/zerolog"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/postwarden/postwarden/campaign/brakes"
	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/mta"
	"github.com/postwarden/postwarden/mta/adaptive"
	"github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/mta/inbound/handover"
	"github.com/postwarden/postwarden/mta/providers"
	"github.com/postwarden/postwarden/mta/verp"
	"github.com/postwarden/postwarden/mta/warmup"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/replica"
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
	// handover carries reports about other nodes' messages (a clustered serve with a bounce domain).
	handover *handover.Handover
	// daemon is true inside `serve`: delivery is the daemon's runner's job.
	daemon bool
	// brake judges campaigns after each hard bounce and complaint (the
	// queue's OnCampaignEvent) and pauses and resumes them.
	brake *brakes.Brake
	// figures is the brake's Counter on a cluster node: the campaign's
	// figures on every node (the share worker feeds it); nil on a single
	// node, whose brakes judge its own queue's figures.
	figures *clusterFigures
	// sender and adaptive are the MTA and its adaptive engine once
	// newSender built them (adaptive nil with delivery.adaptive false).
	sender   *mta.Sender
	adaptive *adaptive.Engine
	// warmup caps new sources (delivery.warmup); nil without a schedule.
	warmup *warmup.Tracker
	// cluster is serve's link to the cluster; nil for a single node and
	// outside the daemon.
	cluster *clusterNode
	// rep is the suppression replica of a cluster node; nil on a single
	// node (and before joinReplica).
	rep *replica.Replica
	// shares is serve's share worker on a cluster node; nil otherwise.
	shares *shareWorker
	// closers run first at Close, last first.
	closers []func()
}

// storeOpenTimeout bounds the wait for bbolt's file lock.
const storeOpenTimeout = time.Second

// openEnv opens the key files and the stores under the config's data_dir.
// With create (commands that write) a missing data_dir, and the stores and
// keys of a fresh one, are created; otherwise all must exist already (see
// openStores).
func openEnv(cfg *configs.Server, log zerolog.Logger, create bool) (*env, error) {
	e := &env{cfg: cfg, log: log}
	key, err := e.openStores(create)
	if err != nil {
		e.Close()
		return nil, err
	}
	if e.tokens, err = unsubscribe.NewTokens(key, cfg.PublicURL); err != nil {
		e.Close()
		return nil, err
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte("postwarden message-id"))
	e.msgIDKey = mac.Sum(nil)
	if e.brake, err = e.newBrake(); err != nil {
		e.Close()
		return nil, err
	}
	if cfg.BounceDomain != "" {
		if e.verp, err = verp.New(verpKey(key), cfg.BounceDomain); err != nil {
			e.Close()
			return nil, fmt.Errorf("bounce_domain: %w", err)
		}
	}
	return e, nil
}

// envelopeSender is the MAIL FROM of queue message id sent from from: its
// VERP address on bounce_domain when one is set, else from ("" stays the
// null reverse-path). The MTA sends it; `queue show` prints it.
func (e *env) envelopeSender(id, from string) string {
	if e.verp == nil || from == "" {
		return from
	}
	if cc := e.cfg.Cluster; cc != nil { // the token names the spool that holds id
		return e.verp.AddressFrom(id, cc.Node)
	}
	return e.verp.Address(id)
}

// lockHint explains a bbolt lock timeout: another process holds the store.
func lockHint(cfg *configs.Server, err error) error {
	if errors.Is(err, bolterrors.ErrTimeout) {
		return fmt.Errorf("%w (another postwarden process holds the store; if `postwarden serve` runs, its admin socket %s should answer)", err, cfg.AdminSocket)
	}
	return err
}

// stopWorkers stops what runs on the stores (the replica), last started first.
func (e *env) stopWorkers() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
	e.closers = nil
}

// Close stops what runs on the stores, then closes them.
func (e *env) Close() error {
	e.stopWorkers()
	var errs []error
	for _, name := range storeNames {
		errs = append(errs, e.closeStore(name))
	}
	return errors.Join(errs...)
}

// createdKey is a DKIM key generated on first use, whose record must be published.
type createdKey struct {
	Path      string `json:"path"`
	DNSRecord string `json:"dns_record"`
}

// loadDKIM loads every configured key; with create it generates missing
// ones, otherwise a missing key file is an error (a key nobody signs with
// must never be printed for publishing).
func loadDKIM(cfg *configs.Server, create bool) ([]*dkim.Key, []createdKey, error) {
	var keys []*dkim.Key
	var created []createdKey
	for _, k := range cfg.DKIM {
		if _, err := os.Stat(k.KeyFile); errors.Is(err, fs.ErrNotExist) && !create {
			return nil, nil, fmt.Errorf("dkim %s/%s: key file %s does not exist (is data_dir or key_file right? `postwarden dkim keygen` creates one)", k.Domain, k.Selector, k.KeyFile)
		}
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
		envelopeFrom = e.envelopeSender
	}
	keys, created, err := loadDKIM(cfg, true)
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
	table, eng, err := e.shaping()
	if err != nil {
		return nil, nil, err
	}
	if len(cfg.Delivery.Warmup) > 0 {
		e.warmup = warmup.New(cfg.Delivery.Warmup)
		if e.queue != nil { // what was delivered today and each source's day 1, kept by the queue
			now := time.Now()
			first, sent, err := e.queue.WarmupLedger(now)
			if err != nil {
				return nil, nil, fmt.Errorf("warm-up counts: %w", err)
			}
			pairs := make(map[warmup.Pair]int, len(sent))
			for k, n := range sent {
				pairs[warmup.Pair{Source: k[0], Provider: k[1]}] = n
			}
			e.warmup.Restore(first, now, pairs)
		}
	}
	var mxr *providers.Resolver
	if table != nil {
		mxr, err = providers.NewResolver(providers.ResolverConfig{Server: cfg.Delivery.Resolver}, table,
			log.With().Str("component", "dns").Logger())
		if err != nil { // no DNS server known: the system resolver, uncached
			log.Warn().Err(err).Msg("MX lookups not cached")
			mxr = nil
		}
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
		Providers:                table,
		Adaptive:                 eng,
		MXResolver:               mxr,
		Sources:                  cfg.Delivery.Sources,
		Pools:                    cfg.Delivery.Pools,
		Warmup:                   e.warmup,
	}, dkim.NewSigner(keys), log.With().Str("component", "mta").Logger())
	if err != nil {
		return nil, nil, err
	}
	e.sender = s
	return s, created, nil
}

// localUser names the person running the CLI, for logs and records.
func localUser() string {
	if u, err := user.Current(); err == nil {
		return "local:" + u.Username
	}
	return fmt.Sprintf("local:uid:%d", os.Getuid())
}
