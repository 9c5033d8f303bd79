package queue

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// bktTimings holds campaign timings, one per event, naming nobody:
//
//	timings  campaign \x00 kind \x00 at (8-byte big-endian Unix ns) seq (8 bytes) → took (8-byte ns)
//
// An unsubscribe's timing is when it was asked and how long until the
// suppression store held it: the evidence that opt-outs are honoured at
// once. It is created on first use.
var bktTimings = []byte("timings")

// Timing is one timed campaign event.
type Timing struct {
	At   time.Time     `json:"at"`   // when the event was asked for (UTC)
	Took time.Duration `json:"took"` // until it was done
}

// AddCampaignTiming keeps one timing of kind ("unsubscribe") for campaign.
// It uses db.Batch (recipient pages time at once) and returns after the
// commit is fsynced.
func (s *Store) AddCampaignTiming(campaign, kind string, at time.Time, took time.Duration) error {
	if err := checkEvent(campaign, kind); err != nil {
		return fmt.Errorf("keep campaign timing: %w", err)
	}
	err := s.batch(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bktTimings)
		if err != nil {
			return fmt.Errorf("create bucket %s: %w", bktTimings, err)
		}
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		k := join(campaign, kind)
		k = append(k, 0)
		k = binary.BigEndian.AppendUint64(k, uint64(at.UnixNano()))
		k = binary.BigEndian.AppendUint64(k, seq) // two at the same nanosecond both stay
		return b.Put(k, binary.BigEndian.AppendUint64(nil, uint64(max(took, 0))))
	})
	if err != nil {
		return fmt.Errorf("keep %s timing of campaign %s in %s: %w", kind, campaign, s.path, err)
	}
	return nil
}

// CampaignTimings returns campaign's timings of kind, oldest first.
func (s *Store) CampaignTimings(campaign, kind string) ([]Timing, error) {
	var out []Timing
	prefix := append(join(campaign, kind), 0)
	err := s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bktTimings)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			rest := k[len(prefix):]
			if len(rest) != 16 || len(v) != 8 {
				continue
			}
			at := time.Unix(0, int64(binary.BigEndian.Uint64(rest[:8]))).UTC()
			out = append(out, Timing{At: at, Took: time.Duration(binary.BigEndian.Uint64(v))})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read %s timings of campaign %s: %w", kind, campaign, err)
	}
	return out, nil
}
