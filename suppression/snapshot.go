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
// Format (version 1), framed so that other stores (the consent store) can
// add sections later without a new version:
//
//	magic    "PWSNAP" 0x00 version(1 byte)
//	frame*   kind(1 byte) uvarint(length) payload(length)
//	  's'    a section starts; payload: its name
//	  'r'    a record of the current section; payload: uvarint(len(key)) key value
//	  'e'    the end; payload: SHA-256 of every byte before it (magic, the
//	         frames, and this frame's kind and length); nothing may follow
//
// Sections of version 1: "suppression.meta" (records "applied_seq" and
// "erased_seq", 8 bytes big-endian; "keycheck", the writer's sealed key
// check), "suppression.entries" (the suppressions bucket as it is) and,
// only when there are any, "suppression.imports" (the records of the
// import runs not done, bucket imports: a joining node resumes them; a done
// run needs no record, the next import of its file is a new run anyway).
// A reader refuses a section it does not know: loading part of a snapshot
// would leave a node short of state it believes it has.

// Snapshot errors; match them with errors.Is.
var (
	ErrNotEmpty        = errors.New("suppression: store is not empty; a snapshot loads only into an empty store")
	ErrSnapshotPending = errors.New("suppression: store keeps changes not yet in the log; no snapshot until they are")
	ErrSnapshotCorrupt = errors.New("suppression: snapshot corrupt or truncated")
)

const (
	snapMagic    = "PWSNAP\x00"
	snapVersion  = 1
	snapMaxFrame = 16 << 20 // no frame is near this; bounds what a corrupt length allocates

	secMeta    = "suppression.meta"
	secEntries = "suppression.entries"
	secImports = "suppression.imports"
)

// WriteSnapshot writes the replicated state (the suppressions bucket and
// the applied and erased sequences) to w, from one read transaction, and
// returns the applied sequence it reflects. It refuses (ErrSnapshotPending)
// while the store keeps pending changes: they are applied here but not yet
// in the log, and a node loading them would hold changes the log may still
// order differently. The read transaction stays open while w is written:
// give it a buffer or a file, not a slow network peer.
func (s *Store) WriteSnapshot(w io.Writer) (uint64, error) {
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

// LoadSnapshot loads a snapshot written by WriteSnapshot into this store,
// which must be empty (no entry, no applied sequence, nothing pending or
// due; else ErrNotEmpty), and returns the sequence it reflects. It loads in
// one transaction that commits only after the end frame's checksum
// matched: a truncated or corrupt snapshot (ErrSnapshotCorrupt) leaves the
// store as empty as it was. A snapshot sealed under another data key is
// refused.
func (s *Store) LoadSnapshot(r io.Reader) (uint64, error) {
	var seq uint64
	err := s.update(func(tx *bbolt.Tx) error {
		if err := emptyTx(tx); err != nil {
			return err
		}
		var err error
		seq, err = s.loadTx(tx, newSnapReader(r))
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("load suppression snapshot: %w", err)
	}
	s.log.Info().Uint64("seq", seq).Msg("suppression snapshot loaded")
	return seq, nil
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

// loadTx reads the snapshot into tx's buckets.
func (s *Store) loadTx(tx *bbolt.Tx, sr *snapReader) (uint64, error) {
	corrupt := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrSnapshotCorrupt, fmt.Sprintf(format, a...))
	}
	var magic [len(snapMagic) + 1]byte
	if _, err := io.ReadFull(sr, magic[:]); err != nil {
		return 0, corrupt("no header: %v", err)
	}
	if string(magic[:len(snapMagic)]) != snapMagic {
		return 0, corrupt("not a postwarden snapshot")
	}
	if v := magic[len(snapMagic)]; v != snapVersion {
		return 0, fmt.Errorf("snapshot version %d: this postwarden reads version %d", v, snapVersion)
	}
	meta, entries := tx.Bucket(bucketMeta), tx.Bucket(bucketEntries)
	var (
		section        string
		seq, erased    uint64
		haveSeq, keyOK bool
		entriesN       int
	)
	for {
		kind, payload, err := sr.frame()
		if err != nil {
			return 0, corrupt("after %d entries: %v", entriesN, err)
		}
		switch kind {
		case 's':
			section = string(payload)
			if section != secMeta && section != secEntries && section != secImports {
				return 0, fmt.Errorf("snapshot section %q: unknown to this postwarden (written by a newer one?)", section)
			}
		case 'r':
			klen, n := binary.Uvarint(payload)
			if n <= 0 || klen > uint64(len(payload)-n) {
				return 0, corrupt("malformed record in %q", section)
			}
			k, v := payload[n:n+int(klen)], payload[n+int(klen):]
			switch section {
			case secMeta:
				switch {
				case bytes.Equal(k, keyAppliedSeq) && len(v) == 8:
					seq, haveSeq = binary.BigEndian.Uint64(v), true
				case bytes.Equal(k, keyErasedSeq) && len(v) == 8:
					erased = binary.BigEndian.Uint64(v)
				case bytes.Equal(k, keyCheck):
					if _, err := s.box.Open(v, ctxKeyCheck); err != nil {
						return 0, errors.New("snapshot written under another data key (every node needs the same data.key)")
					}
					keyOK = true
				default:
					return 0, corrupt("unknown meta record %q", k)
				}
			case secEntries:
				if len(k) <= sealed.IndexSize || k[sealed.IndexSize] != 0 {
					return 0, corrupt("malformed entry key")
				}
				if i := bytes.IndexByte(v, 0); i < 0 || !Reason(v[:i]).Valid() {
					return 0, corrupt("malformed entry value")
				}
				if err := entries.Put(bytes.Clone(k), bytes.Clone(v)); err != nil {
					return 0, err
				}
				entriesN++
			case secImports:
				if err := loadImport(tx, k, v); err != nil {
					return 0, corrupt("%v", err)
				}
			default:
				return 0, corrupt("record outside a section")
			}
		case 'e':
			if err := sr.trailer(payload); err != nil {
				return 0, corrupt("%v", err)
			}
			if !haveSeq || !keyOK {
				return 0, corrupt("no applied sequence or key check")
			}
			if err := putSeq(meta, keyAppliedSeq, seq); err != nil {
				return 0, err
			}
			if erased > 0 {
				if err := putSeq(meta, keyErasedSeq, erased); err != nil {
					return 0, err
				}
			}
			return seq, nil
		default:
			return 0, corrupt("unknown frame kind %q", kind)
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

// loadImport keeps an import run's record read from a snapshot.
func loadImport(tx *bbolt.Tx, k, v []byte) error {
	var r importRun
	if err := json.Unmarshal(v, &r); err != nil || len(k) != sha256.Size || r.Run == "" {
		return errors.New("malformed import record")
	}
	b, err := tx.CreateBucketIfNotExists(bucketImports)
	if err != nil {
		return err
	}
	return b.Put(bytes.Clone(k), bytes.Clone(v))
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
