package shares

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// Manifest states.
const (
	ManifestPublishing = "publishing" // shards being written; workers wait
	ManifestReady      = "ready"      // every shard and lease key exists
)

// Manifest describes a published campaign; it holds nothing personal.
type Manifest struct {
	Campaign  string    `json:"campaign"`
	Hash      string    `json:"hash"` // the campaign file's hash as the publisher gave it
	Shards    int       `json:"shards"`
	Rows      int       `json:"rows"`
	ShardRows []int     `json:"shard_rows"`
	State     string    `json:"state"`
	Node      string    `json:"node"` // the node that published it
	Created   time.Time `json:"created"`
}

// Published is what Publish did.
type Published struct {
	Manifest  Manifest
	New       bool // false: the campaign was already in the cluster and nothing was added
	Invalid   int  // rows whose address does not parse, left out
	Duplicate int  // rows repeating an address of an earlier row, left out
}

// Publish puts a campaign's rows into the cluster: manifest (created if
// absent), sealed shards, a free lease per shard, then the manifest marked
// ready. hash identifies the campaign file (sha256 hex of it); "" means a
// hash of the rows. Running it again with the same id and hash, on any
// node, adds nothing; an interrupted run is finished. Another hash under the
// same id is ErrHashMismatch.
func (c *Coordinator) Publish(ctx context.Context, campaign, hash string, rows []Row) (Published, error) {
	ctok, err := campaignToken(campaign)
	if err != nil {
		return Published{}, err
	}
	var res Published
	keyed := make([]Row, 0, len(rows))
	rowOf := make([]int, 0, len(rows)) // keyed[j] is rows[rowOf[j]]: errors name the caller's row
	seen := make(map[string]bool, len(rows))
	for i, r := range rows {
		a, err := address.Parse(r.Address)
		if err != nil {
			res.Invalid++
			c.log.Debug().Str("campaign", campaign).Int("row", i+1).Str("rcpt", address.Mask(r.Address)).Msg("invalid address left out")
			continue
		}
		k := c.box.IndexHex(a.Key())
		if seen[k] {
			res.Duplicate++
			continue
		}
		seen[k] = true
		keyed = append(keyed, Row{Key: k, Address: a.String(), Fields: r.Fields})
		rowOf = append(rowOf, i)
	}
	if hash == "" {
		hash = rowsHash(keyed)
	}

	m := Manifest{Campaign: campaign, Hash: hash, Rows: len(keyed), State: ManifestPublishing,
		Node: c.cfg.Node, Created: time.Now().UTC()}
	plains, rowsOf, err := c.planShards(keyed, rowOf)
	if err != nil {
		return res, fmt.Errorf("shares: %s: %w", campaign, err)
	}
	m.Shards = len(plains)
	mkey := manifestKey(ctok)
	var rev uint64
	for {
		e, err := c.kv.Get(ctx, mkey)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			b, _ := json.Marshal(m)
			rev, err = c.kv.Create(ctx, mkey, b)
			if isConflict(err) {
				continue // another node created it meanwhile: read it
			}
			if err != nil {
				return res, fmt.Errorf("shares: create manifest of %s: %w", campaign, err)
			}
			res.New = true
			break
		}
		if err != nil {
			return res, fmt.Errorf("shares: read manifest of %s: %w", campaign, err)
		}
		var old Manifest
		if err := json.Unmarshal(e.Value(), &old); err != nil {
			return res, fmt.Errorf("shares: read manifest of %s: %w", campaign, err)
		}
		if old.Hash != hash {
			return res, fmt.Errorf("%w: %s has %s, not %s", ErrHashMismatch, campaign, old.Hash, hash)
		}
		if old.State == ManifestReady {
			res.Manifest = old
			c.log.Info().Str("campaign", campaign).Int("shards", old.Shards).Msg("campaign already published; nothing added")
			return res, nil
		}
		// An interrupted publish with the same file: finish it with its shard count.
		m, rev = old, e.Revision()
		res.New = true
		break
	}

	if m.Shards != len(plains) { // an interrupted publish: its count stands
		if plains, rowsOf, err = c.encodeShards(keyed, m.Shards); err != nil {
			return res, fmt.Errorf("shares: %s: %w", campaign, err)
		}
	}
	m.ShardRows = rowsOf
	for s, plain := range plains {
		if err := c.publishShard(ctx, ctok, campaign, hash, s, plain, rowsOf[s]); err != nil {
			return res, err
		}
		b, _ := json.Marshal(lease{State: StateFree})
		if _, err := c.kv.Create(ctx, leaseKey(ctok, s), b); err != nil && !isConflict(err) {
			return res, fmt.Errorf("shares: create lease %d of %s: %w", s, campaign, err)
		}
	}
	m.State = ManifestReady
	b, _ := json.Marshal(m)
	if _, err := c.kv.Update(ctx, mkey, b, rev); err != nil {
		if !isConflict(err) {
			return res, fmt.Errorf("shares: mark %s ready: %w", campaign, err)
		}
		// Another node finished the same publish first.
		e, err := c.kv.Get(ctx, mkey)
		if err != nil {
			return res, fmt.Errorf("shares: read manifest of %s: %w", campaign, err)
		}
		if err := json.Unmarshal(e.Value(), &m); err != nil || m.State != ManifestReady {
			return res, fmt.Errorf("shares: manifest of %s changed under this publish", campaign)
		}
	}
	res.Manifest = m
	c.log.Info().Str("campaign", campaign).Int("rows", m.Rows).Int("shards", m.Shards).
		Int("invalid", res.Invalid).Int("duplicate", res.Duplicate).Msg("campaign published")
	return res, nil
}

// publishShard stores one sealed shard unless it is there already (message
// id deduplication within the stream's window, the subject check after it).
func (c *Coordinator) publishShard(ctx context.Context, ctok, campaign, hash string, s int, plain []byte, rows int) error {
	subj := dataSubject(ctok, s)
	if old, err := c.data.GetLastMsgForSubject(ctx, subj); err == nil {
		if old.Header.Get(hdrHash) == hash {
			return nil
		}
	} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("shares: look up shard %d of %s: %w", s, campaign, err)
	}
	msg := &nats.Msg{Subject: subj, Header: nats.Header{}, Data: c.box.Seal(plain, sealContext(campaign, s))}
	msg.Header.Set(hdrHash, hash)
	msg.Header.Set(hdrRows, strconv.Itoa(rows))
	if _, err := c.js.PublishMsg(ctx, msg, jetstream.WithMsgID(ctok+":"+hash+":"+strconv.Itoa(s))); err != nil {
		return fmt.Errorf("shares: publish shard %d of %s: %w", s, campaign, err)
	}
	return nil
}

// Headers of a shard message (nothing personal).
const (
	hdrHash = "Pw-Campaign-Hash"
	hdrRows = "Pw-Rows"
)

// readShard fetches and opens a shard's rows.
func (c *Coordinator) readShard(ctx context.Context, ctok, campaign string, s int) ([]Row, error) {
	raw, err := c.data.GetLastMsgForSubject(ctx, dataSubject(ctok, s))
	if err != nil {
		return nil, fmt.Errorf("shares: fetch shard %d of %s: %w", s, campaign, err)
	}
	return c.openShard(raw.Data, campaign, s)
}

// openShard opens a sealed shard's rows.
func (c *Coordinator) openShard(data []byte, campaign string, s int) ([]Row, error) {
	plain, err := c.box.Open(data, sealContext(campaign, s))
	if err != nil {
		return nil, fmt.Errorf("shares: open shard %d of %s: %w", s, campaign, err)
	}
	rows, err := decodeRows(plain)
	if err != nil {
		return nil, fmt.Errorf("shares: decode shard %d of %s: %w", s, campaign, err)
	}
	return rows, nil
}

// shardHeadroom is what a shard message needs beside its sealed rows: the
// subject, the headers (hash, rows, message id) and the protocol's line.
const shardHeadroom = 4 << 10

// maxShardBytes is the most a shard's plain text may hold: the server's
// max_payload (1 MiB unless configured; Config.MaxShardBytes overrides it)
// less the seal's overhead and the headroom.
func (c *Coordinator) maxShardBytes() int {
	if c.cfg.MaxShardBytes > 0 {
		return c.cfg.MaxShardBytes
	}
	limit := int64(1 << 20)
	if nc := c.js.Conn(); nc != nil && nc.MaxPayload() > 0 {
		limit = nc.MaxPayload()
	}
	return int(limit) - sealed.Overhead - shardHeadroom
}

// planShards cuts keyed into ceil(rows/ShardSize) shards, doubled until
// every shard's encoded rows fit one message (maxShardBytes), and returns
// each shard's plain text and row count. A row too big for a shard of its
// own is refused, naming it by its position among the rows Publish was
// given (rowOf).
func (c *Coordinator) planShards(keyed []Row, rowOf []int) ([][]byte, []int, error) {
	n := (len(keyed) + c.cfg.ShardSize - 1) / c.cfg.ShardSize // 0 for no rows: no shard
	for {
		plains, rows, err := c.encodeShards(keyed, n)
		var big *shardTooBig
		if !errors.As(err, &big) {
			return plains, rows, err
		}
		for _, i := range big.rows { // one row alone too big: no count helps
			plain, err := encodeRows(keyed[i : i+1])
			if err != nil {
				return nil, nil, err
			}
			if len(plain) > c.maxShardBytes() {
				return nil, nil, fmt.Errorf("recipient %d (%s): its row (rendered message and fields) is %d bytes compressed, over the %d a shard message may hold (raise the NATS server's max_payload)",
					rowOf[i]+1, address.Mask(keyed[i].Address), len(plain), c.maxShardBytes())
			}
		}
		if n >= 4*len(keyed) {
			return nil, nil, fmt.Errorf("%w: no shard count up to %d fits every shard in %d bytes", err, n, c.maxShardBytes())
		}
		n *= 2
	}
}

// shardTooBig: a shard's encoded rows do not fit one message.
type shardTooBig struct {
	shard, size int
	rows        []int // the positions in keyed of its rows
}

func (e *shardTooBig) Error() string {
	return fmt.Sprintf("shard %d: %d rows are %d bytes compressed", e.shard, len(e.rows), e.size)
}

// encodeShards cuts keyed into n shards (shardOf) and encodes each;
// *shardTooBig if one does not fit a message.
func (c *Coordinator) encodeShards(keyed []Row, n int) ([][]byte, []int, error) {
	parts := make([][]Row, n)
	for _, r := range keyed {
		s := shardOf(r.Key, n)
		parts[s] = append(parts[s], r)
	}
	limit := c.maxShardBytes()
	plains := make([][]byte, n)
	rows := make([]int, n)
	for s, part := range parts {
		plain, err := encodeRows(part)
		if err != nil {
			return nil, nil, fmt.Errorf("encode shard %d: %w", s, err)
		}
		if len(plain) > limit {
			big := &shardTooBig{shard: s, size: len(plain)}
			for i, r := range keyed {
				if shardOf(r.Key, n) == s {
					big.rows = append(big.rows, i)
				}
			}
			return nil, nil, big
		}
		plains[s], rows[s] = plain, len(part)
	}
	return plains, rows, nil
}

// rowsHash is a stand-in file hash: sha256 over the keyed rows in order.
func rowsHash(rows []Row) string {
	h := sha256.New()
	enc := json.NewEncoder(h)
	for _, r := range rows {
		enc.Encode(r) // writes to a hash never fail
	}
	return hex.EncodeToString(h.Sum(nil))
}

// manifest returns a campaign's ready manifest, cached.
func (c *Coordinator) manifest(ctx context.Context, campaign string) (Manifest, error) {
	c.mu.Lock()
	m, ok := c.manifests[campaign]
	c.mu.Unlock()
	if ok {
		return m, nil
	}
	return c.readManifest(ctx, campaign)
}

// readManifest reads a campaign's ready manifest from the bucket and caches
// it; a campaign the bucket no longer has (pruned on another node, whose
// purge this node's watcher may not have seen yet) leaves the cache.
func (c *Coordinator) readManifest(ctx context.Context, campaign string) (Manifest, error) {
	ctok, err := campaignToken(campaign)
	if err != nil {
		return Manifest{}, err
	}
	var m Manifest
	e, err := c.kv.Get(ctx, manifestKey(ctok))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		c.mu.Lock()
		delete(c.manifests, campaign)
		c.mu.Unlock()
		return Manifest{}, fmt.Errorf("%w: %s", ErrNoCampaign, campaign)
	}
	if err != nil {
		return Manifest{}, fmt.Errorf("shares: read manifest of %s: %w", campaign, err)
	}
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		return Manifest{}, fmt.Errorf("shares: read manifest of %s: %w", campaign, err)
	}
	if m.State != ManifestReady {
		return Manifest{}, fmt.Errorf("%w: %s is still being published", ErrNoCampaign, campaign)
	}
	c.mu.Lock()
	c.manifests[campaign] = m
	c.mu.Unlock()
	return m, nil
}
