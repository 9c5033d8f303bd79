package shares

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// A shard's plain text (what is sealed) is its rows as JSON, compressed
// with zstd: the rows carry each recipient's rendered message, and the
// messages of one campaign share almost all their text, so a shard shrinks
// several times over before it is replicated to every JetStream replica and
// read by the node that takes it. A plain text that does not start with
// zstd's frame magic is JSON as written before (RFC 8878 §3.1.1: a frame
// starts with 0xFD2FB528, little endian; JSON starts with '[').
var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// maxShardPlain bounds a shard's decompressed rows: a frame claiming more
// is refused rather than allocated.
const maxShardPlain = 1 << 30

var (
	shardEncoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	shardDecoder, _ = zstd.NewReader(nil, zstd.WithDecoderMaxMemory(maxShardPlain), zstd.WithDecoderConcurrency(1))
)

// encodeRows is a shard's plain text: its rows as compressed JSON.
func encodeRows(rows []Row) ([]byte, error) {
	if rows == nil {
		rows = []Row{}
	}
	js, err := json.Marshal(rows)
	if err != nil {
		return nil, err
	}
	return shardEncoder.EncodeAll(js, make([]byte, 0, len(js)/4)), nil
}

// decodeRows reads a shard's plain text, compressed or (written before
// compression) not.
func decodeRows(plain []byte) ([]Row, error) {
	if bytes.HasPrefix(plain, zstdMagic) {
		js, err := shardDecoder.DecodeAll(plain, nil)
		if err != nil {
			return nil, fmt.Errorf("decompress: %w", err)
		}
		plain = js
	}
	var rows []Row
	if err := json.Unmarshal(plain, &rows); err != nil {
		return nil, err
	}
	return rows, nil
}
