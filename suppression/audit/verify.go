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

// verifyTx recomputes the chain in tx from the checkpoint (or entry 1) and
// reports the first problem found, in key order.
func verifyTx(tx *bbolt.Tx) (VerifyResult, error) {
	var r VerifyResult
	fail := func(seq uint64, problem string) {
		if r.Problem == "" && problem != "" {
			r.FirstBad, r.Problem = seq, problem
		}
	}
	cp, hasCP, err := checkpointTx(tx)
	if err != nil {
		fail(0, fmt.Sprintf("checkpoint record damaged: %v", err))
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
			fail(prev.seq+1, fmt.Sprintf("unexpected key %x after entry %d", k, prev.seq))
			continue
		}
		seq := keySeq(k)
		if fail(seqProblem(seq, prev.seq, cp.Seq)); r.Problem != "" {
			continue
		}
		var e Entry
		if err := json.Unmarshal(v, &e); err != nil {
			fail(seq, fmt.Sprintf("entry %d: record damaged: %v", seq, err))
			continue
		}
		fail(seq, entryProblem(e, seq, prev, cp.Seq, hasCP))
		if vouchesFor(e, cp, hasCP) {
			vouched = true
		}
		prev = head{seq: seq, hash: e.Hash}
	}
	if r.Problem == "" {
		fail(tailProblem(b.Sequence(), prev.seq))
	}
	if r.Problem == "" && !vouched {
		fail(cp.Seq, fmt.Sprintf("checkpoint at entry %d is not recorded by any %s entry: forged", cp.Seq, ActionPrune))
	}
	r.OK = r.Problem == ""
	if r.OK {
		r.HeadSeq, r.HeadHash = prev.seq, prev.hash
	}
	return r, nil
}

// seqProblem is what is wrong with finding entry seq right after entry
// prevSeq, from a checkpoint at cpSeq, and the first bad seq; "" when seq
// follows prevSeq.
func seqProblem(seq, prevSeq, cpSeq uint64) (bad uint64, problem string) {
	switch {
	case seq == 0:
		return 0, "entry 0: no entry has seq 0: added outside the log"
	case seq <= prevSeq:
		return seq, fmt.Sprintf("entry %d: still present although the checkpoint at entry %d pruned it", seq, cpSeq)
	case seq == prevSeq+2:
		return prevSeq + 1, fmt.Sprintf("entry %d missing: chain jumps from %d to %d", prevSeq+1, prevSeq, seq)
	case seq > prevSeq+2:
		return prevSeq + 1, fmt.Sprintf("entries %d to %d missing: chain jumps from %d to %d", prevSeq+1, seq-1, prevSeq, seq)
	}
	return 0, ""
}

// entryProblem is what is wrong with e, stored as entry seq after prev (the
// previous entry, or the checkpoint at cpSeq); "" when it chains.
func entryProblem(e Entry, seq uint64, prev head, cpSeq uint64, hasCP bool) string {
	switch {
	case e.Seq != seq:
		return fmt.Sprintf("entry %d: holds the record of entry %d: moved or reordered", seq, e.Seq)
	case Hash(e) != e.Hash:
		return fmt.Sprintf("entry %d: hash mismatch: content changed", seq)
	case e.Prev != prev.hash && prev.seq == 0:
		return fmt.Sprintf("entry %d: prev should be empty for the first entry", seq)
	case e.Prev != prev.hash && hasCP && prev.seq == cpSeq:
		return fmt.Sprintf("entry %d: prev does not match the hash of the checkpoint at entry %d", seq, cpSeq)
	case e.Prev != prev.hash:
		return fmt.Sprintf("entry %d: prev does not match entry %d's hash", seq, prev.seq)
	}
	return ""
}

// vouchesFor reports whether e is the audit.prune entry that names the checkpoint cp.
func vouchesFor(e Entry, cp checkpoint, hasCP bool) bool {
	return e.Action == ActionPrune && hasCP &&
		e.Details["through_seq"] == strconv.FormatUint(cp.Seq, 10) && e.Details["through_hash"] == cp.Hash
}

// tailProblem is what is wrong when the log's sequence counter n differs
// from the last entry lastSeq, and the first bad seq; "" when they agree.
func tailProblem(n, lastSeq uint64) (bad uint64, problem string) {
	switch {
	case n == lastSeq:
		return 0, ""
	case n < lastSeq:
		return n + 1, fmt.Sprintf("entry %d: beyond the log's sequence counter %d: added outside the log", n+1, n)
	case n == lastSeq+1:
		return n, fmt.Sprintf("entry %d missing at the end: the log has issued up to %d", n, n)
	default:
		return lastSeq + 1, fmt.Sprintf("entries %d to %d missing at the end: the log has issued up to %d", lastSeq+1, n, n)
	}
}
