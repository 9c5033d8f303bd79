package queue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// Input limits, so keys stay small and bad input gets a clear error.
const (
	maxCampaignLen = 200
	maxKeyLen      = 512
)

// appendFill is the fill of pages split by Enqueue's appends to msg and body.
const appendFill = 0.9

// EnqueueResult reports what Enqueue did; IDs[i] is msgs[i]'s new id, or "" for a duplicate.
type EnqueueResult struct {
	Added, Duplicates int
	// DuplicatesQueued counts the duplicates whose earlier message is still
	// in the queue (not finished): a resumed run's "already queued".
	DuplicatesQueued int
	IDs              []string
}

// Enqueue stores msgs in one fsynced transaction, skipping (Campaign, Key) pairs already known.
// If any message is invalid it returns an error naming it and writes nothing.
func (s *Store) Enqueue(msgs []NewMessage) (EnqueueResult, error) {
	res := EnqueueResult{IDs: make([]string, len(msgs))}
	if len(msgs) == 0 {
		return res, nil
	}
	addrs, err := validateAll(msgs)
	if err != nil {
		return EnqueueResult{}, err
	}
	// Compressing before the transaction keeps it short and lets callers compress in parallel.
	packed, release, err := s.packBodies(msgs)
	if err != nil {
		return EnqueueResult{}, err
	}
	defer release()
	now := time.Now()
	err = s.update(func(tx *bbolt.Tx) error {
		b := s.buckets(tx)
		// New ids sort after every stored one: pages split by these appends
		// are filled, not left half empty (bbolt's default suits random keys).
		b.msg.FillPercent, b.body.FillPercent = appendFill, appendFill
		seen := make(map[string]bool, len(msgs))
		var last uint64
		if k, _ := b.msg.Cursor().Last(); k != nil {
			last = parseID(k)
		}
		for i, nm := range msgs {
			ik := b.idemKey(nm.Campaign, nm.Key)
			if seen[string(ik)] {
				res.Duplicates++
				continue
			}
			if id := b.idem.Get(ik); id != nil {
				res.Duplicates++
				if m, err := b.get(string(id)); err == nil && !m.State.Finished() {
					res.DuplicatesQueued++
				}
				continue
			}
			seen[string(ik)] = true
			seq, err := b.msg.NextSequence()
			if err != nil {
				return fmt.Errorf("next sequence: %w", err)
			}
			n := nextID(now.UnixMilli(), seq, last)
			last = n
			m := newMessage(fmt.Sprintf("%016x", n), nm, addrs[i], now)
			if sp, ok := s.suspendedFor(m.Domain, m.Campaign, now); ok {
				holdFor(&m, sp, now) // held like the queued ones until the suspension ends
			}
			if err := b.insert(&m, ik, packed[i], addrs[i].Key()); err != nil {
				return err
			}
			res.IDs[i] = m.ID
			res.Added++
		}
		return nil
	})
	if err != nil {
		return EnqueueResult{}, fmt.Errorf("enqueue %d messages in %s: %w", len(msgs), s.path, err)
	}
	if res.Added > 0 {
		s.Kick()
	}
	return res, nil
}

// validateAll checks every message and returns their recipients' addresses,
// or an error naming the first invalid message.
func validateAll(msgs []NewMessage) ([]address.Address, error) {
	addrs := make([]address.Address, len(msgs))
	for i, m := range msgs {
		a, err := validate(m)
		if err != nil {
			return nil, fmt.Errorf("enqueue message %d (%s): %w", i, address.Mask(m.To), err)
		}
		addrs[i] = a
	}
	return addrs, nil
}

// nextID is a new message id: 44 bits of unix millis (until year 2527), 20
// bits of sequence; never below last+1, so ids stay sortable and unique even
// if the clock steps back.
func nextID(unixMilli int64, seq, last uint64) uint64 {
	n := uint64(unixMilli)<<20 | seq&0xfffff
	if n <= last {
		n = last + 1
	}
	return n
}

// newMessage is nm as a ready message with id id, due now, to a.
func newMessage(id string, nm NewMessage, a address.Address, now time.Time) Message {
	return Message{
		ID: id, Campaign: nm.Campaign, List: nm.List, Key: nm.Key, Pool: nm.Pool,
		From: strings.TrimSpace(nm.From), To: a.String(), Domain: a.Domain,
		State: StateReady, Created: now, Updated: now, NextAttempt: now,
	}
}

// insert writes a new message m: its packed body, its idempotency key ik, the
// index of its recipient (addrKey, the address key) and the message itself.
func (b bkts) insert(m *Message, ik, packed []byte, addrKey string) error {
	id := m.ID
	if err := b.putBody(id, packed); err != nil {
		return fmt.Errorf("store body of %s: %w", id, err)
	}
	if err := b.idem.Put(ik, []byte(id)); err != nil {
		return fmt.Errorf("store idempotency key of %s: %w", id, err)
	}
	rk := ik[len(ik)-sealed.IndexSize:] // the key is usually the address key: reuse its index
	if m.Key != addrKey {
		rk = b.box.Index(addrKey)
	}
	if err := b.rcpt.Put(append(bytes.Clone(rk), id...), nil); err != nil {
		return fmt.Errorf("index recipient of %s: %w", id, err)
	}
	return b.save(m, nil)
}

// validate checks one NewMessage and returns its parsed recipient.
// Errors never quote the address in clear (privacy).
func validate(m NewMessage) (address.Address, error) {
	switch {
	case m.Campaign == "":
		return address.Address{}, errors.New("empty campaign")
	case len(m.Campaign) > maxCampaignLen:
		return address.Address{}, fmt.Errorf("campaign longer than %d bytes", maxCampaignLen)
	case strings.IndexByte(m.Campaign, 0) >= 0:
		return address.Address{}, errors.New("campaign contains NUL")
	case len(m.Pool) > maxCampaignLen:
		return address.Address{}, fmt.Errorf("pool longer than %d bytes", maxCampaignLen)
	case strings.IndexByte(m.Pool, 0) >= 0:
		return address.Address{}, errors.New("pool contains NUL")
	case m.Key == "":
		return address.Address{}, errors.New("empty idempotency key")
	case len(m.Key) > maxKeyLen:
		return address.Address{}, fmt.Errorf("idempotency key longer than %d bytes", maxKeyLen)
	case len(m.Body) == 0:
		return address.Address{}, errors.New("empty body")
	}
	a, err := address.Parse(m.To)
	if err != nil {
		return address.Address{}, fmt.Errorf("invalid recipient: %s", problem(err))
	}
	if strings.TrimSpace(m.From) != "" { // "" is the null reverse-path, RFC 5321 §4.5.5
		if _, err := address.Parse(m.From); err != nil {
			return address.Address{}, fmt.Errorf("invalid sender: %s", problem(err))
		}
	}
	return a, nil
}

// problem returns what is wrong with an address without quoting it.
func problem(err error) string {
	var ae *address.Error
	if errors.As(err, &ae) {
		return ae.Problem
	}
	return "unparsable"
}

// parseID decodes a 16-hex id; 0 if malformed.
func parseID(k []byte) uint64 {
	var b [8]byte
	if len(k) != 16 {
		return 0
	}
	for i := 0; i < 8; i++ {
		hi, ok1 := unhex(k[2*i])
		lo, ok2 := unhex(k[2*i+1])
		if !ok1 || !ok2 {
			return 0
		}
		b[i] = hi<<4 | lo
	}
	return binary.BigEndian.Uint64(b[:])
}

// unhex decodes one lower-case hex digit.
func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
