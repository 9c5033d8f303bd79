// Package shares spreads one campaign's recipients over the nodes of a
// postwarden cluster through NATS JetStream (issue 13, promises 3 and 4).
//
// Publish, on the node where `campaign send FILE` runs, cuts the recipients
// into ceil(rows/Config.ShardSize) shards (a row's shard is the first 32
// bits of its keyed index modulo the shard count, so any node can name a
// recipient's shard from the index alone). Each shard is sealed with the cluster's data
// key (suppression/sealed, context "shares:shard:CAMPAIGN:N") and stored
// once in stream PW_SHARE_DATA; subjects and headers carry the escaped
// campaign id, shard numbers and keyed indexes, never an address. A
// manifest (campaign id, file hash, shard count, rows per shard) is created
// if absent in the KV bucket pw_shares before any shard is written, and
// marked ready after the last one: a re-run with the same id and hash adds
// nothing (or finishes an interrupted publish, shards deduplicated by
// message id and by subject); another hash under the same id is
// ErrHashMismatch.
//
// Leases. Every shard has a KV key whose value says free, held (holder,
// token) or done. A node claims a shard with a compare-and-set on the key's
// revision; the revision of the claim is the shard's fencing token, handed
// to Enqueuer.Enqueue and kept unchanged in the value by the holder's
// renewals (every Lease/3; each renewal is a CAS too). Another node takes a
// held shard over only once it has watched the same revision of that key
// for a whole Lease on its own clock, so no wall-clock agreement is needed,
// only clocks that run at about the same rate. The holder, for its part,
// counts its lease as lost Lease after sending the last renewal that
// succeeded (before anyone else can have waited a Lease past it), or at
// once when a CAS shows another token: it cancels the Enqueue context with
// ErrLeaseLost and calls Worker.Lost. Complete with a token that no longer
// holds the shard fails with ErrLeaseLost.
//
// A shard is done, not when its rows are in the holder's spool, but when
// Enqueue has returned and every row handed to it has a final outcome
// (Record): a node killed and never restarted leaves its shards held, so
// they are taken over with whatever it had not finished. A node restarted
// under the same name takes its own held shards back at once (node names
// must be unique); the queue's idempotent Enqueue makes the re-hand-over a
// no-op for rows still in its spool.
//
// Outcomes. Record publishes a recipient's outcome to stream
// PW_SHARE_OUTCOMES under pw.shares.out.CAMPAIGN.SHARD.INDEX.OUTCOME and
// returns after the stream acknowledged it. Before a node hands a shard to
// its Enqueuer it drops every row with a final outcome (delivered, bounced,
// failed, skipped) on that subject prefix. So the recipients one lost node
// can have delivered and that are sent again by the node that takes its shard
// over are exactly those whose final delivery attempt had started on the lost
// node and whose Record the stream had not acknowledged when it was lost. If
// every delivery worker records a recipient's outcome (retrying Record, not
// moving on) before it starts its next attempt, that is at most the lost
// node's delivery concurrency: the attempts it had in flight at once. A node
// that is cut off but alive keeps that bound because Worker.Lost reports the
// shard before another node can take it over, and the node then withdraws
// the shard's rows not in flight from its spool.
// Status aggregates outcomes and shard states cluster-wide.
//
// Erasure. EraseIndex removes a person, by keyed index, from the shard of
// every campaign that holds them: the shard is published again without the
// row, older messages of its subject are overwritten on disk, the
// manifest's counts drop and their outcomes are purged.
//
// Retention. A campaign's sealed shards are purged once every shard is done
// (PruneDone); the rest of its records, manifest, keys and outcomes, once its
// last activity is older than the retention period (PruneFinished, run by
// every node's retention pass).
package shares

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression/sealed"
)

// Names of the JetStream resources the package uses.
const (
	DataStream    = "PW_SHARE_DATA"
	OutcomeStream = "PW_SHARE_OUTCOMES"
	Bucket        = "pw_shares"

	dataPrefix    = "pw.shares.data."
	outcomePrefix = "pw.shares.out."
	// kvStream and kvPrefix are the bucket's stream and its keys' subject
	// prefix, as JetStream names them.
	kvStream = "KV_" + Bucket
	kvPrefix = "$KV." + Bucket + "."
)

// Defaults of Config.
const (
	DefaultLease     = 15 * time.Second
	DefaultShardSize = 250
	DefaultReplicas  = 1
)

// Errors callers test with errors.Is.
var (
	ErrHashMismatch = errors.New("shares: campaign id already published with another file hash")
	ErrLeaseLost    = errors.New("shares: lease lost (stale fencing token)")
	ErrBadCampaign  = errors.New("shares: campaign id must match [A-Za-z0-9._-]{1,64}")
	ErrNoCampaign   = errors.New("shares: campaign not published in the cluster")
	ErrBadOutcome   = errors.New("shares: unknown outcome")
	ErrBadKey       = errors.New("shares: recipient key is not a keyed index (64 hex digits)")
)

// Config is the coordinator's own configuration.
type Config struct {
	Node      string        // unique, stable name of this node
	Replicas  int           // stream and bucket replicas; 0 = DefaultReplicas
	Lease     time.Duration // share lease; 0 = DefaultLease
	ShardSize int           // rows per shard on average; 0 = DefaultShardSize
	// MaxShardBytes bounds a shard's encoded rows; 0 = what the server's
	// max_payload allows. More shards are cut when rows do not fit.
	MaxShardBytes int
}

// Row is one recipient as the campaign file gives it. Key is set by Publish
// (the keyed index of the address, hex) and travels with the row.
type Row struct {
	Key     string            `json:"k"`
	Address string            `json:"a"`
	Fields  map[string]string `json:"f,omitempty"`
}

// Enqueuer puts a shard's rows into this node's own queue. It must return
// only once the rows are durable there (one transaction) and be idempotent on
// (campaign, row key); token is the shard's fencing token. Every row handed
// over must later get a final outcome through Coordinator.Record (Skipped
// for one the node does not enqueue), or the shard is never done. The same
// rows can come again with a larger token (this node took its shard back
// after a restart or a lost lease): rows already in the spool then belong
// to the new token.
type Enqueuer interface {
	Enqueue(ctx context.Context, campaign string, rows []Row, token uint64) error
}

// Lost describes a lease this node lost.
type Lost struct {
	Campaign string
	Shard    int
	Token    uint64
	Err      error // wraps ErrLeaseLost
}

// Worker is what Run needs of the node.
type Worker struct {
	Enqueuer Enqueuer
	// Room says how many more recipients this node may take into its window
	// now; nil means no limit. Run claims a shard when its rows fit, or when
	// the node holds nothing and Room is positive.
	Room func() int
	// Lost, when set, is called once for every lease this node loses while
	// holding it; the caller must stop delivering that shard's rows not
	// yet in flight (another node sends them). It needs no NATS: the
	// campaign's manifest is cached (Manifest).
	Lost func(Lost)
	// Paused, when set, is told every change of a campaign's cluster-wide
	// pause (SetPause) and, as Run starts, each one in force; the node
	// pauses or resumes the campaign in its spool. It runs in Run's
	// goroutine: it must not wait on Run.
	Paused func(Pause)
	// Settings, when set, is told every change of a campaign's settings
	// (SetSettings) and, as Run starts, each one in force; it runs in Run's
	// goroutine like Paused.
	Settings func(campaign string, v []byte)
	// Figures, when set, is told every change of another node's figures
	// of a campaign (SetFigures) and, as Run starts, each one in force; it
	// runs in Run's goroutine like Paused.
	Figures func(campaign, node string, v []byte)
}

// Coordinator publishes campaigns, takes shares and records outcomes for one
// node; safe for concurrent use.
type Coordinator struct {
	cfg      Config
	js       jetstream.JetStream
	kv       jetstream.KeyValue
	kvStream jetstream.Stream // the bucket's, for PruneFinished
	data     jetstream.Stream
	outcomes jetstream.Stream
	box      *sealed.Box
	log      zerolog.Logger

	mu        sync.Mutex
	manifests map[string]Manifest // ready manifests by campaign id
	held      map[string]*holding // by lease key, shards this node works on
}

// New opens (creating or updating) the streams and the bucket.
func New(ctx context.Context, js jetstream.JetStream, box *sealed.Box, cfg Config, log zerolog.Logger) (*Coordinator, error) {
	if cfg.Node == "" || !tokenSafe(cfg.Node) {
		return nil, fmt.Errorf("shares: node name %q must be letters, digits, - or _", cfg.Node)
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = DefaultReplicas
	}
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.ShardSize <= 0 {
		cfg.ShardSize = DefaultShardSize
	}
	if box == nil {
		return nil, errors.New("shares: no sealing box (data.key)")
	}
	c := &Coordinator{cfg: cfg, js: js, box: box, log: log.With().Str("node", cfg.Node).Logger(),
		manifests: map[string]Manifest{}, held: map[string]*holding{}}
	var err error
	c.data, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        DataStream,
		Description: "postwarden campaign shards (sealed)",
		Subjects:    []string{dataPrefix + ">"},
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		// Readers take a subject's newest message; an erasure publishes the
		// rewritten shard before it overwrites the older one (EraseIndex), so
		// a crash between the two never leaves a shard without a copy.
		MaxMsgsPerSubject: -1,
		Duplicates:        10 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("shares: create stream %s: %w", DataStream, err)
	}
	c.outcomes, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        OutcomeStream,
		Description: "postwarden per-recipient campaign outcomes (keyed indexes only)",
		Subjects:    []string{outcomePrefix + ">"},
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Duplicates:  10 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("shares: create stream %s: %w", OutcomeStream, err)
	}
	c.kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "postwarden campaign manifests and share leases",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("shares: create bucket %s: %w", Bucket, err)
	}
	if c.kvStream, err = js.Stream(ctx, kvStream); err != nil {
		return nil, fmt.Errorf("shares: open the stream of bucket %s: %w", Bucket, err)
	}
	return c, nil
}

// Node is this coordinator's node name.
func (c *Coordinator) Node() string { return c.cfg.Node }

// tokenSafe reports whether s is usable as a subject token and KV key part.
func tokenSafe(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
		default:
			return false
		}
	}
	return true
}

// campaignToken checks a campaign id (configs' charset) and escapes it into
// one subject token and KV key part: '.' becomes "=2e" ('=' is not in the
// charset, so the escape is reversible).
func campaignToken(id string) (string, error) {
	if id == "" || len(id) > 64 {
		return "", ErrBadCampaign
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return "", ErrBadCampaign
		}
	}
	return strings.ReplaceAll(id, ".", "=2e"), nil
}

// campaignFromToken reverses campaignToken.
func campaignFromToken(tok string) string { return strings.ReplaceAll(tok, "=2e", ".") }

// manifestKey is the KV key of a campaign's manifest.
func manifestKey(ctok string) string { return ctok + ".m" }

// leaseKey is the KV key of a shard's lease.
func leaseKey(ctok string, shard int) string { return ctok + ".s." + strconv.Itoa(shard) }

// parseLeaseKey splits a lease key; ok is false for any other key.
func parseLeaseKey(key string) (ctok string, shard int, ok bool) {
	parts := strings.Split(key, ".")
	if len(parts) != 3 || parts[1] != "s" {
		return "", 0, false
	}
	n, err := strconv.Atoi(parts[2])
	if err != nil || n < 0 {
		return "", 0, false
	}
	return parts[0], n, true
}

// dataSubject is the subject of a shard's sealed rows.
func dataSubject(ctok string, shard int) string {
	return dataPrefix + ctok + "." + strconv.Itoa(shard)
}

// sealContext binds a sealed shard to its campaign and number.
func sealContext(campaign string, shard int) string {
	return "shares:shard:" + campaign + ":" + strconv.Itoa(shard)
}

// validKey reports whether k is a hex keyed index.
func validKey(k string) bool {
	if len(k) != 2*sealed.IndexSize {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// shardOf is the shard of a recipient key among n shards: the key is an HMAC
// output, so its first 32 bits are uniform.
func shardOf(key string, n int) int {
	v, _ := strconv.ParseUint(key[:8], 16, 32)
	return int(v % uint64(n))
}

// isConflict reports whether a KV write failed its compare-and-set.
func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}
