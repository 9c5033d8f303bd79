package suppression

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// ---- targets, keys and values ----

// NormalizeTarget turns "ADDR" into its address key and "@DOMAIN" into "@domain".
func NormalizeTarget(target string) (string, error) {
	t := strings.Trim(target, " \t")
	if strings.HasPrefix(t, "@") {
		d, err := address.NormalizeDomain(t[1:])
		if err != nil {
			return "", fmt.Errorf("target: %w", err)
		}
		return "@" + d, nil
	}
	a, err := address.Parse(t)
	if err != nil {
		return "", fmt.Errorf("target: %w", err)
	}
	return a.Key(), nil
}

// addressKey parses a person's address (not a domain) and returns its key.
func addressKey(addr string) (string, error) {
	a, err := address.Parse(strings.Trim(addr, " \t"))
	if err != nil {
		return "", err
	}
	return a.Key(), nil
}

// checkText rejects control characters and over-long values.
func checkText(what, v string, max int) error {
	for _, r := range v {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%s %q: contains a control character", what, v)
		}
	}
	if len(v) > max {
		return fmt.Errorf("%s %q: longer than %d bytes", what, v, max)
	}
	return nil
}

// checkList rejects list names that would break keys or logs.
func checkList(list string) error { return checkText("list", list, maxList) }

// normalize checks e and fills defaults; it returns the entry as it will be stored.
func normalize(e Entry) (Entry, error) {
	t, err := NormalizeTarget(e.Target)
	if err != nil {
		return Entry{}, err
	}
	e.Target = t
	e.List = strings.Trim(e.List, " \t")
	if err := checkList(e.List); err != nil {
		return Entry{}, err
	}
	if e.Reason == "" {
		e.Reason = Manual
	}
	if !e.Reason.Valid() {
		return Entry{}, fmt.Errorf("reason %q: unknown (want %s)", e.Reason, ReasonList())
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = e.Time.UTC()
	return e, nil
}

// key builds idx || 0x00 || list.
func key(idx []byte, list string) []byte {
	k := make([]byte, 0, len(idx)+1+len(list))
	k = append(k, idx...)
	k = append(k, 0)
	return append(k, list...)
}

// splitKey returns the index and list of a stored key.
func splitKey(k []byte) (idx []byte, list string, ok bool) {
	if len(k) < sealed.IndexSize+1 || k[sealed.IndexSize] != 0 {
		return nil, "", false
	}
	return k[:sealed.IndexSize], string(k[sealed.IndexSize+1:]), true
}

// reasonOf reads the reason that leads a value, without allocating for the
// known ones.
func reasonOf(raw []byte) (Reason, bool) {
	i := bytes.IndexByte(raw, 0)
	if i < 0 {
		return "", false
	}
	for _, r := range [...]Reason{HardBounce, Unsubscribed, Complaint, Manual, Erased, Restricted} {
		if string(raw[:i]) == string(r) { // compared in place, no copy
			return r, true
		}
	}
	return Reason(raw[:i]), true
}

// encode builds reason || 0x00 || JSON(st).
func encode(r Reason, st stored) ([]byte, error) {
	j, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(r)+1+len(j))
	out = append(out, r...)
	out = append(out, 0)
	return append(out, j...), nil
}

// decodeValue splits a value (copying out of the mmap).
func decodeValue(raw []byte) (Reason, stored, error) {
	r, ok := reasonOf(raw)
	if !ok {
		return "", stored{}, errors.New("malformed value")
	}
	var st stored
	if err := json.Unmarshal(raw[len(r)+1:], &st); err != nil {
		return "", stored{}, err
	}
	return r, st, nil
}

func (s *Store) sealNote(note string) []byte {
	if note == "" {
		return nil
	}
	return s.box.SealString(note, ctxNote)
}

func (s *Store) openNote(b []byte) (string, error) {
	if b == nil {
		return "", nil
	}
	return s.box.OpenString(b, ctxNote)
}

// entries turns a decoded value into the entries it holds: the leading
// one, and a restriction kept beneath it. target is the clear target when
// the caller knows it; "" makes it open the sealed one (and check it
// belongs under idx).
func (s *Store) entries(idx []byte, list string, r Reason, st stored, target string) ([]Entry, error) {
	ih := hex.EncodeToString(idx)
	if st.Target == nil {
		target = ""
	} else if target == "" {
		t, err := s.box.OpenString(st.Target, ctxTarget)
		if err != nil {
			return nil, fmt.Errorf("entry %s: target: %w", ih[:12], err)
		}
		if !bytes.Equal(s.box.Index(t), idx) {
			return nil, fmt.Errorf("entry %s: target does not belong under its key", ih[:12])
		}
		target = t
	}
	note, err := s.openNote(st.Note)
	if err != nil {
		return nil, fmt.Errorf("entry %s: note: %w", ih[:12], err)
	}
	out := []Entry{{Target: target, List: list, Reason: r, Source: st.Source, Note: note, Time: st.Time, Index: ih, Consents: st.Consents}}
	if h := st.Hold; h != nil {
		note, err := s.openNote(h.Note)
		if err != nil {
			return nil, fmt.Errorf("entry %s: restriction note: %w", ih[:12], err)
		}
		out = append(out, Entry{Target: target, List: list, Reason: Restricted, Source: h.Source, Note: note, Time: h.Time, Index: ih})
	}
	return out, nil
}

// put writes a normalised entry under its index: an erased entry is never
// replaced, an erased address takes no list entry, and a restriction stays
// beneath any other reason. It reports whether it wrote.
func (s *Store) put(b *bbolt.Bucket, e Entry) (bool, error) {
	k := key(s.box.Index(e.Target), e.List)
	var (
		oldR  Reason
		oldSt stored
	)
	if raw := b.Get(k); raw != nil {
		var err error
		if oldR, oldSt, err = decodeValue(raw); err != nil {
			return false, fmt.Errorf("decode entry: %w", err)
		}
	}
	if oldR == Erased {
		return false, nil
	}
	if e.List != "" && !strings.HasPrefix(e.Target, "@") { // an erased address takes no list entry either
		if raw := b.Get(k[:sealed.IndexSize+1]); raw != nil {
			if r, ok := reasonOf(raw); ok && r == Erased {
				return false, nil
			}
		}
	}
	st := stored{Source: e.Source, Note: s.sealNote(e.Note), Time: e.Time}
	if e.Reason != Erased || strings.HasPrefix(e.Target, "@") { // an erased address keeps no target
		st.Target = s.box.SealString(e.Target, ctxTarget)
	}
	r := e.Reason
	switch {
	case e.Reason == Erased:
	case e.Reason == Restricted && oldR != "" && oldR != Restricted:
		r, st = oldR, oldSt // another reason leads; the restriction goes beneath it
		st.Hold = &hold{Source: e.Source, Note: s.sealNote(e.Note), Time: e.Time}
	case e.Reason == Restricted:
	case oldR == Restricted:
		st.Hold = &hold{Source: oldSt.Source, Note: oldSt.Note, Time: oldSt.Time}
	default:
		st.Hold = oldSt.Hold
	}
	v, err := encode(r, st)
	if err != nil {
		return false, err
	}
	return true, b.Put(k, v)
}
