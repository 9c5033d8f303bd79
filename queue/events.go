package queue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/bbolt"
)

// bktEvents holds campaign event counters:
//
//	events  campaign \x00 kind → 8-byte big-endian count
//
// It is created on first use (Open's bucket list belongs to store.go).
var bktEvents = []byte("events")

// maxEventKindLen bounds an event kind ("unsubscribed", "suppressed:complaint"…).
const maxEventKindLen = 64

// AddCampaignEvent adds one to campaign's counter of kind: "unsubscribed",
// "complained", "bounced_hard", "bounced_soft", "suppressed:<reason>", or any
// other short string without control characters. It uses db.Batch (many
// goroutines count at once) and returns after the commit is fsynced.
func (s *Store) AddCampaignEvent(campaign, kind string) error {
	if err := checkEvent(campaign, kind); err != nil {
		return fmt.Errorf("count campaign event: %w", err)
	}
	k := join(campaign, kind)
	err := s.batch(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bktEvents)
		if err != nil {
			return fmt.Errorf("create bucket %s: %w", bktEvents, err)
		}
		var n uint64
		if v := b.Get(k); len(v) == 8 {
			n = binary.BigEndian.Uint64(v)
		}
		var buf [8]byte
		binary.BigEndian.PutUint64(buf[:], n+1)
		return b.Put(k, buf[:])
	})
	if err != nil {
		return fmt.Errorf("count %s event of campaign %s in %s: %w", kind, campaign, s.path, err)
	}
	return nil
}

// CampaignEvents returns campaign's event counters by kind (empty if none).
func (s *Store) CampaignEvents(campaign string) (map[string]int, error) {
	out := map[string]int{}
	err := s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bktEvents)
		if b == nil {
			return nil
		}
		prefix := join(campaign, "")
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if len(v) == 8 {
				out[string(k[len(prefix):])] = int(binary.BigEndian.Uint64(v))
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read events of campaign %s: %w", campaign, err)
	}
	return out, nil
}

// checkEvent rejects campaign ids and kinds that would break keys or logs.
func checkEvent(campaign, kind string) error {
	switch {
	case campaign == "":
		return errors.New("empty campaign")
	case len(campaign) > maxCampaignLen:
		return fmt.Errorf("campaign longer than %d bytes", maxCampaignLen)
	case strings.IndexByte(campaign, 0) >= 0:
		return errors.New("campaign contains NUL")
	case kind == "":
		return errors.New("empty event kind")
	case len(kind) > maxEventKindLen:
		return fmt.Errorf("event kind longer than %d bytes", maxEventKindLen)
	}
	for _, r := range kind {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("event kind %q contains a control character", kind)
		}
	}
	return nil
}
