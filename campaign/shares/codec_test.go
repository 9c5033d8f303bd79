package shares

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestPublishLargeRows: rows carrying big rendered messages are cut into
// as many shards as it takes for each to fit one message of the server's
// max_payload (1 MiB by default), and every row reads back whole. Before,
// the shard count came from the row count alone, and a campaign of HTML
// messages failed to publish ("maximum payload exceeded").
func TestPublishLargeRows(t *testing.T) {
	nodes := startServers(t, 1)
	js := connect(t, nodes[0].srv.ClientURL())
	c := newCoordinator(t, js, testBox(t), Config{Node: "n1"})
	const n = 300
	rows := testRows(n)
	for i := range rows {
		noise := make([]byte, 10<<10) // 20 KB of hex: compresses to about half
		rand.Read(noise)
		rows[i].Fields["body"] = hex.EncodeToString(noise)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pub, err := c.Publish(ctx, "big", "", rows)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if pub.Manifest.Shards <= (n+DefaultShardSize-1)/DefaultShardSize {
		t.Errorf("%d shards: not cut finer than the row count asks", pub.Manifest.Shards)
	}
	ctok, _ := campaignToken("big")
	got := 0
	for s := range pub.Manifest.Shards {
		part, err := c.readShard(ctx, ctok, "big", s)
		if err != nil {
			t.Fatalf("shard %d: %v", s, err)
		}
		for _, r := range part {
			want := rows[indexOf(t, r.Address)].Fields["body"]
			if r.Fields["body"] != want {
				t.Fatalf("shard %d: %s's body changed", s, r.Address)
			}
		}
		got += len(part)
	}
	if got != n {
		t.Errorf("%d rows read back, want %d", got, n)
	}
}

// indexOf is the position of a testRows address.
func indexOf(t *testing.T, addr string) int {
	t.Helper()
	var i int
	if _, err := fmt.Sscanf(addr, "person%05d@", &i); err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return i
}

// TestPublishRowTooBig: a row that cannot fit a message even alone is
// refused before anything is published, naming its position among the rows
// given (invalid rows before it counted), its address masked.
func TestPublishRowTooBig(t *testing.T) {
	nodes := startServers(t, 1)
	js := connect(t, nodes[0].srv.ClientURL())
	c := newCoordinator(t, js, testBox(t), Config{Node: "n1", MaxShardBytes: 64 << 10})
	rows := testRows(10)
	noise := make([]byte, 64<<10)
	rand.Read(noise)
	rows[6].Fields["body"] = string(noise)
	rows[2].Address = "not an address" // left out: row 7 is the 6th kept, named by its own place
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := c.Publish(ctx, "huge", "", rows)
	if err == nil || !strings.Contains(err.Error(), "recipient 7 (") || strings.Contains(err.Error(), rows[6].Address) {
		t.Fatalf("Publish = %v; want recipient 7 refused, address masked", err)
	}
	if _, err := c.kv.Get(ctx, manifestKey(mustToken(t, "huge"))); err == nil {
		t.Error("a manifest was created for a campaign refused")
	}
}

// TestShardCodec: a shard's rows are compressed (a campaign's messages
// share their text), and a shard written before compression, plain JSON,
// still reads.
func TestShardCodec(t *testing.T) {
	rows := testRows(250)
	template := strings.Repeat("Dear reader, this is the note about our product for your company. ", 30)
	for i := range rows {
		rows[i].Fields["body"] = fmt.Sprintf("Hello %05d,\r\n%s", i, template)
	}
	js, err := json.Marshal(rows)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := encodeRows(rows)
	if err != nil {
		t.Fatal(err)
	}
	if len(enc)*10 > len(js) {
		t.Errorf("encoded shard %d bytes, JSON %d: under 10× smaller", len(enc), len(js))
	}
	for name, plain := range map[string][]byte{"compressed": enc, "plain JSON (before compression)": js} {
		got, err := decodeRows(plain)
		if err != nil || len(got) != len(rows) || got[249].Fields["body"] != rows[249].Fields["body"] {
			t.Errorf("%s: %d rows, %v", name, len(got), err)
		}
	}
	if _, err := decodeRows(append(append([]byte{}, zstdMagic...), "garbage"...)); err == nil {
		t.Error("a corrupt frame decoded")
	}
}
