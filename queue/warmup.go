package queue

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// The warm-up ledger (issue 12): how many messages each egress source
// delivered to each provider per UTC day, and the day each source was first
// used, so a warm-up schedule (day 1 = first use) survives a restart. It is
// written in the transaction that records a delivered outcome, so a count
// is never ahead of or behind the record of the delivery it counts. Bucket
// "warmup", keys:
//
//	f \x00 source                          8-byte big-endian UTC day of first use (unix days)
//	n || 8-byte day || source \x00 provider 8-byte big-endian count of deliveries that day
//
// Day counters older than warmupKeep days are dropped whenever a new
// counter is made (once per source, provider and day), like the minutes.

// warmupKeep is how many days before today the day counters are kept.
const warmupKeep = 3

// unixDay is t's UTC date as days since 1970-01-01.
func unixDay(t time.Time) int64 {
	sec := t.Unix()
	d := sec / 86400
	if sec < 0 && sec%86400 != 0 {
		d--
	}
	return max(d, 0)
}

// dayTime is midnight UTC of unix day d.
func dayTime(d int64) time.Time { return time.Unix(d*86400, 0).UTC() }

func warmFirstKey(source string) []byte { return join("f", source) }

// warmDayPrefix is the prefix of day d's counters.
func warmDayPrefix(d int64) []byte {
	k := make([]byte, 9, 64)
	k[0] = 'n'
	binary.BigEndian.PutUint64(k[1:], uint64(d))
	return k
}

func warmCountKey(d int64, source, provider string) []byte {
	k := warmDayPrefix(d)
	k = append(k, source...)
	k = append(k, 0)
	return append(k, provider...)
}

// countWarmup counts one delivery through source to provider at now, and
// records now's day as source's first use if it has none.
func (b bkts) countWarmup(now time.Time, source, provider string) error {
	day := unixDay(now)
	// Each value is its own slice: bbolt keeps it until the commit.
	fk := warmFirstKey(source)
	if b.warmup.Get(fk) == nil {
		if err := b.warmup.Put(fk, binary.BigEndian.AppendUint64(nil, uint64(day))); err != nil {
			return fmt.Errorf("record first use of source %s: %w", source, err)
		}
	}
	k := warmCountKey(day, source, provider)
	var n uint64
	if old := b.warmup.Get(k); len(old) == 8 {
		n = binary.BigEndian.Uint64(old)
	} else if err := b.pruneWarmup(day - warmupKeep); err != nil {
		return fmt.Errorf("prune warm-up counters: %w", err)
	}
	if err := b.warmup.Put(k, binary.BigEndian.AppendUint64(nil, n+1)); err != nil {
		return fmt.Errorf("count delivery through source %s: %w", source, err)
	}
	return nil
}

// pruneWarmup deletes the day counters of days before oldest.
func (b bkts) pruneWarmup(oldest int64) error {
	cutoff := warmDayPrefix(oldest)
	var stale [][]byte
	c := b.warmup.Cursor()
	for k, _ := c.Seek([]byte{'n'}); k != nil && k[0] == 'n' && bytes.Compare(k, cutoff) < 0; k, _ = c.Next() {
		stale = append(stale, bytes.Clone(k))
	}
	for _, k := range stale {
		if err := b.warmup.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// WarmupLedger returns each source's first use (midnight UTC of the day of
// its first delivery) and the deliveries of day's UTC date by
// [2]string{source, provider}. Only the last few days' counts are kept:
// an older day reads as none.
func (s *Store) WarmupLedger(day time.Time) (first map[string]time.Time, sent map[[2]string]int, err error) {
	first, sent = map[string]time.Time{}, map[[2]string]int{}
	err = s.view(func(tx *bbolt.Tx) error {
		b := s.buckets(tx)
		fp := join("f", "")
		c := b.warmup.Cursor()
		for k, v := c.Seek(fp); k != nil && bytes.HasPrefix(k, fp); k, v = c.Next() {
			if len(v) == 8 {
				first[string(k[len(fp):])] = dayTime(int64(binary.BigEndian.Uint64(v)))
			}
		}
		dp := warmDayPrefix(unixDay(day))
		for k, v := c.Seek(dp); k != nil && bytes.HasPrefix(k, dp); k, v = c.Next() {
			rest := k[len(dp):]
			i := bytes.IndexByte(rest, 0)
			if i < 0 || len(v) != 8 {
				continue
			}
			sent[[2]string{string(rest[:i]), string(rest[i+1:])}] += int(binary.BigEndian.Uint64(v))
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read warm-up ledger of %s: %w", s.path, err)
	}
	return first, sent, nil
}
