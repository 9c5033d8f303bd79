package subscribers

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/address"
)

// ---- replicated writes (a cluster node: suppression/replica) ----
//
// On a cluster every write a campaign's gate or a subject export reads is an
// Op: checked on the node that takes it (CheckOp), published on the
// replicated suppression stream, and applied by every node, in stream order
// (ApplyOps). An Op carries the origin's time and the SubscriberID of a
// record it creates, so every node writes the same history. Erasure is not
// an Op: the suppression stream's erasure reaches every node's consent store
// through the replica's OnErase (EraseIndex).

// Op kinds.
const (
	OpSubscribe   = "subscribe"   // Subscribe
	OpConfirm     = "confirm"     // Confirm
	OpUnsubscribe = "unsubscribe" // Unsubscribe
	OpImport      = "import"      // one Candidate of Import
)

// Op is one consent write as data. Its address and personal fields cross
// the network only inside the replica's sealed change.
type Op struct {
	Kind   string    `json:"kind"`
	ID     string    `json:"id"`     // unique; the events it writes carry it, so a re-apply is skipped
	Time   time.Time `json:"time"`   // when it was made (the events' recorded time)
	Person string    `json:"person"` // SubscriberID of a record it creates

	Sub       *Subscription `json:"sub,omitempty"`  // OpSubscribe
	Candidate *Candidate    `json:"cand,omitempty"` // OpImport
	// OpConfirm, OpUnsubscribe:
	Address   string `json:"addr,omitempty"`
	List      string `json:"list,omitempty"`
	IP        string `json:"ip,omitempty"`
	UserAgent string `json:"ua,omitempty"`
	Source    string `json:"source,omitempty"`
}

// Refusals of an op: the store's answer to it, the same on every node;
// nothing is written. Match them with errors.Is (ErrAlreadyConfirmed…).
func isRefusal(err error) bool {
	for _, r := range []error{ErrNotFound, ErrNoPending, ErrAlreadyConfirmed, ErrExists, ErrUnsubscribed, ErrErased} {
		if errors.Is(err, r) {
			return true
		}
	}
	return false
}

// SubscribeOp is the op of Subscribe.
func SubscribeOp(sub Subscription) Op { return Op{Kind: OpSubscribe, Sub: &sub} }

// ConfirmOp is the op of Confirm.
func ConfirmOp(addr, list, ip, ua string) Op {
	return Op{Kind: OpConfirm, Address: addr, List: list, IP: ip, UserAgent: ua}
}

// UnsubscribeOp is the op of Unsubscribe.
func UnsubscribeOp(addr, list, source string) Op {
	return Op{Kind: OpUnsubscribe, Address: addr, List: list, Source: source}
}

// ImportOp is the op of importing one Candidate.
func ImportOp(c Candidate) Op { return Op{Kind: OpImport, Candidate: &c} }

// checked is an op's normalised arguments.
type checked struct {
	sub   checkedSub
	conf  checkedConfirm
	unsub checkedUnsub
	imp   importRow
}

// CheckOp fills op's id, time and person (when empty), checks its fields
// and the state it finds in this store, and returns it with the hex keyed
// index of its address (the stream subject's). A refusal (ErrNoPending,
// ErrAlreadyConfirmed, ErrErased…, an invalid field) comes back before
// anything is published, as the single-node method would return it.
func (s *Store) CheckOp(op Op) (Op, string, error) {
	if op.ID == "" {
		op.ID = newID()
	}
	if op.Time.IsZero() {
		op.Time = s.now()
	}
	op.Time = op.Time.UTC()
	if op.Person == "" {
		op.Person = newID()
	}
	if err := checkField("op id", op.ID, 128); err != nil || strings.ContainsAny(op.ID, " \t") {
		return Op{}, "", fmt.Errorf("consent op: id %q: want up to 128 bytes without spaces", op.ID)
	}
	c, key, err := s.checkOp(op)
	if err != nil {
		return Op{}, "", err
	}
	err = s.view(func(tx *bbolt.Tx) error {
		_, err := s.applyTx(tx, op, c)
		return err
	})
	if err != nil {
		return Op{}, "", err
	}
	return op, hex.EncodeToString(s.box.Index(key)), nil
}

// checkOp checks op's fields and returns them normalised with the address key.
func (s *Store) checkOp(op Op) (checked, string, error) {
	var (
		c   checked
		err error
	)
	switch op.Kind {
	case OpSubscribe:
		if op.Sub == nil {
			return c, "", errors.New("consent op subscribe: no subscription")
		}
		c.sub, err = checkSubscribe(*op.Sub)
		return c, c.sub.key, err
	case OpConfirm:
		c.conf, err = checkConfirm(op.Address, op.List, op.IP, op.UserAgent)
		return c, c.conf.key, err
	case OpUnsubscribe:
		c.unsub, err = checkUnsubscribe(op.Address, op.List, op.Source)
		return c, c.unsub.key, err
	case OpImport:
		if op.Candidate == nil {
			return c, "", errors.New("consent op import: no candidate")
		}
		// Checked against the origin's clock, once: a node whose clock
		// is behind must not refuse a consent time the origin accepted.
		c.imp, err = s.checkCandidate(*op.Candidate, op.Time)
		return c, c.imp.key, err
	}
	return c, "", fmt.Errorf("consent op: unknown kind %q", op.Kind)
}

// applyTx applies op in tx (a read-only tx: only finds its refusal). An op
// whose events are the latest of its history already (applied ahead of the
// stream, then delivered by it) is skipped.
func (s *Store) applyTx(tx *bbolt.Tx, op Op, c checked) (Event, error) {
	st := stamp{now: op.Time, person: op.Person, op: op.ID}
	if tx.Writable() && s.appliedLast(tx, op, c) {
		return Event{}, nil
	}
	switch op.Kind {
	case OpSubscribe:
		return s.subscribeTx(tx, st, c.sub)
	case OpConfirm:
		return s.confirmTx(tx, st, c.conf)
	case OpUnsubscribe:
		return Event{}, s.unsubscribeTx(tx, st, c.unsub)
	case OpImport:
		e, refused, err := s.importOne(tx, tx.Bucket(bucketEvents), c.imp, st)
		if err != nil {
			return Event{}, err
		}
		return e, refused
	}
	return Event{}, fmt.Errorf("consent op: unknown kind %q", op.Kind)
}

// appliedLast reports whether the latest event op would write after is op's own.
func (s *Store) appliedLast(tx *bbolt.Tx, op Op, c checked) bool {
	var key, list string
	switch op.Kind {
	case OpSubscribe:
		key, list = c.sub.key, c.sub.sub.List
	case OpConfirm:
		key, list = c.conf.key, c.conf.list
	case OpImport:
		key, list = c.imp.key, c.imp.List
	default: // an unsubscribe writes nothing twice anyway
		return false
	}
	last := lastEvent(tx.Bucket(bucketEvents), groupPrefix(s.box.Index(key), list))
	if last == nil {
		return false
	}
	var se storedEvent
	return json.Unmarshal(last[1:], &se) == nil && se.Op == op.ID
}

// keyAppliedSeq is the last stream sequence applied by ApplyOps (bucket meta).
var keyAppliedSeq = []byte("applied_seq")

// Applied is one op of the stream with its sequence, for ApplyOps.
type Applied struct {
	Seq uint64 // 0: applied ahead of the stream, not recorded
	Op  Op
}

// ApplyOps applies ops of the stream, in order, in one fsynced transaction,
// recording the last sequence with them: an op at or below the recorded
// sequence is skipped, so a stream replayed from an earlier point applies
// nothing twice. refused[i] is ops[i]'s refusal (the store's answer, the
// same on every node; nothing written); err means nothing was applied.
func (s *Store) ApplyOps(ops []Applied) (refused []error, err error) {
	refused = make([]error, len(ops))
	err = s.update(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		last := appliedSeqTx(tx)
		for i, a := range ops {
			refused[i] = nil
			if a.Seq > 0 {
				if a.Seq <= last {
					continue
				}
				last = a.Seq
				if err := meta.Put(keyAppliedSeq, binary.BigEndian.AppendUint64(nil, a.Seq)); err != nil {
					return err
				}
			}
			c, key, err := s.checkOp(a.Op)
			if err != nil { // malformed: refused alike everywhere
				refused[i] = err
				continue
			}
			if _, err := s.applyTx(tx, a.Op, c); err != nil {
				if !isRefusal(err) {
					return fmt.Errorf("consent op %s (%s, %s): %w", a.Op.ID, a.Op.Kind, address.Mask(key), err)
				}
				refused[i] = err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("apply %d consent ops: %w", len(ops), err)
	}
	return refused, nil
}

// ApplyEncoded is ApplyOps for ops as JSON, one per sequence (how the
// suppression replica hands them over: it declares no consent types).
func (s *Store) ApplyEncoded(seqs []uint64, ops [][]byte) ([]error, error) {
	if len(seqs) != len(ops) {
		return nil, errors.New("apply consent ops: sequences and ops differ in number")
	}
	as := make([]Applied, len(ops))
	bad := make([]error, len(ops))
	for i, j := range ops {
		as[i].Seq = seqs[i]
		if err := json.Unmarshal(j, &as[i].Op); err != nil {
			bad[i] = fmt.Errorf("decode consent op: %w", err)
			as[i].Op = Op{Kind: "undecodable"} // refused by checkOp, its sequence recorded
		}
	}
	refused, err := s.ApplyOps(as)
	if err != nil {
		return nil, err
	}
	for i := range refused {
		if bad[i] != nil {
			refused[i] = bad[i]
		}
	}
	return refused, nil
}

// AppliedSeq returns the last stream sequence ApplyOps recorded (0: none).
func (s *Store) AppliedSeq() (uint64, error) {
	var seq uint64
	err := s.view(func(tx *bbolt.Tx) error { seq = appliedSeqTx(tx); return nil })
	if err != nil {
		return 0, fmt.Errorf("read consent applied sequence: %w", err)
	}
	return seq, nil
}
