package replica

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/postwarden/postwarden/suppression"
)

// ImportLock is an import run's lock in the bucket Config.ImportLocks,
// held by this node (LockImport) and renewed in the background until
// Release.
type ImportLock struct {
	r     *Replica
	kv    jetstream.KeyValue
	key   string // the bucket's key: the keyed index of the run's records
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once
	mu    sync.Mutex
	rev   uint64    // revision of this holder's last write
	wrote time.Time // when that write was sent (monotonic): the lock lasts until the TTL after it, at least
	lost  error     // why the lock is no longer held; nil while it is
}

// LockImport takes the cluster-wide lock of the import named key (hex of
// the import's identity, suppression.ImportProgress.Key) for this node:
// Create of the key in the bucket Config.ImportLocks (TTL
// Config.ImportLockTTL, the stream's replicas), the node's name as value.
// The bucket's key is the keyed index the run's records travel under, not
// the identity itself. While the lock is held a goroutine renews it (Update
// at the revision last written) every third of the TTL; Release deletes it
// (purge at that revision, so a lock another node took since is left
// alone). A holder that vanishes (kill -9, Close) stops renewing, and the
// lock lapses within the TTL. A lock this node's name holds that this
// replica did not take was left by the node's previous process (killed
// with it: only one process opens a node's store) and is taken over at once
// rather than waited out. Another holder: *suppression.ImportRunningError.
// NATS out of reach: an error, as CatchUp's.
func (r *Replica) LockImport(ctx context.Context, key string) (*ImportLock, error) {
	if nc := r.js.Conn(); nc == nil || !nc.IsConnected() {
		return nil, errors.New("lock the import: not connected to NATS")
	}
	kv, err := r.importLocks(ctx)
	if err != nil {
		return nil, fmt.Errorf("lock the import: %w", err)
	}
	l := &ImportLock{r: r, kv: kv, stop: make(chan struct{}), done: make(chan struct{}),
		key: r.store.MutationIndex(suppression.Mutation{Op: suppression.OpImport, Import: &suppression.ImportProgress{Key: key}})}
	// A lock found may lapse or be released before it is read: ask again.
	for range 3 {
		sent := time.Now()
		cctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
		rev, err := kv.Create(cctx, l.key, []byte(r.cfg.Node))
		cancel()
		if err == nil {
			return r.hold(l, rev, sent)
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, fmt.Errorf("lock the import in bucket %s: %w", r.cfg.ImportLocks, err)
		}
		cctx, cancel = context.WithTimeout(ctx, r.cfg.PublishTimeout)
		e, err := kv.Get(cctx, l.key)
		cancel()
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("lock the import: read its holder in bucket %s: %w", r.cfg.ImportLocks, err)
		}
		if string(e.Value()) == r.cfg.Node && !r.holding(l.key) {
			sent := time.Now()
			cctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
			rev, err := kv.Update(cctx, l.key, []byte(r.cfg.Node), e.Revision())
			cancel()
			if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
				continue // renewed, released or taken meanwhile: ask again
			}
			if err != nil {
				return nil, fmt.Errorf("lock the import: take over this node's earlier lock in bucket %s: %w", r.cfg.ImportLocks, err)
			}
			r.log.Info().Msg("import lock this node's previous process left taken over")
			return r.hold(l, rev, sent)
		}
		// The server's time of the holder's last write, read on this
		// node's clock: clamped, so a skewed clock never says more than the TTL.
		left := min(max(r.cfg.ImportLockTTL-r.cfg.Now().Sub(e.Created()), 0), r.cfg.ImportLockTTL)
		left = max((left + time.Second - 1).Truncate(time.Second), time.Second) // whole seconds, rounded up
		return nil, &suppression.ImportRunningError{Node: string(e.Value()), Within: left}
	}
	return nil, fmt.Errorf("lock the import in bucket %s: taken and released again and again; try again", r.cfg.ImportLocks)
}

// hold makes l this replica's, written at revision rev (sent at sent), and
// starts its renewal, unless the replica is closed (the lock is then
// released at once).
func (r *Replica) hold(l *ImportLock, rev uint64, sent time.Time) (*ImportLock, error) {
	l.rev, l.wrote = rev, sent
	r.mu.Lock()
	ctx := r.runCtx
	if ctx == nil || ctx.Err() != nil {
		r.mu.Unlock()
		close(l.done)
		l.Release()
		return nil, errors.New("lock the import: the suppression replica is not running")
	}
	r.wg.Add(1) // before Close cancels ctx (under mu): Close waits for it
	if r.heldLocks == nil {
		r.heldLocks = map[string]bool{}
	}
	r.heldLocks[l.key] = true
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		l.renew(ctx)
		r.mu.Lock()
		delete(r.heldLocks, l.key)
		r.mu.Unlock()
	}()
	return l, nil
}

// holding reports whether this replica holds the import lock key now.
func (r *Replica) holding(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.heldLocks[key]
}

// importLocks opens or creates the bucket of the import locks, once.
func (r *Replica) importLocks(ctx context.Context) (jetstream.KeyValue, error) {
	r.mu.Lock()
	kv := r.locks
	r.mu.Unlock()
	if kv != nil {
		return kv, nil
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	kv, err := r.js.CreateOrUpdateKeyValue(cctx, jetstream.KeyValueConfig{
		Bucket:      r.cfg.ImportLocks,
		Description: "postwarden import run locks (keys: keyed indexes; values: node names)",
		History:     1,
		TTL:         r.cfg.ImportLockTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    r.cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("bucket %s (replicas %d): %w", r.cfg.ImportLocks, r.cfg.Replicas, err)
	}
	r.mu.Lock()
	r.locks = kv
	r.mu.Unlock()
	return kv, nil
}

// renew writes the lock again every third of the TTL until Release or ctx
// ends (Close): then it stops, and the lock lapses unless released.
func (l *ImportLock) renew(ctx context.Context) {
	defer close(l.done)
	ttl := l.r.cfg.ImportLockTTL
	t := time.NewTicker(ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-ctx.Done():
			l.setLost(errors.New("import lock: the suppression replica closed; the lock is no longer renewed"))
			return
		case <-t.C:
		}
		l.mu.Lock()
		rev := l.rev
		l.mu.Unlock()
		sent := time.Now()
		cctx, cancel := context.WithTimeout(ctx, min(l.r.cfg.PublishTimeout, ttl/3))
		next, err := l.kv.Update(cctx, l.key, []byte(l.r.cfg.Node), rev)
		cancel()
		switch {
		case err == nil:
			l.mu.Lock()
			l.rev, l.wrote = next, sent
			l.mu.Unlock()
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch):
			// It lapsed (and may have been taken): no longer ours.
			l.setLost(fmt.Errorf("import lock: lapsed or taken by another node before this node renewed it: %w", err))
			return
		default: // NATS out of reach for a moment: Held says when it lapses
			l.r.log.Warn().Err(err).Msg("import lock not renewed; retrying")
		}
	}
}

// setLost records why the lock is no longer held, the first reason only.
func (l *ImportLock) setLost(err error) {
	l.mu.Lock()
	if l.lost == nil {
		l.lost = err
	}
	l.mu.Unlock()
}

// Held is nil while the lock is this node's (suppression.ImportLock): it
// was renewed within the TTL and nothing said otherwise.
func (l *ImportLock) Held() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost != nil {
		return l.lost
	}
	if ttl := l.r.cfg.ImportLockTTL; time.Since(l.wrote) >= ttl {
		return fmt.Errorf("import lock: not renewed within %s, so it lapsed", ttl)
	}
	return nil
}

// Release stops the renewal and deletes the lock if it is still this
// node's (suppression.ImportLock); a failure is logged: the lock lapses.
func (l *ImportLock) Release() {
	l.once.Do(func() {
		close(l.stop)
		<-l.done
		l.mu.Lock()
		rev := l.rev
		l.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), l.r.cfg.PublishTimeout)
		defer cancel()
		err := l.kv.Purge(ctx, l.key, jetstream.LastRevision(rev))
		switch {
		case err == nil:
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch):
			l.r.log.Debug().Msg("import lock lapsed before its release")
		default:
			l.r.log.Warn().Err(err).Dur("lapses_within_ms", l.r.cfg.ImportLockTTL).Msg("import lock not released; it lapses")
		}
	})
}

// LockImport takes the import's lock for the cluster
// (suppression.ImportLocker; see Replica.LockImport).
func (s *Store) LockImport(key string) (suppression.ImportLock, error) {
	l, err := s.r.LockImport(context.Background(), key)
	if err != nil {
		return nil, err
	}
	return l, nil
}

var _ suppression.ImportLocker = (*Store)(nil)
