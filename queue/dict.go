package queue

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/address"
)

// Body storage. A body is stored as box.Seal(format || payload, "queue:zbody:"+id):
//
//	format 0  payload = the message bytes (compression would not save an eighth)
//	format 1  payload = one zstd frame, no dictionary
//	format 2  payload = dictionary id (4 bytes, big endian) || one zstd frame made with it
//
// Bodies stored before formats existed are box.Seal(bytes, "queue:body:"+id)
// and still open. GCM authenticates the context, so no value is ever read in
// the other layout, and an older postwarden fails on a new body instead of
// sending its compressed bytes.
//
// A dictionary is one message of a campaign rendered with placeholder data
// (PutDictionary). A campaign message is mostly its template, so with that
// sample as a raw-content zstd dictionary a 22 KB body keeps only what differs
// (names, token, boundary, Message-ID): a few hundred bytes. Bucket dict holds
// id (4 bytes, big endian) → tag (16 random bytes) || box.Seal(sample,
// "queue:dict:"+id). Dictionaries are never deleted (one per campaign, no
// personal data), so a body never outlives its dictionary.
//
// Compression is zstd SpeedFastest with the frame checksum: measured on a 22 KB
// campaign body, compress+decompress with the dictionary takes about 20 µs for
// 324 bytes; SpeedDefault about 35 µs for 309 bytes. The checksum (4 bytes,
// ~3 µs) turns a codec fault into an error instead of a garbled signed message.
const (
	bodyRaw      byte = 0
	bodyZstd     byte = 1
	bodyZstdDict byte = 2
)

// MaxDictionary is the largest sample PutDictionary accepts.
const MaxDictionary = 1 << 20

const (
	dictTagSize    = 16 // random tag stored before each sealed dictionary; keys the codec cache
	maxDictProbes  = 64 // ids tried after the content-derived one is taken by another sample
	maxCodecs      = 8  // dictionary codecs kept in memory, least recently used out
	maxCodecSlots  = 4  // concurrent EncodeAll/DecodeAll per codec: each encoder slot holds ~1 MB
	plainWindow    = 1 << 20
	maxArenaReused = 8 << 20 // larger packing buffers are left to the collector
)

// errUnknownDict is wrapped by errors about a dictionary id the store does not hold.
var errUnknownDict = errors.New("unknown dictionary")

func dictContext(id uint32) string       { return fmt.Sprintf("queue:dict:%08x", id) }
func legacyBodyContext(id string) string { return "queue:body:" + id }

// dictKey returns the bucket key of dictionary id.
func dictKey(id uint32) []byte { return binary.BigEndian.AppendUint32(nil, id) }

// PutDictionary stores sample as a compression dictionary and returns its id,
// for NewMessage.Dict; storing the same sample again returns the same id.
//
// Privacy contract: the caller guarantees that sample holds no personal data
// (render it for a placeholder recipient). Dictionaries are sealed like bodies
// but are neither scrubbed by EraseRecipient nor dropped by PruneFinished.
//
// The id is the first 4 bytes of SHA-256(sample), or the next free one if
// another sample holds it; never 0.
func (s *Store) PutDictionary(sample []byte) (uint32, error) {
	if len(sample) == 0 || len(sample) > MaxDictionary {
		return 0, fmt.Errorf("put dictionary: sample is %d bytes, want 1 to %d", len(sample), MaxDictionary)
	}
	sum := sha256.Sum256(sample)
	first := binary.BigEndian.Uint32(sum[:4])
	var id uint32
	err := s.update(func(tx *bbolt.Tx) error {
		b := s.buckets(tx)
		for i := range uint32(maxDictProbes) {
			if id = first + i; id == 0 {
				continue // 0 means no dictionary, in NewMessage and in zstd frames
			}
			v := b.dict.Get(dictKey(id))
			if v == nil {
				val := make([]byte, dictTagSize, dictTagSize+len(sample)+64)
				rand.Read(val) // never fails (crypto/rand, Go ≥ 1.24)
				return b.dict.Put(dictKey(id), append(val, b.box.Seal(sample, dictContext(id))...))
			}
			old, err := b.openDict(id, v)
			if err != nil {
				return err
			}
			if bytes.Equal(old, sample) {
				return nil
			}
		}
		return fmt.Errorf("no free id among %d after %08x", maxDictProbes, first)
	})
	if err != nil {
		return 0, fmt.Errorf("put dictionary in %s: %w", s.path, err)
	}
	return id, nil
}

// openDict opens the stored value v of dictionary id.
func (b bkts) openDict(id uint32, v []byte) ([]byte, error) {
	if len(v) < dictTagSize {
		return nil, fmt.Errorf("dictionary %08x: truncated", id)
	}
	sample, err := b.box.Open(v[dictTagSize:], dictContext(id))
	if err != nil {
		return nil, fmt.Errorf("dictionary %08x: %w", id, err)
	}
	return sample, nil
}

// codec compresses and expands bodies with one dictionary (id 0: none). Its
// encoder and decoder take concurrent EncodeAll and DecodeAll calls.
type codec struct {
	id  uint32
	enc *zstd.Encoder
	dec *zstd.Decoder
}

// newCodec builds the codec of dictionary id with content sample.
func newCodec(id uint32, sample []byte) (*codec, error) {
	n := min(runtime.GOMAXPROCS(0), maxCodecSlots)
	window := plainWindow
	if id != 0 {
		// Matches reach back over the body and the whole sample.
		window = max(64<<10, 1<<bits.Len(uint(2*len(sample)-1)))
	}
	eo := []zstd.EOption{zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(n),
		zstd.WithEncoderCRC(true), zstd.WithWindowSize(window)}
	do := []zstd.DOption{zstd.WithDecoderConcurrency(n)}
	if id != 0 {
		eo = append(eo, zstd.WithEncoderDictRaw(id, sample))
		do = append(do, zstd.WithDecoderDictRaw(id, sample))
	}
	enc, err := zstd.NewWriter(nil, eo...)
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	dec, err := zstd.NewReader(nil, do...) // no stream: starts no goroutine, needs no Close
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &codec{id: id, enc: enc, dec: dec}, nil
}

// plainCodec is the codec of bodies without a dictionary.
var plainCodec = sync.OnceValues(func() (*codec, error) { return newCodec(0, nil) })

// pack appends body's stored form (format byte, then payload) to dst.
func (c *codec) pack(dst, body []byte) []byte {
	start := len(dst)
	if c.id == 0 {
		dst = append(dst, bodyZstd)
	} else {
		dst = binary.BigEndian.AppendUint32(append(dst, bodyZstdDict), c.id)
	}
	dst = c.enc.EncodeAll(body, dst)
	if len(dst)-start > len(body)-len(body)/8 {
		dst = append(append(dst[:start], bodyRaw), body...)
	}
	return dst
}

// expand decompresses one frame into dst's memory when it has room.
func (c *codec) expand(frame, dst []byte) ([]byte, error) {
	body, err := c.dec.DecodeAll(frame, dst[:0])
	if err == nil && len(body) == 0 {
		err = errors.New("empty")
	}
	if err != nil {
		return nil, fmt.Errorf("decompress body: %w", err)
	}
	return body, nil
}

// codecKey names a stored dictionary across stores: ids repeat between
// stores, the random tag stored with each dictionary does not.
type codecKey struct {
	tag [dictTagSize]byte
	id  uint32
}

// codecs caches the codecs of recently used dictionaries, process-wide:
// building one (tables of a few hundred KB per slot) costs far more than a body.
var codecs = struct {
	sync.Mutex
	m    map[codecKey]*cachedCodec
	tick uint64
}{m: map[codecKey]*cachedCodec{}}

type cachedCodec struct {
	c    *codec
	used uint64
}

// dictCodec returns the codec of dictionary id, building it on first use;
// the error wraps errUnknownDict when the store holds no such dictionary.
func (b bkts) dictCodec(id uint32) (*codec, error) {
	v := b.dict.Get(dictKey(id))
	if v == nil || id == 0 {
		return nil, fmt.Errorf("%w %08x", errUnknownDict, id)
	}
	if len(v) < dictTagSize {
		return nil, fmt.Errorf("dictionary %08x: truncated", id)
	}
	k := codecKey{tag: [dictTagSize]byte(v[:dictTagSize]), id: id}
	codecs.Lock()
	codecs.tick++
	if cc := codecs.m[k]; cc != nil {
		cc.used = codecs.tick
		codecs.Unlock()
		return cc.c, nil
	}
	codecs.Unlock()

	sample, err := b.openDict(id, v)
	if err != nil {
		return nil, err
	}
	c, err := newCodec(id, sample)
	if err != nil {
		return nil, fmt.Errorf("dictionary %08x: %w", id, err)
	}
	codecs.Lock()
	defer codecs.Unlock()
	codecs.tick++
	if cc := codecs.m[k]; cc != nil { // built meanwhile by another goroutine
		cc.used = codecs.tick
		return cc.c, nil
	}
	if len(codecs.m) >= maxCodecs {
		var oldest codecKey
		least := codecs.tick
		for k, cc := range codecs.m {
			if cc.used < least {
				oldest, least = k, cc.used
			}
		}
		delete(codecs.m, oldest) // callers still holding it finish with it
	}
	codecs.m[k] = &cachedCodec{c: c, used: codecs.tick}
	return c, nil
}

// openBody opens and expands message id's stored body v.
func (b bkts) openBody(id string, v, dst []byte) ([]byte, error) {
	plain, err := b.box.Open(v, bodyContext(id))
	if err != nil {
		if old, oerr := b.box.Open(v, legacyBodyContext(id)); oerr == nil {
			return old, nil // stored before formats: the message bytes
		}
		return nil, err
	}
	if len(plain) == 0 {
		return nil, errors.New("stored body has no format byte")
	}
	switch payload := plain[1:]; plain[0] {
	case bodyRaw:
		return payload, nil
	case bodyZstd:
		c, err := plainCodec()
		if err != nil {
			return nil, err
		}
		return c.expand(payload, dst)
	case bodyZstdDict:
		if len(payload) < 4 {
			return nil, errors.New("stored body lacks its dictionary id")
		}
		c, err := b.dictCodec(binary.BigEndian.Uint32(payload))
		if err != nil {
			return nil, err
		}
		return c.expand(payload[4:], dst)
	default:
		return nil, fmt.Errorf("unknown body format %d", plain[0])
	}
}

// arenas recycles the buffers Enqueue packs bodies into.
var arenas = sync.Pool{New: func() any { return new([]byte) }}

// packBodies compresses the bodies of msgs, each with its dictionary, before
// Enqueue's transaction; packed[i] is msgs[i]'s stored form for putBody. Call
// release once they are sealed. An unknown dictionary fails naming the message.
func (s *Store) packBodies(msgs []NewMessage) (packed [][]byte, release func(), err error) {
	byID := map[uint32]*codec{}
	for _, m := range msgs {
		if m.Dict != 0 {
			byID[m.Dict] = nil
		}
	}
	if len(byID) > 0 {
		err := s.view(func(tx *bbolt.Tx) error {
			b := s.buckets(tx)
			for i, m := range msgs {
				if m.Dict == 0 || byID[m.Dict] != nil {
					continue
				}
				c, err := b.dictCodec(m.Dict)
				if err != nil {
					return fmt.Errorf("enqueue message %d (%s): %w", i, address.Mask(m.To), err)
				}
				byID[m.Dict] = c
			}
			return nil
		})
		if err != nil {
			return nil, nil, err
		}
	}
	plain, err := plainCodec()
	if err != nil {
		return nil, nil, err
	}
	arena := arenas.Get().(*[]byte)
	buf := (*arena)[:0]
	ends := make([]int, len(msgs))
	for i, m := range msgs {
		c := plain
		if m.Dict != 0 {
			c = byID[m.Dict]
		}
		buf = c.pack(buf, m.Body)
		ends[i] = len(buf)
	}
	packed = make([][]byte, len(msgs))
	start := 0
	for i, end := range ends {
		packed[i] = buf[start:end:end]
		start = end
	}
	return packed, func() {
		if cap(buf) <= maxArenaReused {
			*arena = buf[:0]
			arenas.Put(arena)
		}
	}, nil
}
