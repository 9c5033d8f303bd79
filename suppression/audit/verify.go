package audit

import (
	"encoding/json"
	"fmt"
	"strconv"

	"go.etcd.io/bbolt"
)

// VerifyResult is what Verify found.
type VerifyResult struct {
	Entries    int    `json:"entries"`              // entries in the log
	OK         bool   `json:"ok"`                   // the whole chain verified
	FirstBad   uint64 `json:"first_bad,omitempty"`  // the first bad seq when !OK
	Problem    string `json:"problem,omitempty"`    // what is wrong with it, "entry 42: hash mismatch: content changed"
	Checkpoint uint64 `json:"checkpoint,omitempty"` // the chain was verified from the checkpoint at this seq; 0 = from entry 1
	HeadSeq    uint64 `json:"head_seq"`             // the last entry verified
	HeadHash   string `json:"head_hash"`            // its hash
}

// String is the one-line summary `audit verify` prints.
func (r VerifyResult) String() string {
	if !r.OK {
		return fmt.Sprintf("audit log BROKEN (%d entries): %s", r.Entries, r.Problem)
	}
	from := ""
	if r.Checkpoint > 0 {
		from = fmt.Sprintf(" from checkpoint at entry %d", r.Checkpoint)
	}
	if r.HeadSeq == 0 {
		return "audit log verified: empty"
	}
	return fmt.Sprintf("audit log verified%s: %d entries, head entry %d hash %s", from, r.Entries, r.HeadSeq, r.HeadHash)
}

// Verify recomputes the whole chain in one read transaction and reports the
// first bad entry. The error is for failures to read the file; a broken chain
// is reported in the result.
func (l *Log) Verify() (VerifyResult, error) {
	var r VerifyResult
	err := l.view(func(tx *bbolt.Tx) error {
		var err error
		r, err = verifyTx(tx)
		return err
	})
	if err != nil {
		return VerifyResult{}, fmt.Errorf("verify audit log: %w", err)
	}
	return r, nil
}

func verifyTx(tx *bbolt.Tx) (VerifyResult, error) {
	var r VerifyResult
	fail := func(seq uint64, format string, args ...any) {
		if r.Problem == "" {
			r.FirstBad, r.Problem = seq, fmt.Sprintf(format, args...)
		}
	}
	cp, hasCP, err := checkpointTx(tx)
	if err != nil {
		fail(0, "checkpoint record damaged: %v", err)
	}
	prev := head{seq: cp.Seq, hash: cp.Hash}
	r.Checkpoint = cp.Seq
	vouched := !hasCP // a checkpoint must be named by an audit.prune entry
	b := tx.Bucket(bucketEntries)
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		r.Entries++
		if r.Problem != "" {
			continue
		}
		if len(k) != 8 {
			fail(prev.seq+1, "unexpected key %x after entry %d", k, prev.seq)
			continue
		}
		seq := keySeq(k)
		switch {
		case seq == 0:
			fail(0, "entry 0: no entry has seq 0: added outside the log")
		case seq <= prev.seq:
			fail(seq, "entry %d: still present although the checkpoint at entry %d pruned it", seq, cp.Seq)
		case seq == prev.seq+2:
			fail(prev.seq+1, "entry %d missing: chain jumps from %d to %d", prev.seq+1, prev.seq, seq)
		case seq > prev.seq+2:
			fail(prev.seq+1, "entries %d to %d missing: chain jumps from %d to %d", prev.seq+1, seq-1, prev.seq, seq)
		}
		if r.Problem != "" {
			continue
		}
		var e Entry
		if err := json.Unmarshal(v, &e); err != nil {
			fail(seq, "entry %d: record damaged: %v", seq, err)
			continue
		}
		switch {
		case e.Seq != seq:
			fail(seq, "entry %d: holds the record of entry %d: moved or reordered", seq, e.Seq)
		case Hash(e) != e.Hash:
			fail(seq, "entry %d: hash mismatch: content changed", seq)
		case e.Prev != prev.hash && prev.seq == 0:
			fail(seq, "entry %d: prev should be empty for the first entry", seq)
		case e.Prev != prev.hash && hasCP && prev.seq == cp.Seq:
			fail(seq, "entry %d: prev does not match the hash of the checkpoint at entry %d", seq, cp.Seq)
		case e.Prev != prev.hash:
			fail(seq, "entry %d: prev does not match entry %d's hash", seq, prev.seq)
		}
		if e.Action == ActionPrune && hasCP &&
			e.Details["through_seq"] == strconv.FormatUint(cp.Seq, 10) && e.Details["through_hash"] == cp.Hash {
			vouched = true
		}
		prev = head{seq: seq, hash: e.Hash}
	}
	if n := b.Sequence(); r.Problem == "" && n != prev.seq {
		switch {
		case n < prev.seq:
			fail(n+1, "entry %d: beyond the log's sequence counter %d: added outside the log", n+1, n)
		case n == prev.seq+1:
			fail(n, "entry %d missing at the end: the log has issued up to %d", n, n)
		default:
			fail(prev.seq+1, "entries %d to %d missing at the end: the log has issued up to %d", prev.seq+1, n, n)
		}
	}
	if r.Problem == "" && !vouched {
		fail(cp.Seq, "checkpoint at entry %d is not recorded by any %s entry: forged", cp.Seq, ActionPrune)
	}
	r.OK = r.Problem == ""
	if r.OK {
		r.HeadSeq, r.HeadHash = prev.seq, prev.hash
	}
	return r, nil
}
