package queue

import (
	"bytes"
	"fmt"

	"go.etcd.io/bbolt"
)

// bktNotes holds small values other packages keep about a campaign (through
// the wiring; the campaign brakes' state is one):
//
//	notes  campaign \x00 name → opaque value
//
// It is created on first use (Open's bucket list belongs to store.go). Notes
// hold no personal data: erasure and pruning leave them.
var bktNotes = []byte("notes")

// maxNoteBytes bounds one note: they are read on hot paths.
const maxNoteBytes = 64 << 10

// PutCampaignNote stores value as campaign's note name (fsynced); a nil
// value deletes it.
func (s *Store) PutCampaignNote(campaign, name string, value []byte) error {
	if err := checkEvent(campaign, name); err != nil {
		return fmt.Errorf("put campaign note: %w", err)
	}
	if len(value) > maxNoteBytes {
		return fmt.Errorf("put campaign note %s of %s: %d bytes, more than %d", name, campaign, len(value), maxNoteBytes)
	}
	err := s.update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bktNotes)
		if err != nil {
			return fmt.Errorf("create bucket %s: %w", bktNotes, err)
		}
		if value == nil {
			return b.Delete(join(campaign, name))
		}
		return b.Put(join(campaign, name), bytes.Clone(value))
	})
	if err != nil {
		return fmt.Errorf("put note %s of campaign %s in %s: %w", name, campaign, s.path, err)
	}
	return nil
}

// CampaignNote returns campaign's note name, or nil when there is none.
func (s *Store) CampaignNote(campaign, name string) ([]byte, error) {
	var v []byte
	err := s.view(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(bktNotes); b != nil {
			v = bytes.Clone(b.Get(join(campaign, name)))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read note %s of campaign %s in %s: %w", name, campaign, s.path, err)
	}
	return v, nil
}
