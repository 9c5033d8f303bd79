package queue

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/address"
)

// Withdraw cancels, in one transaction, the messages of campaign not yet
// in flight (ready, deferred or held) whose recipient's keyed index (the
// index Config.Box gives the address key) match accepts: a cluster node
// that lost a campaign share gives its rows up to the node that took it.
// Messages in flight (active) are left to finish and record their outcome.
// A withdrawn message is kept, cancelled with reason, so counts add up;
// its idempotency key is forgotten, so the same row enqueued again (the
// share came back to this node) is a new message, not a duplicate.
// Withdraw does not tell RunnerConfig.OnFinal: a withdrawal is no outcome.
func (s *Store) Withdraw(campaign string, match func(index []byte) bool, reason string) (int, error) {
	if reason = strings.TrimSpace(reason); reason == "" {
		reason = "withdrawn"
	}
	n := 0
	err := s.update(func(tx *bbolt.Tx) error {
		n = 0
		b := s.buckets(tx)
		prefix := join(campaign, "")
		var ids []string
		c := b.campaign.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			switch State(v) {
			case StateReady, StateDeferred, StateHeld:
				ids = append(ids, string(k[len(prefix):]))
			}
		}
		now := time.Now()
		for _, id := range ids {
			if s.isInflight(id) {
				continue // handed to a worker in this process: it finishes
			}
			m, err := b.get(id)
			if err != nil {
				return err
			}
			a, err := address.Parse(m.To)
			if err != nil || m.Erased {
				continue
			}
			if !match(b.box.Index(a.Key())) {
				continue
			}
			prev := m
			m.State, m.Reason, m.Updated = StateCancelled, reason, now
			m.History = append(m.History, Attempt{Time: now, Outcome: string(StateCancelled), Reply: reason})
			if err := b.save(&m, &prev); err != nil {
				return err
			}
			if err := b.idem.Delete(b.idemKey(m.Campaign, m.Key)); err != nil {
				return fmt.Errorf("forget idempotency key of %s: %w", id, err)
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("withdraw messages of campaign %s in queue %s: %w", campaign, s.path, err)
	}
	if n > 0 {
		s.log.Info().Str("campaign", campaign).Int("withdrawn", n).Str("reason", reason).Msg("messages withdrawn")
	}
	return n, nil
}
