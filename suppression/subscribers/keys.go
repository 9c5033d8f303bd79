package subscribers

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/sealed"
)

// ---- keys ----

// addrKey parses an address and returns its matching key (what is indexed)
// and its canonical form (what is sealed: the local part as given).
func addrKey(addr string) (key, canonical string, err error) {
	a, err := address.Parse(addr)
	if err != nil {
		return "", "", err
	}
	return a.Key(), a.String(), nil
}

// checkList rejects list names that would break keys or logs ("" only where allowed).
func checkList(list string, allowEmpty bool) error {
	if list == "" && !allowEmpty {
		return errors.New("no list given")
	}
	if len(list) > maxField {
		return fmt.Errorf("list %q: longer than %d bytes", list, maxField)
	}
	for _, r := range list {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("list %q: contains a control character", list)
		}
	}
	return nil
}

// groupPrefix returns idx || list || 0x00: the prefix of a (address, list) history.
func groupPrefix(idx []byte, list string) []byte {
	p := make([]byte, 0, len(idx)+len(list)+1+8)
	p = append(p, idx...)
	p = append(p, list...)
	return append(p, 0)
}

// memberKey returns list || 0x00 || idx.
func memberKey(list string, idx []byte) []byte {
	k := make([]byte, 0, len(list)+1+len(idx))
	k = append(k, list...)
	k = append(k, 0)
	return append(k, idx...)
}

// splitEventKey returns the list of an event key (after the 32-byte idx).
func splitEventKey(k []byte) (list string, ok bool) {
	if len(k) < sealed.IndexSize+1+8 || k[len(k)-9] != 0 {
		return "", false
	}
	return string(k[sealed.IndexSize : len(k)-9]), true
}

// lastEvent returns the latest event value of a history (valid only in the tx), or nil.
func lastEvent(b *bbolt.Bucket, prefix []byte) []byte {
	c := b.Cursor()
	var ub [sealed.IndexSize + maxField + 1]byte
	upper := append(append(ub[:0], prefix[:len(prefix)-1]...), 1) // just past every prefix||seq
	k, v := c.Seek(upper)
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	if k == nil || !bytes.HasPrefix(k, prefix) || len(k) != len(prefix)+8 || len(v) == 0 {
		return nil
	}
	return v
}

// appendEvent writes an event under the next sequence number.
func appendEvent(b *bbolt.Bucket, prefix []byte, code byte, e storedEvent) error {
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	k := binary.BigEndian.AppendUint64(bytes.Clone(prefix), seq)
	body, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return b.Put(k, append([]byte{code}, body...))
}
