package queue

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/bbolt"
)

// BounceRecord is a bounce or complaint report about one message, as the
// inbound listener parsed it (the fields of mta/bounce.Report).
type BounceRecord struct {
	Recipient, Status, Action, Diagnostic, RemoteMTA string
	Kind                                             string // hard | soft | complaint | unknown
	Reason                                           string // the classifier's reason, kept in the event
	Time                                             time.Time
}

// Limits on what a report may add to a record: VERP addresses are visible to
// recipients, so anyone may send reports, and the record must stay small.
const (
	maxBounceReply  = 1000 // bytes of status and diagnostic kept per event
	maxHistoryLen   = 200  // bounce events stop being appended past this
	bounceOutcomePx = "bounce-"
)

// RecordBounce appends a "bounce-<kind>" event to message id's history (unless
// the same report is there already: a repeat adds nothing) and,
// for a hard or soft report whose Action is "failed", turns a delivered
// message into a bounced one (an asynchronous bounce: the remote accepted it
// with 250, then could not deliver it), setting Reason. It commits (fsynced)
// before returning the updated message, whose To, List and Campaign tell the
// caller whom the report is about. An unknown id gives an error wrapping
// ErrNotFound; so does a message whose recipient was erased (ErrErased):
// nothing about that person is recorded any more. A message in any other state only gains the history event: a
// pending message keeps its schedule, and one in flight is the runner's.
func (s *Store) RecordBounce(id string, r BounceRecord) (Message, error) {
	now := time.Now()
	if r.Time.IsZero() {
		r.Time = now
	}
	reply := strings.TrimSpace(r.Status + " " + r.Diagnostic)
	if len(reply) > maxBounceReply {
		reply = strings.ToValidUTF8(reply[:maxBounceReply], "")
	}
	kind := r.Kind
	if kind == "" {
		kind = "unknown"
	}
	var out Message
	err := s.update(func(tx *bbolt.Tx) error {
		b := s.buckets(tx)
		m, err := b.get(id)
		if err != nil {
			return err
		}
		if m.Erased {
			return fmt.Errorf("message %s: %w", id, ErrErased)
		}
		prev := m
		changed := false
		ev := Attempt{Time: r.Time, Outcome: bounceOutcomePx + kind, Reply: reply, Remote: r.RemoteMTA, Reason: r.Reason}
		repeat := slices.ContainsFunc(m.History, func(a Attempt) bool {
			return a.Outcome == ev.Outcome && a.Reply == ev.Reply && a.Remote == ev.Remote
		})
		if !repeat && len(m.History) < maxHistoryLen { // a report sent again adds nothing
			m.History = append(m.History, ev)
			changed = true
		}
		failed := strings.EqualFold(strings.TrimSpace(r.Action), "failed")
		if (kind == "hard" || kind == "soft") && failed && m.State == StateDelivered {
			m.State = StateBounced
			m.LastReply = reply
			m.Reason = "bounced after delivery: " + reply
			changed = true
		}
		if !changed {
			out = m
			return nil
		}
		m.Updated = now
		if err := b.save(&m, &prev); err != nil {
			return err
		}
		out = m
		return nil
	})
	if err != nil {
		return Message{}, fmt.Errorf("record bounce of %s in %s: %w", id, s.path, err)
	}
	s.log.Info().Str("queue_id", id).Str("kind", kind).Str("status", r.Status).
		Str("state", string(out.State)).Msg("bounce recorded")
	return out, nil
}
