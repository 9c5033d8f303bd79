package queue

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// Counters, so Stats and CampaignCounts cost the number of states and domains,
// never the number of messages. They live in bucket "counts", are kept by
// bkts.save in the same transaction as the message they count, and are rebuilt
// from the indexes when the bucket is missing (a file written before they
// existed). Keys, each holding an 8-byte big-endian count (absent = 0):
//
//	s \x00 state                    messages in state
//	d \x00 domain \x00 state        pending messages of domain in state
//	c \x00 campaign \x00 state      campaign's messages in state
//	p \x00 provider \x00 state      pending messages of a known provider in state
//	o \x00 source \x00 state        pending messages of a known source in state
//	v                               layout version (present once built)
//
// Bucket "minutes" holds delivery outcomes per minute for the recent rates:
// 8-byte big-endian unix minute → three 8-byte counts (delivered, bounced,
// deferred). Entries older than minuteKeep are pruned as new minutes start.

// minuteKeep is how long per-minute outcome counts are kept.
const minuteKeep = 24 * time.Hour

// counterVersion marks a counts bucket built with the current layout.
var counterVersion = []byte("v")

func stateKey(st State) []byte { return join("s", string(st)) }
func domainKey(domain string, st State) []byte {
	return join("d", string(join(domain, string(st))))
}
func campaignKey(campaign string, st State) []byte {
	return join("c", string(join(campaign, string(st))))
}

func providerKey(provider string, st State) []byte {
	return join("p", string(join(provider, string(st))))
}
func sourceKey(source string, st State) []byte {
	return join("o", string(join(source, string(st))))
}

// pendingKeys are the counters of m's domain, provider and source in its
// state: none when it is finished, and none for a provider or source not
// known yet (Stats finds those as the rest of the state's count).
// They come in an array, not a slice: no allocation on the runner's path.
func pendingKeys(m *Message) (ks pkeys) {
	if !m.State.pending() {
		return ks
	}
	ks.k[0], ks.n = domainKey(m.Domain, m.State), 1
	if m.Provider != "" {
		ks.k[ks.n] = providerKey(m.Provider, m.State)
		ks.n++
	}
	if m.Source != "" {
		ks.k[ks.n] = sourceKey(m.Source, m.State)
		ks.n++
	}
	return ks
}

// pkeys is up to three counter keys.
type pkeys struct {
	k [3][]byte
	n int
}

// all returns the keys.
func (p *pkeys) all() [][]byte { return p.k[:p.n] }

// pending reports whether st counts as queued (not finished).
func (s State) pending() bool { return s.Valid() && !s.Finished() }

// add adds delta to counter k, deleting it when it reaches zero (never below).
func (b bkts) add(k []byte, delta int64) error {
	var n int64
	if v := b.counts.Get(k); len(v) == 8 {
		n = int64(binary.BigEndian.Uint64(v))
	}
	n += delta
	if n <= 0 {
		return b.counts.Delete(k)
	}
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], uint64(n))
	return b.counts.Put(k, v[:])
}

// countMove moves m from prev's state counters to its own (prev nil: a new message).
func (b bkts) countMove(m, prev *Message) error {
	type kd struct {
		k []byte
		d int64
	}
	ops := make([]kd, 0, 10) // at most 2+3 out and 2+3 in: on the stack
	if prev != nil {
		if prev.State != m.State {
			ops = append(ops, kd{stateKey(prev.State), -1}, kd{campaignKey(prev.Campaign, prev.State), -1})
		}
		pk := pendingKeys(prev)
		for _, k := range pk.all() {
			ops = append(ops, kd{k, -1})
		}
	}
	if prev == nil || prev.State != m.State {
		ops = append(ops, kd{stateKey(m.State), 1}, kd{campaignKey(m.Campaign, m.State), 1})
	}
	pk := pendingKeys(m)
	for _, k := range pk.all() {
		ops = append(ops, kd{k, 1})
	}
	for _, o := range ops {
		if err := b.add(o.k, o.d); err != nil {
			return err
		}
	}
	return nil
}

// rebuildCounts recomputes every counter from the state and campaign indexes
// (reading pending messages for their domain). It runs at Open when needed.
func (b bkts) rebuildCounts(tx *bbolt.Tx) (bkts, error) {
	if err := tx.DeleteBucket(bktCounts); err != nil && err != bbolt.ErrBucketNotFound {
		return b, err
	}
	var err error
	if b.counts, err = tx.CreateBucket(bktCounts); err != nil {
		return b, err
	}
	tally := map[string]int64{}
	c := b.state.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		i := bytes.IndexByte(k, 0)
		if i < 0 {
			continue
		}
		st := State(k[:i])
		tally[string(stateKey(st))]++
		if st.pending() {
			m, err := b.get(string(k[i+1:]))
			if err != nil {
				return b, err
			}
			pk := pendingKeys(&m)
			for _, k := range pk.all() {
				tally[string(k)]++
			}
		}
	}
	c = b.campaign.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if i := bytes.IndexByte(k, 0); i >= 0 {
			tally[string(campaignKey(string(k[:i]), State(v)))]++
		}
	}
	for k, n := range tally {
		if err := b.add([]byte(k), n); err != nil {
			return b, err
		}
	}
	return b, b.counts.Put(counterVersion, []byte{1})
}

// counter reads counter k.
func (b bkts) counter(k []byte) int {
	if v := b.counts.Get(k); len(v) == 8 {
		return int(binary.BigEndian.Uint64(v))
	}
	return 0
}

// Outcome slots of a per-minute record.
const (
	minDelivered = iota
	minBounced
	minDeferred
	minSlots
)

// minuteSlot maps an attempt's outcome to its per-minute slot, or -1.
func minuteSlot(st State) int {
	switch st {
	case StateDelivered:
		return minDelivered
	case StateBounced:
		return minBounced
	case StateDeferred, StateExpired:
		return minDeferred
	}
	return -1
}

// minuteKey is the key of t's minute.
func minuteKey(t time.Time) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], uint64(max(t.Unix()/60, 0)))
	return k[:]
}

// countMinute adds one outcome to now's minute, pruning old minutes when a new one starts.
func (b bkts) countMinute(now time.Time, slot int) error {
	if slot < 0 {
		return nil
	}
	k := minuteKey(now)
	v := make([]byte, 8*minSlots)
	if old := b.minutes.Get(k); len(old) == len(v) {
		copy(v, old)
	} else {
		cutoff := minuteKey(now.Add(-minuteKeep))
		var stale [][]byte
		c := b.minutes.Cursor()
		for ok, _ := c.First(); ok != nil && bytes.Compare(ok, cutoff) < 0; ok, _ = c.Next() {
			stale = append(stale, bytes.Clone(ok))
		}
		for _, sk := range stale {
			if err := b.minutes.Delete(sk); err != nil {
				return err
			}
		}
	}
	n := binary.BigEndian.Uint64(v[8*slot:])
	binary.BigEndian.PutUint64(v[8*slot:], n+1)
	return b.minutes.Put(k, v)
}

// recent sums the per-minute outcomes from the start of the minute `minutes`
// before now's to now, and returns them with the span they cover.
func (b bkts) recent(now time.Time, minutes int) ([minSlots]int, time.Duration) {
	var sum [minSlots]int
	startMin := now.Unix()/60 - int64(minutes)
	start := time.Unix(startMin*60, 0)
	from := minuteKey(start)
	c := b.minutes.Cursor()
	for k, v := c.Seek(from); k != nil; k, v = c.Next() {
		if len(v) != 8*minSlots {
			continue
		}
		for i := range sum {
			sum[i] += int(binary.BigEndian.Uint64(v[8*i:]))
		}
	}
	return sum, now.Sub(start)
}

// rateWindows are the spans Stats.Rates reports, by name.
var rateWindows = []struct {
	name    string
	minutes int
}{{"1m", 1}, {"5m", 5}, {"15m", 15}}

// fillRates sets st.Rates (delivered per minute) and st.Recent (outcomes over 15 minutes).
func (b bkts) fillRates(st *Stats, now time.Time) error {
	if b.minutes == nil {
		return fmt.Errorf("minutes bucket missing")
	}
	for _, w := range rateWindows {
		sum, span := b.recent(now, w.minutes)
		if span <= 0 {
			continue
		}
		st.Rates[w.name] = float64(sum[minDelivered]) / span.Minutes()
		if w.minutes == 15 {
			st.Recent = map[string]int{"delivered": sum[minDelivered], "bounced": sum[minBounced], "deferred": sum[minDeferred]}
		}
	}
	return nil
}
