package audit

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"go.etcd.io/bbolt"
)

// Prune removes, oldest first, the entries whose Time is before before,
// stopping at the first one that is not (so what remains is a suffix of the
// chain). In the same transaction it stores a checkpoint with the seq and hash
// of the last removed entry, from which Verify then starts, and appends an
// audit.prune entry naming that checkpoint. It refuses to prune a log that
// does not verify, so pruning never destroys the evidence of tampering. It
// returns how many entries were removed (the audit.prune entry not counted).
//
// Freed bbolt pages are not wiped: the removed records stay in the file until
// overwritten or compacted. Audit entries hold no clear addresses, so this
// matters for size, not for erasure.
func (l *Log) Prune(before time.Time) (int, error) {
	var removed int
	var cp checkpoint
	err := l.update(func(tx *bbolt.Tx) error {
		removed = 0
		r, err := verifyTx(tx)
		if err != nil {
			return err
		}
		if !r.OK {
			return fmt.Errorf("log does not verify, not pruning: %s", r.Problem)
		}
		old, err := oldEntries(tx, before)
		if err != nil || len(old.keys) == 0 {
			return err
		}
		if err := old.delete(tx); err != nil {
			return err
		}
		now := l.now().UTC()
		cp = checkpoint{Seq: old.last.Seq, Hash: old.last.Hash, Time: old.last.Time, Before: before.UTC(), PrunedAt: now}
		if err := l.recordPrune(tx, cp, len(old.keys)); err != nil {
			return err
		}
		removed = len(old.keys)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune audit log: %w", err)
	}
	if removed > 0 {
		l.log.Info().Int("removed", removed).Uint64("checkpoint_seq", cp.Seq).Time("before", before).Msg("audit log pruned")
	}
	return removed, nil
}

// pruned is what Prune removes: the keys of the entries, the AppendOnce keys
// they vouch for, and the last of them.
type pruned struct {
	keys     [][]byte
	onceKeys []string
	last     Entry
}

// oldEntries reads, oldest first, the entries whose Time is before before,
// stopping at the first one that is not.
func oldEntries(tx *bbolt.Tx, before time.Time) (pruned, error) {
	var p pruned
	c := tx.Bucket(bucketEntries).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		var e Entry
		if err := json.Unmarshal(v, &e); err != nil {
			return pruned{}, fmt.Errorf("entry %d: %w", keySeq(k), err)
		}
		if !e.Time.Before(before) {
			break
		}
		p.keys = append(p.keys, append([]byte(nil), k...))
		if ok := e.Details[DetailOnce]; ok != "" {
			p.onceKeys = append(p.onceKeys, ok)
		}
		p.last = e
	}
	return p, nil
}

// delete removes the entries and their AppendOnce keys.
func (p pruned) delete(tx *bbolt.Tx) error {
	b := tx.Bucket(bucketEntries)
	for _, k := range p.keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	for _, k := range p.onceKeys { // a pruned entry no longer vouches for its key
		if err := tx.Bucket(bucketOnce).Delete([]byte(k)); err != nil {
			return err
		}
	}
	return nil
}

// recordPrune stores checkpoint cp and appends the audit.prune entry that
// names it, for removed entries.
func (l *Log) recordPrune(tx *bbolt.Tx, cp checkpoint, removed int) error {
	v, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketMeta).Put(keyCheckpoint, v); err != nil {
		return err
	}
	e, err := l.prepare(Entry{
		Time:   cp.PrunedAt,
		Who:    WhoPrune,
		Action: ActionPrune,
		Reason: "retention",
		Details: map[string]string{
			"through_seq":  strconv.FormatUint(cp.Seq, 10),
			"through_hash": cp.Hash,
			"removed":      strconv.Itoa(removed),
			"before":       cp.Before.Format(time.RFC3339Nano),
		},
	})
	if err != nil {
		return err
	}
	_, err = appendTx(tx, e)
	return err
}

func checkpointTx(tx *bbolt.Tx) (checkpoint, bool, error) {
	var cp checkpoint
	v := tx.Bucket(bucketMeta).Get(keyCheckpoint)
	if v == nil {
		return cp, false, nil
	}
	if err := json.Unmarshal(v, &cp); err != nil {
		return checkpoint{}, true, fmt.Errorf("checkpoint: %w", err)
	}
	return cp, true, nil
}
