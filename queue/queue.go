// Package queue is postwarden's durable delivery queue, stored in one bbolt file.
//
// Contract (failure semantics):
//
//   - A message is durable when Enqueue returns: it was written in a bbolt
//     transaction whose commit fsynced the file. Nothing is acknowledged before that.
//   - Enqueue is idempotent on (Campaign, Key): a message whose key is already
//     known, in any state including finished ones, is counted as a duplicate and
//     not written again, so re-running a campaign never mails anyone twice.
//     PruneFinished and EraseRecipient forget the keys of the records they
//     delete or scrub; suppression still stops an erased address. Withdraw
//     (a cluster share lost) forgets the keys of the messages it cancels.
//   - Each attempt is recorded before the Deliverer is called: the next-attempt
//     time and state active are committed first, so a crash never loops on a
//     remote. The attempt count goes up with the outcome's record, only when
//     the Deliverer was called: a claim cut off by a crash or a stop before
//     Deliver is no attempt (nor is a delivery a crash cut off: the queue cannot
//     tell whether it started; its history says recovered).
//   - After a crash, messages found in state active at Open are recovered. The
//     first recovery of a message makes it ready now (a `campaign send` re-run
//     after kill -9 finishes the job); from the second recovery on it stays
//     deferred until its recorded next attempt, which protects the process from
//     a message that crashes it.
//   - A recipient can receive a message twice only if the crash fell between the
//     remote's 250 reply and the commit recording it; at most
//     MaxUnrecorded(workers) messages are in that window at once.
//   - Finished messages (delivered, bounced, expired, cancelled) keep their record
//     and history for reports, until PruneFinished; their body is deleted.
//   - Suppressions are checked again just before each delivery: an unsubscribe
//     that arrives while a message waits still stops it.
//   - Operator actions (Retry, Hold, Release, Delete, Bounce) never touch a
//     message in flight (state active); it finishes its attempt first.
//   - A delivery error carrying RetryAt() (the MTA's throttle or circuit
//     breaker) is not an attempt: the count is undone and the message waits
//     until that time. Campaign rates and suspensions likewise hold messages
//     back without an attempt (see limits.go). None of these expires a message
//     before MaxAge.
//   - Run stops dispatching when its context ends and returns only after the
//     deliveries in flight have finished and their outcomes are committed.
//     Messages claimed ahead for a worker but not yet started are given back
//     unattempted (state, next attempt and rate slot restored).
//   - The runner group-commits (committer.go): workers hand their outcomes to
//     one loop that records them and claims the next messages in a single
//     fsynced transaction.
//   - The Deliverer is handed a message's pool and the egress source of its
//     last attempt; the source and provider it reports are recorded on the
//     message and its history with the outcome, in the same transaction, and
//     a delivery through a source is counted there in the warm-up ledger
//     (warmup.go): a count is never ahead of or behind its delivery's record.
//
// Protection at rest (see seal.go): no clear recipient is stored. The
// recipient, the idempotency key, replies and reasons are sealed
// (AES-256-GCM, sealed.Box) per record, the body (compressed, see dict.go)
// per message; lookups by person go through keyed HMAC indexes. Domain,
// campaign, list, state and times stay clear for routing and reports.
// EraseRecipient deletes a person's records and Compact rewrites the file so
// the freed pages are gone (an erased person's messages leave only a count per
// campaign and state); PruneFinished enforces retention. Compression
// dictionaries (placeholder samples, no personal data) are kept.
package queue

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/storefile"
)

// State is where a message is in its life.
type State string

// Message states. Ready, deferred, held and active are pending; the rest are finished.
const (
	StateReady     State = "ready"     // due now
	StateDeferred  State = "deferred"  // waiting for its next attempt
	StateHeld      State = "held"      // held by the operator; never dispatched
	StateActive    State = "active"    // claimed by a worker, delivery under way
	StateDelivered State = "delivered" // the remote accepted it
	StateBounced   State = "bounced"   // permanent failure
	StateExpired   State = "expired"   // older than MaxAge, given up
	StateCancelled State = "cancelled" // deleted by the operator or suppressed
)

// States lists every state, pending first.
var States = []State{StateReady, StateDeferred, StateHeld, StateActive,
	StateDelivered, StateBounced, StateExpired, StateCancelled}

// Finished reports whether s is a final state.
func (s State) Finished() bool {
	switch s {
	case StateDelivered, StateBounced, StateExpired, StateCancelled:
		return true
	}
	return false
}

// Valid reports whether s is one of States.
func (s State) Valid() bool {
	for _, v := range States {
		if s == v {
			return true
		}
	}
	return false
}

// due reports whether a message in state s has an entry in the due index.
func (s State) due() bool { return s == StateReady || s == StateDeferred || s == StateActive }

// NewMessage is a message to enqueue. Key is its idempotency key within Campaign.
type NewMessage struct {
	Campaign, List, Key, From, To string
	// Pool is the sending pool its Deliverer picks a source from ("" for
	// the default pool): a campaign's `pool:`.
	Pool string
	Body []byte
	// Dict is the id (from PutDictionary) of the dictionary Body is
	// compressed with; 0 compresses it without one.
	Dict uint32
}

// Message is a queued message's metadata (the body is stored apart; see Store.Body).
type Message struct {
	ID          string    `json:"id"`
	Campaign    string    `json:"campaign"`
	List        string    `json:"list,omitempty"`
	Key         string    `json:"key"`
	From        string    `json:"from"`
	To          string    `json:"to"`
	Domain      string    `json:"domain"`
	State       State     `json:"state"`
	Attempts    int       `json:"attempts"`
	Recoveries  int       `json:"recoveries,omitempty"` // times found active at Open (crash during delivery)
	Created     time.Time `json:"created"`
	Updated     time.Time `json:"updated"`
	NextAttempt time.Time `json:"next_attempt"`
	LastReply   string    `json:"last_reply,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	History     []Attempt `json:"history,omitempty"`
	// Erased is set by EraseRecipient on a message in flight: To, Key,
	// replies and body are gone, and the record goes once its outcome is in.
	Erased bool `json:"erased,omitempty"`
	// Counted names the campaign events already counted for this message's
	// recipient (CountCampaignEvent), so each counts once.
	Counted []string `json:"counted,omitempty"`
	// RateSlot is the time of the campaign-rate token this message reserved; due
	// at exactly that time, it is claimed without taking another token.
	RateSlot time.Time `json:"rate_slot,omitzero"`
	// RateGen names the limiter that reserved RateSlot; a slot of another
	// (an earlier process, an earlier rate) is void (see limits.go).
	RateGen uint64 `json:"rate_gen,omitempty"`
	// Pool is the sending pool (NewMessage.Pool); Source is the egress
	// source the last attempt that reported one used, handed back to the
	// Deliverer so retries keep it; Provider is the recipient's mailbox
	// provider as the last attempt that knew it reported ("" until then).
	// Source and Provider are recorded with the attempt's outcome.
	Pool     string `json:"pool,omitempty"`
	Source   string `json:"source,omitempty"`
	Provider string `json:"provider,omitempty"`
}

// Attempt is one event in a message's history: a delivery attempt, a recovery, an expiry.
type Attempt struct {
	Time    time.Time `json:"time"`
	Outcome string    `json:"outcome"`
	Reply   string    `json:"reply,omitempty"`
	Remote  string    `json:"remote,omitempty"`
	// Source and Provider are what the Deliverer reported for this attempt.
	Source   string `json:"source,omitempty"`
	Provider string `json:"provider,omitempty"`
	// Reason is a bounce's reason as classified (mta/bounce's names:
	// userunknown, hostunknown, blocked…); "" for other outcomes and for
	// records written before it was kept.
	Reason string `json:"reason,omitempty"`
}

// Config configures a Store. Empty fields take the defaults below.
type Config struct {
	Path        string          // bbolt file; created 0600 if missing
	Retry       []time.Duration // wait before attempt i+1 after attempt i fails; default 5m,15m,30m,1h,2h,4h
	MaxAge      time.Duration   // give up this long after Created; default 120h
	OpenTimeout time.Duration   // wait this long for the file lock; default 1s
	Box         *sealed.Box     // seals personal fields and indexes recipients; required
	// Expect is what the data directory knows of the file (its id, whether
	// it must exist); the zero value creates a missing file.
	Expect storefile.Expect
	// OnCampaignEvent, if set, is told each event CountCampaignEvent counted
	// (a person's first of that kind in the campaign), after its commit and
	// outside any transaction, in the caller's goroutine (the runner's
	// follow-up for bounces, inbound for complaints). The campaign brakes
	// judge the campaign there.
	OnCampaignEvent func(campaign, kind string)
}

// Default schedule, mox-like backoff: about 8 h of tries, the last wait
// repeating until DefaultMaxAge. RFC 5321 §4.5.4.1: retry after a wait (30
// min or more is usual), give up after 4–5 days.
var (
	DefaultRetry       = []time.Duration{5 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour, 4 * time.Hour}
	DefaultMaxAge      = 120 * time.Hour
	DefaultOpenTimeout = time.Second
)

// ErrNotFound is returned (wrapped) for an unknown message id or a missing body.
var ErrNotFound = errors.New("queue: not found")

// Store is an open queue file. Its methods are safe for concurrent use.
type Store struct {
	dbmu    sync.RWMutex // write-held only by Compact and Close, which swap or close db
	db      *bbolt.DB
	path    string
	timeout time.Duration
	expect  storefile.Expect // the file's id once opened, for reopening after Compact
	box     *sealed.Box
	log     zerolog.Logger
	retry   []time.Duration
	maxAge  time.Duration

	mu       sync.Mutex
	inflight map[string]struct{}    // ids handed to a worker in this process
	wakers   map[chan struct{}]bool // one per running dispatcher
	rates    map[string]float64     // campaign → msgs/s (mirror of bucket rates)
	limiters map[string]*limiter    // campaign → token bucket, made on first use
	gen      uint64                 // generation of the last limiter made; random at Open
	susp     map[string]Suspension  // Selector.key → active suspension (mirror of bucket susp)
	onEvent  func(campaign, kind string)
}

// Bucket names. Layout:
//
//	msg       id → JSON record: Message with personal fields sealed (see seal.go)
//	body      id → sealed, compressed message bytes (pending messages only; see dict.go)
//	dict      dictionary id (4 bytes, big endian) → tag || sealed sample message (see dict.go)
//	idem      campaign \x00 box.Index(key) → id
//	rcpt      box.Index(recipient address key) || id → nil (removed on erase and prune)
//	meta      "layout" → storage layout version (see seal.go)
//	due       8-byte big-endian unix-nano NextAttempt || id → nil (ready, deferred, active only)
//	state     state \x00 id → nil
//	campaign  campaign \x00 id → state
//	campaigns campaign id → caller's opaque JSON record
//	counts    counters for Stats and CampaignCounts (see counters.go)
//	minutes   delivery outcomes per minute, last 24 h (see counters.go)
//	rates     campaign id → msgs/s (see limits.go)
//	susp      suspensions (see limits.go)
//	erased    campaign \x00 state → 8-byte count of erased people's messages (see privacy.go)
//	warmup    deliveries per (day, source, provider) and each source's first use (see warmup.go)
var (
	bktMsg       = []byte("msg")
	bktBody      = []byte("body")
	bktIdem      = []byte("idem")
	bktDue       = []byte("due")
	bktState     = []byte("state")
	bktCampaign  = []byte("campaign")
	bktCampaigns = []byte("campaigns")
	bktCounts    = []byte("counts")
	bktMinutes   = []byte("minutes")
	bktRates     = []byte("rates")
	bktSusp      = []byte("susp")
	bktRcpt      = []byte("rcpt")
	bktMeta      = []byte("meta")
	bktDict      = []byte("dict")
	bktErased    = []byte("erased")
	bktWarmup    = []byte("warmup")
	allBuckets   = [][]byte{bktMsg, bktBody, bktIdem, bktDue, bktState, bktCampaign, bktCampaigns,
		bktCounts, bktMinutes, bktRates, bktSusp, bktRcpt, bktMeta, bktDict, bktErased, bktWarmup}
)

// Open opens (creating if needed) the queue file and recovers messages left active by a crash.
func Open(cfg Config, log zerolog.Logger) (*Store, error) {
	if cfg.Path == "" {
		return nil, errors.New("open queue: empty path")
	}
	if cfg.Box == nil {
		return nil, fmt.Errorf("open queue %s: no sealing box (data key)", cfg.Path)
	}
	for i, d := range cfg.Retry {
		if d <= 0 {
			return nil, fmt.Errorf("open queue %s: retry step %d is %v, must be positive", cfg.Path, i+1, d)
		}
	}
	if cfg.MaxAge < 0 || cfg.OpenTimeout < 0 {
		return nil, fmt.Errorf("open queue %s: max age and open timeout must not be negative", cfg.Path)
	}
	if len(cfg.Retry) == 0 {
		cfg.Retry = DefaultRetry
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	if cfg.OpenTimeout == 0 {
		cfg.OpenTimeout = DefaultOpenTimeout
	}
	if cfg.Expect.Name == "" {
		cfg.Expect.Name = "queue"
	}
	db, id, err := openDB(cfg.Path, cfg.OpenTimeout, cfg.Expect)
	if err != nil {
		return nil, err
	}
	cfg.Expect.ID, cfg.Expect.Exist = id, true
	s := &Store{
		expect:   cfg.Expect,
		db:       db,
		path:     cfg.Path,
		timeout:  cfg.OpenTimeout,
		box:      cfg.Box,
		log:      log,
		retry:    append([]time.Duration(nil), cfg.Retry...),
		maxAge:   cfg.MaxAge,
		inflight: map[string]struct{}{},
		wakers:   map[chan struct{}]bool{},
		rates:    map[string]float64{},
		limiters: map[string]*limiter{},
		gen:      rand.Uint64() >> 1, // no two processes' limiters share a generation
		susp:     map[string]Suspension{},
		onEvent:  cfg.OnCampaignEvent,
	}
	if err := s.init(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open queue %s: %w", cfg.Path, err)
	}
	return s, nil
}

// openDB checks and opens the bbolt file (see storefile.Open) and returns its id.
func openDB(path string, timeout time.Duration, x storefile.Expect) (*bbolt.DB, string, error) {
	// The freelist is synced (bbolt's default). Not syncing it saved commit
	// time while bodies were stored whole, but then every open in write mode
	// walks the whole file to rebuild it: 1 s for a 1.7 GB queue, on every
	// CLI command run without the daemon (docs/performance.md).
	db, id, err := storefile.Open(path, &bbolt.Options{Timeout: timeout, FreelistType: bbolt.FreelistMapType,
		// Mapped address space, not memory: reads never wait for a remap
		// while the file grows (a remap blocks every reader), until 1 GiB.
		InitialMmapSize: 1 << 30}, x)
	if errors.Is(err, storefile.ErrLocked) {
		return nil, "", fmt.Errorf("queue %s is locked by another process: %w", path, bbolt.ErrTimeout)
	}
	if err != nil {
		return nil, "", fmt.Errorf("open queue: %w", err)
	}
	db.MaxBatchDelay = time.Millisecond // outcomes of concurrent workers share a commit without waiting long
	return db, id, nil
}

// ID returns the store id recorded in the file (see storefile).
func (s *Store) ID() string { return s.expect.ID }

// view, update and batch run fn in a bbolt transaction while no Compact swaps
// the file. Never call one from inside another (fn must not re-enter the Store's
// transactional methods): a waiting Compact would deadlock them.
func (s *Store) view(fn func(*bbolt.Tx) error) (err error) {
	s.dbmu.RLock()
	defer s.dbmu.RUnlock()
	defer storefile.Guard(s.path, &err)() // a damaged page is an error, not a crash
	return s.db.View(fn)
}

func (s *Store) update(fn func(*bbolt.Tx) error) (err error) {
	s.dbmu.RLock()
	defer s.dbmu.RUnlock()
	defer storefile.Guard(s.path, &err)() // a damaged page is an error, not a crash
	return s.db.Update(fn)
}

func (s *Store) batch(fn func(*bbolt.Tx) error) (err error) {
	s.dbmu.RLock()
	defer s.dbmu.RUnlock()
	defer storefile.Guard(s.path, &err)() // a damaged page is an error, not a crash
	return s.db.Batch(fn)
}

// init creates the buckets, moves an older layout to the sealed one, builds the
// counters if missing, loads rates and suspensions, and recovers messages left
// in state active (forgetting those whose recipient was erased meanwhile).
func (s *Store) init() error {
	return s.update(func(tx *bbolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		b := s.buckets(tx)
		if err := s.migrate(tx, b); err != nil {
			return fmt.Errorf("seal older layout: %w", err)
		}
		if err := b.foldErased(); err != nil {
			return fmt.Errorf("fold erased records: %w", err)
		}
		if b.counts.Get(counterVersion) == nil {
			var err error
			if b, err = b.rebuildCounts(tx); err != nil {
				return fmt.Errorf("build counters: %w", err)
			}
		}
		now := time.Now()
		if err := s.loadLimits(tx, now); err != nil {
			return fmt.Errorf("load rates and suspensions: %w", err)
		}
		ids := b.idsInState(StateActive)
		for _, id := range ids {
			m, err := b.get(id)
			if err != nil {
				return err
			}
			if m.Erased { // EraseRecipient met it in flight: only a count stays
				if err := b.forget(&m, StateCancelled); err != nil {
					return err
				}
				continue
			}
			prev := m
			m.Recoveries++
			m.Updated = now
			ev := Attempt{Time: now, Outcome: "recovered", Reply: "process stopped during delivery"}
			if m.Recoveries < 2 {
				m.State, m.NextAttempt = StateReady, now
			} else {
				m.State = StateDeferred // keep the recorded NextAttempt: this message may crash us
				ev.Reply += "; waiting for its scheduled attempt"
			}
			m.History = append(m.History, ev)
			if err := b.save(&m, &prev); err != nil {
				return err
			}
			s.log.Warn().Str("queue_id", id).Str("state", string(m.State)).
				Int("recoveries", m.Recoveries).Time("next_attempt", m.NextAttempt).
				Msg("recovered message left active by a crash")
		}
		return nil
	})
}

// Close closes the queue file. Stop runners first.
func (s *Store) Close() error {
	s.dbmu.Lock()
	defer s.dbmu.Unlock()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close queue %s: %w", s.path, err)
	}
	return nil
}

// Kick wakes the running dispatchers so they look at the due index now.
func (s *Store) Kick() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.wakers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// addWaker registers a dispatcher's wake channel.
func (s *Store) addWaker(ch chan struct{}) {
	s.mu.Lock()
	s.wakers[ch] = true
	s.mu.Unlock()
}

// removeWaker unregisters a dispatcher's wake channel.
func (s *Store) removeWaker(ch chan struct{}) {
	s.mu.Lock()
	delete(s.wakers, ch)
	s.mu.Unlock()
}
