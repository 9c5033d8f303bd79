package suppression

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"iter"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/sealed"
)

// ---- snapshots: the replicated state as one stream of bytes ----
//
// A snapshot is what a new cluster node loads instead of replaying the
// whole log (issue 13, promise 7): the suppressions bucket and the log
// sequence it reflects, read in one transaction. It holds what the store
// holds (targets and notes sealed under the data key, indexes); the
// replica seals the whole of it again before it leaves the node.
//
// Format (version 2; version 1 is still read), framed:
//
//	magic    "PWSNAP" 0x00 version(1 byte)
//	frame*   kind(1 byte) uvarint(length) payload(length)
//	  's'    a section starts; payload: its name
//	  'r'    a record of the current section; payload: uvarint(len(key)) key value
//	  'e'    the end; payload: SHA-256 of every byte before it (magic, the
//	         frames, and this frame's kind and length); nothing may follow
//
// Sections: "suppression.meta" (records "applied_seq" and "erased_seq", 8
// bytes big-endian; "keycheck", the writer's sealed key check) and
// "suppression.entries" (the suppressions bucket as it is); version 2 adds
// "consent" (SecConsent), the consent store's state at the same stream
// sequence, its records opaque here (subscribers.Store.ExportState: keyed
// indexes, personal fields sealed as at rest). A snapshot without it
// (version 1, or a writer without a consent store) leaves the consent
// state below its sequence to the stream. Either version carries, only when
// there are any, "suppression.imports" (the records of the import runs not
// done, bucket imports: a joining node resumes them; a done run needs no
// record, the next import of its file is a new run anyway). A reader
// refuses a section it does not know: loading part of a snapshot would
// leave a node short of state it believes it has.

// Snapshot errors; match them with errors.Is.
var (
	ErrNotEmpty        = errors.New("suppression: store is not empty; a snapshot loads only into an empty store")
	ErrSnapshotPending = errors.New("suppression: store keeps changes not yet in the log; no snapshot until they are")
	ErrSnapshotCorrupt = errors.New("suppression: snapshot corrupt or truncated")
)

const (
	snapMagic    = "PWSNAP\x00"
	snapVersion  = 2        // written; 1 (no consent section) is still read
	snapMaxFrame = 16 << 20 // no frame is near this; bounds what a corrupt length allocates

	secMeta    = "suppression.meta"
	secEntries = "suppression.entries"
	// SecConsent is the section of the consent store's state (version 2).
	SecConsent = "consent"
	secImports = "suppression.imports"
)

// ConsentExport writes the consent store's state: put for each record
// (subscribers.Store.ExportState, its sequence dropped).
type ConsentExport func(put func(k, v []byte) error) error

// WriteSnapshot writes the replicated state (the suppressions bucket and
// the applied and erased sequences) to w, from one read transaction, and
// returns the applied sequence it reflects; consent, if not nil, writes the
// consent section from within that transaction (the caller keeps the
// stream from being applied meanwhile, so both reflect the same sequence). It refuses (ErrSnapshotPending)
// while the store keeps pending changes: they are applied here but not yet
// in the log, and a node loading them would hold changes the log may still
// order differently. The read transaction stays open while w is written:
// give it a buffer or a file, not a slow network peer.
func (s *Store) WriteSnapshot(w io.Writer, consent ConsentExport) (uint64, error) {
	var seq uint64
	err := s.view(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(bucketPending); b != nil {
			if k, _ := b.Cursor().First(); k != nil {
				return ErrSnapshotPending
			}
		}
		meta := tx.Bucket(bucketMeta)
		seq = appliedSeq(meta)
		sw := newSnapWriter(w)
		sw.section(secMeta)
		sw.record(keyAppliedSeq, binary.BigEndian.AppendUint64(nil, seq))
		if e := getSeq(meta, keyErasedSeq); e > 0 {
			sw.record(keyErasedSeq, binary.BigEndian.AppendUint64(nil, e))
		}
		sw.record(keyCheck, meta.Get(keyCheck))
		sw.section(secEntries)
		if err := tx.Bucket(bucketEntries).ForEach(func(k, v []byte) error {
			sw.record(k, v)
			return sw.err
		}); err != nil {
			return err
		}
		if consent != nil {
			sw.section(SecConsent)
			if err := consent(func(k, v []byte) error { sw.record(k, v); return sw.err }); err != nil {
				return fmt.Errorf("consent section: %w", err)
			}
		}
		if err := snapImports(tx, sw); err != nil {
			return err
		}
		return sw.end()
	})
	if err != nil {
		return 0, fmt.Errorf("write suppression snapshot: %w", err)
	}
	return seq, nil
}

// LoadSnapshot reads a snapshot written by WriteSnapshot (ReadSnapshot)
// and loads it into this store (Load); it returns the sequence it reflects.
// A consent section is read and left: load it with Snapshot.Consent.
func (s *Store) LoadSnapshot(r io.Reader) (uint64, error) {
	sn, err := s.ReadSnapshot(r)
	if err != nil {
		return 0, fmt.Errorf("load suppression snapshot: %w", err)
	}
	return s.Load(sn)
}

// Snapshot is a snapshot read whole and checked (its checksum matched, its
// key check opened under this store's data key, every entry well formed),
// not loaded yet.
type Snapshot struct {
	Version    int
	Seq        uint64 // the stream sequence it reflects
	erased     uint64
	entries    []record
	consent    []record
	imports    []record
	hasConsent bool
}

type record struct{ k, v []byte }

// HasConsent reports whether the snapshot carries the consent store's
// state (SecConsent); without it the consent ops up to Seq are not in it.
func (sn *Snapshot) HasConsent() bool { return sn.hasConsent }

// Consent yields the records of the consent section, for the consent
// store's LoadState.
func (sn *Snapshot) Consent() iter.Seq2[[]byte, []byte] {
	return func(yield func([]byte, []byte) bool) {
		for _, r := range sn.consent {
			if !yield(r.k, r.v) {
				return
			}
		}
	}
}

// ReadSnapshot reads and checks a whole snapshot written by WriteSnapshot
// (version 1 or 2). A truncated or corrupt one is ErrSnapshotCorrupt; one
// sealed under another data key is refused.
func (s *Store) ReadSnapshot(r io.Reader) (*Snapshot, error) {
	sn, err := s.readSnapshot(newSnapReader(r))
	if err != nil {
		return nil, fmt.Errorf("read suppression snapshot: %w", err)
	}
	return sn, nil
}

// Load loads a snapshot read by ReadSnapshot into this store, which must be
// empty (no entry, no applied sequence, nothing pending or due; else
// ErrNotEmpty), in one transaction, and returns the sequence it reflects.
func (s *Store) Load(sn *Snapshot) (uint64, error) {
	err := s.update(func(tx *bbolt.Tx) error {
		if err := emptyTx(tx); err != nil {
			return err
		}
		entries := tx.Bucket(bucketEntries)
		for _, r := range sn.entries {
			if err := entries.Put(r.k, r.v); err != nil {
				return err
			}
		}
		if len(sn.imports) > 0 {
			imports, err := tx.CreateBucketIfNotExists(bucketImports)
			if err != nil {
				return err
			}
			for _, r := range sn.imports {
				if err := imports.Put(r.k, r.v); err != nil {
					return err
				}
			}
		}
		meta := tx.Bucket(bucketMeta)
		if err := putSeq(meta, keyAppliedSeq, sn.Seq); err != nil {
			return err
		}
		if sn.erased > 0 {
			return putSeq(meta, keyErasedSeq, sn.erased)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("load suppression snapshot: %w", err)
	}
	s.log.Info().Uint64("seq", sn.Seq).Int("entries", len(sn.entries)).Msg("suppression snapshot loaded")
	return sn.Seq, nil
}

// Empty reports whether the store holds nothing of a replica: no entry, no
// applied sequence, no pending change and no due work. A node whose store
// is empty may load a snapshot.
func (s *Store) Empty() (bool, error) {
	var err error
	verr := s.view(func(tx *bbolt.Tx) error { err = emptyTx(tx); return nil })
	if verr != nil {
		return false, fmt.Errorf("check suppression store empty: %w", verr)
	}
	return err == nil, nil
}

// emptyTx returns ErrNotEmpty unless tx's store is empty.
func emptyTx(tx *bbolt.Tx) error {
	if appliedSeq(tx.Bucket(bucketMeta)) != 0 {
		return fmt.Errorf("%w (it applied the log up to %d)", ErrNotEmpty, appliedSeq(tx.Bucket(bucketMeta)))
	}
	for _, name := range [][]byte{bucketEntries, bucketPending, bucketDue} {
		if b := tx.Bucket(name); b != nil {
			if k, _ := b.Cursor().First(); k != nil {
				return fmt.Errorf("%w (bucket %s holds records)", ErrNotEmpty, name)
			}
		}
	}
	return nil
}

// readSnapshot reads the whole snapshot, checking it as it goes.
func (s *Store) readSnapshot(sr *snapReader) (*Snapshot, error) {
	corrupt := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrSnapshotCorrupt, fmt.Sprintf(format, a...))
	}
	var magic [len(snapMagic) + 1]byte
	if _, err := io.ReadFull(sr, magic[:]); err != nil {
		return nil, corrupt("no header: %v", err)
	}
	if string(magic[:len(snapMagic)]) != snapMagic {
		return nil, corrupt("not a postwarden snapshot")
	}
	sn := &Snapshot{Version: int(magic[len(snapMagic)])}
	if sn.Version != 1 && sn.Version != snapVersion {
		return nil, fmt.Errorf("snapshot version %d: this postwarden reads versions 1 and %d", sn.Version, snapVersion)
	}
	var (
		section        string
		haveSeq, keyOK bool
	)
	for {
		kind, payload, err := sr.frame()
		if err != nil {
			return nil, corrupt("after %d entries: %v", len(sn.entries), err)
		}
		switch kind {
		case 's':
			section = string(payload)
			switch {
			case section == secMeta || section == secEntries || section == secImports:
			case section == SecConsent && sn.Version >= 2 && !sn.hasConsent:
				sn.hasConsent = true
			default:
				return nil, fmt.Errorf("snapshot section %q (version %d): unknown to this postwarden (written by a newer one?)", section, sn.Version)
			}
		case 'r':
			klen, n := binary.Uvarint(payload)
			if n <= 0 || klen > uint64(len(payload)-n) {
				return nil, corrupt("malformed record in %q", section)
			}
			k, v := payload[n:n+int(klen)], payload[n+int(klen):]
			switch section {
			case secMeta:
				switch {
				case bytes.Equal(k, keyAppliedSeq) && len(v) == 8:
					sn.Seq, haveSeq = binary.BigEndian.Uint64(v), true
				case bytes.Equal(k, keyErasedSeq) && len(v) == 8:
					sn.erased = binary.BigEndian.Uint64(v)
				case bytes.Equal(k, keyCheck):
					if _, err := s.box.Open(v, ctxKeyCheck); err != nil {
						return nil, errors.New("snapshot written under another data key (every node needs the same data.key)")
					}
					keyOK = true
				default:
					return nil, corrupt("unknown meta record %q", k)
				}
			case secEntries:
				if len(k) <= sealed.IndexSize || k[sealed.IndexSize] != 0 {
					return nil, corrupt("malformed entry key")
				}
				if i := bytes.IndexByte(v, 0); i < 0 || !Reason(v[:i]).Valid() {
					return nil, corrupt("malformed entry value")
				}
				sn.entries = append(sn.entries, record{k, v})
			case SecConsent: // checked by the consent store as it loads
				sn.consent = append(sn.consent, record{k, v})
			case secImports:
				if err := checkImportRecord(k, v); err != nil {
					return nil, corrupt("%v", err)
				}
				sn.imports = append(sn.imports, record{k, v})
			default:
				return nil, corrupt("record outside a section")
			}
		case 'e':
			if err := sr.trailer(payload); err != nil {
				return nil, corrupt("%v", err)
			}
			if !haveSeq || !keyOK {
				return nil, corrupt("no applied sequence or key check")
			}
			return sn, nil
		default:
			return nil, corrupt("unknown frame kind %q", kind)
		}
	}
}

// snapImports writes the section of the import runs not done, if any.
func snapImports(tx *bbolt.Tx, sw *snapWriter) error {
	b := tx.Bucket(bucketImports)
	if b == nil {
		return nil
	}
	started := false
	return b.ForEach(func(k, v []byte) error {
		var r importRun
		if err := json.Unmarshal(v, &r); err != nil || r.Done {
			return nil // a malformed record resumes nothing here either
		}
		if !started {
			sw.section(secImports)
			started = true
		}
		sw.record(k, v)
		return sw.err
	})
}

// checkImportRecord checks an import run's record read from a snapshot.
func checkImportRecord(k, v []byte) error {
	var r importRun
	if err := json.Unmarshal(v, &r); err != nil || len(k) != sha256.Size || r.Run == "" {
		return errors.New("malformed import record")
	}
	return nil
}

// snapWriter writes frames and keeps the running checksum; the first
// error sticks.
type snapWriter struct {
	w   *bufio.Writer
	h   hash.Hash
	err error
	buf []byte
}

func newSnapWriter(w io.Writer) *snapWriter {
	sw := &snapWriter{w: bufio.NewWriterSize(w, 64<<10), h: sha256.New()}
	sw.write(append([]byte(snapMagic), snapVersion))
	return sw
}

func (sw *snapWriter) write(p []byte) {
	if sw.err != nil {
		return
	}
	sw.h.Write(p)
	_, sw.err = sw.w.Write(p)
}

// head writes a frame's kind and length.
func (sw *snapWriter) head(kind byte, n int) {
	sw.buf = binary.AppendUvarint(append(sw.buf[:0], kind), uint64(n))
	sw.write(sw.buf)
}

func (sw *snapWriter) section(name string) {
	sw.head('s', len(name))
	sw.write([]byte(name))
}

func (sw *snapWriter) record(k, v []byte) {
	var kl [binary.MaxVarintLen64]byte
	n := binary.PutUvarint(kl[:], uint64(len(k)))
	sw.head('r', n+len(k)+len(v))
	sw.write(kl[:n])
	sw.write(k)
	sw.write(v)
}

// end writes the end frame (the checksum) and flushes.
func (sw *snapWriter) end() error {
	sw.head('e', sha256.Size)
	if sw.err == nil {
		_, sw.err = sw.w.Write(sw.h.Sum(nil))
	}
	if sw.err == nil {
		sw.err = sw.w.Flush()
	}
	return sw.err
}

// snapReader reads frames, hashing what it reads up to the end frame's
// payload.
type snapReader struct {
	r   *bufio.Reader
	h   hash.Hash
	sum []byte // the checksum of everything before the end frame's payload
}

func newSnapReader(r io.Reader) *snapReader {
	return &snapReader{r: bufio.NewReaderSize(r, 64<<10), h: sha256.New()}
}

func (sr *snapReader) Read(p []byte) (int, error) {
	n, err := sr.r.Read(p)
	sr.h.Write(p[:n])
	return n, err
}

func (sr *snapReader) ReadByte() (byte, error) {
	b, err := sr.r.ReadByte()
	if err == nil {
		sr.h.Write([]byte{b})
	}
	return b, err
}

// frame reads one frame; a missing end frame is io.ErrUnexpectedEOF.
func (sr *snapReader) frame() (byte, []byte, error) {
	kind, err := sr.ReadByte()
	if err != nil {
		return 0, nil, unexpected(err)
	}
	n, err := binary.ReadUvarint(sr)
	if err != nil {
		return 0, nil, unexpected(err)
	}
	if n > snapMaxFrame {
		return 0, nil, fmt.Errorf("frame of %d bytes", n)
	}
	if kind == 'e' {
		sr.sum = sr.h.Sum(nil)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(sr, p); err != nil {
		return 0, nil, unexpected(err)
	}
	return kind, p, nil
}

// trailer checks the end frame's checksum and that nothing follows it.
func (sr *snapReader) trailer(sum []byte) error {
	if !bytes.Equal(sum, sr.sum) {
		return errors.New("checksum mismatch")
	}
	if _, err := sr.r.ReadByte(); err != io.EOF {
		return errors.New("bytes after the end frame")
	}
	return nil
}

// unexpected turns a clean EOF inside a snapshot into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
