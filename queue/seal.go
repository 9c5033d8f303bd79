package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/address"
)

// Storage layout (version 2). A record in bucket msg is the JSON of
//
//	{<Message with to, key, last_reply, reason and every history reply
//	  emptied>, "v": 2, "sealed": box.Seal(JSON personal, "queue:msg:"+id)}
//
// so the recipient, its idempotency key and anything a remote or an
// operator wrote (replies quote addresses) exist only sealed, bound to the
// message id. A body is box.Seal(format || payload, "queue:zbody:"+id), the
// payload compressed (see dict.go): it cannot be moved to another message.
// Keys that stand for a person are keyed HMACs (box.Index): idem campaign
// \x00 Index(key), rcpt Index(address key) || id.
// Version 1 (no "v": everything clear) is sealed in place at Open.
const layoutVersion = 2

// layoutKey holds the layout version in bucket meta.
var layoutKey = []byte("layout")

// record is a message as stored.
type record struct {
	Message
	V      int    `json:"v"`
	Sealed []byte `json:"sealed,omitempty"`
}

// personal is the sealed part of a record.
type personal struct {
	To        string   `json:"to,omitempty"`
	Key       string   `json:"key,omitempty"`
	LastReply string   `json:"last_reply,omitempty"`
	Reason    string   `json:"reason,omitempty"`
	Replies   []string `json:"replies,omitempty"` // Replies[i] is History[i].Reply
}

func msgContext(id string) string  { return "queue:msg:" + id }
func bodyContext(id string) string { return "queue:zbody:" + id }

// encode seals m's personal fields and returns its stored form.
func (b bkts) encode(m *Message) ([]byte, error) {
	p := personal{To: m.To, Key: m.Key, LastReply: m.LastReply, Reason: m.Reason}
	r := record{Message: *m, V: layoutVersion}
	r.To, r.Key, r.LastReply, r.Reason = "", "", "", ""
	if len(m.History) > 0 {
		r.History = make([]Attempt, len(m.History))
		last := -1
		for i, a := range m.History {
			if a.Reply != "" {
				last = i
			}
			a.Reply = ""
			r.History[i] = a
		}
		if last >= 0 {
			p.Replies = make([]string, last+1)
			for i := range p.Replies {
				p.Replies[i] = m.History[i].Reply
			}
		}
	}
	if p.To != "" || p.Key != "" || p.LastReply != "" || p.Reason != "" || p.Replies != nil {
		pj, err := json.Marshal(p)
		if err != nil {
			return nil, err
		}
		r.Sealed = b.box.Seal(pj, msgContext(m.ID))
	}
	return json.Marshal(r)
}

// decode opens a stored record.
func (b bkts) decode(id string, v []byte) (Message, error) {
	var r record
	if err := json.Unmarshal(v, &r); err != nil {
		return Message{}, err
	}
	if r.V != layoutVersion {
		return Message{}, fmt.Errorf("record layout %d, want %d", r.V, layoutVersion)
	}
	m := r.Message
	if r.ID != id {
		return Message{}, errors.New("record does not belong under its key")
	}
	if r.Sealed == nil {
		return m, nil
	}
	pj, err := b.box.Open(r.Sealed, msgContext(id))
	if err != nil {
		return Message{}, err
	}
	var p personal
	if err := json.Unmarshal(pj, &p); err != nil {
		return Message{}, fmt.Errorf("decode sealed fields: %w", err)
	}
	m.To, m.Key, m.LastReply, m.Reason = p.To, p.Key, p.LastReply, p.Reason
	for i := range min(len(p.Replies), len(m.History)) {
		m.History[i].Reply = p.Replies[i]
	}
	return m, nil
}

// idemKey returns campaign \x00 Index(key).
func (b bkts) idemKey(campaign, key string) []byte {
	return b.box.AppendIndex(join(campaign, ""), key)
}

// rcptKey returns Index(address key) || id, or nil when to does not parse
// (an erased record has no recipient).
func (b bkts) rcptKey(to, id string) []byte {
	a, err := address.Parse(to)
	if err != nil {
		return nil
	}
	return append(b.box.Index(a.Key()), id...)
}

// putBody seals and stores message id's packed body (codec.pack: format byte first).
func (b bkts) putBody(id string, packed []byte) error {
	return b.body.Put([]byte(id), b.box.Seal(packed, bodyContext(id)))
}

// migrate seals a version 1 file (every field clear) in place: records,
// bodies and idempotency keys, and builds the recipient index. The clear
// bytes stay in freed pages until Compact.
func (s *Store) migrate(tx *bbolt.Tx, b bkts) error {
	if v := b.meta.Get(layoutKey); len(v) == 1 && v[0] == layoutVersion {
		return nil
	}
	type old struct {
		m    Message
		body []byte
	}
	var olds []old
	c := b.msg.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		var r record
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("decode message %s: %w", k, err)
		}
		if r.V == layoutVersion {
			continue
		}
		o := old{m: r.Message}
		if bv := b.body.Get(k); bv != nil {
			o.body = bytes.Clone(bv)
		}
		olds = append(olds, o)
	}
	plain, err := plainCodec()
	if err != nil {
		return err
	}
	if len(olds) > 0 {
		// Every idempotency key of version 1 is clear: rebuild the bucket.
		if err := tx.DeleteBucket(bktIdem); err != nil {
			return err
		}
		var err error
		if b.idem, err = tx.CreateBucket(bktIdem); err != nil {
			return err
		}
	}
	for _, o := range olds {
		m := o.m
		v, err := b.encode(&m)
		if err != nil {
			return fmt.Errorf("encode message %s: %w", m.ID, err)
		}
		if err := b.msg.Put([]byte(m.ID), v); err != nil {
			return err
		}
		if o.body != nil {
			if err := b.putBody(m.ID, plain.pack(nil, o.body)); err != nil {
				return err
			}
		}
		if m.Key != "" {
			if err := b.idem.Put(b.idemKey(m.Campaign, m.Key), []byte(m.ID)); err != nil {
				return err
			}
		}
		if rk := b.rcptKey(m.To, m.ID); rk != nil {
			if err := b.rcpt.Put(rk, nil); err != nil {
				return err
			}
		}
	}
	if len(olds) > 0 {
		s.log.Warn().Int("messages", len(olds)).
			Msg("queue sealed at rest; compact it (postwarden db compact) so the clear bytes leave the file")
	}
	return b.meta.Put(layoutKey, []byte{layoutVersion})
}
