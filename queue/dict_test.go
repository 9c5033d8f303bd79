package queue

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"go.etcd.io/bbolt"

	"github.com/postwarden/postwarden/suppression/sealed"
)

// campaignText is the fixed prose of the test campaign: deterministic
// pseudo-English, not self-repetitive, so compressing it alone gains what
// real prose gains and a dictionary is what makes the difference.
var campaignText = sync.OnceValue(func() []string {
	words := strings.Fields(`the a of to and in for on with your our we you this that it is are be
		invoice order purchase approval team quarter release export accounting finance report supplier
		payment matching workflow rules signing contract delivery customer account manager review
		update feature faster simpler across every month year data secure cloud platform integration
		new improved automatic manual steps fewer more less save hours week errors audit trail compliance
		policy budget forecast spend category vendor catalogue request approve reject route escalate
		notify mobile desktop dashboard insight trend cost centre project department region currency
		tax rate VAT reconciliation ledger journal entry period close balance sheet statement cash flow`)
	r := rand.New(rand.NewPCG(1, 2))
	paras := make([]string, 20)
	for i := range paras {
		var b strings.Builder
		for s := 0; s < 4+r.IntN(3); s++ {
			n := 8 + r.IntN(10)
			for w := range n {
				word := words[r.IntN(len(words))]
				if w == 0 {
					word = strings.ToUpper(word[:1]) + word[1:]
				}
				b.WriteString(word)
				if w < n-1 {
					b.WriteByte(' ')
				}
			}
			b.WriteString(". ")
		}
		paras[i] = strings.TrimSpace(b.String())
	}
	return paras
})

// fakeRecipient is what differs between two messages of one campaign.
type fakeRecipient struct {
	first, last, company, addr, token, boundary, msgID, date string
}

// recipientN returns the per-message parts of message i (a zero-sized
// placeholder set for i < 0, as a campaign's dictionary sample would use).
func recipientN(i int) fakeRecipient {
	if i < 0 {
		return fakeRecipient{"Firstname", "Lastname", "Company Name", "recipient@example.invalid",
			strings.Repeat("A", 64), strings.Repeat("0", 60), strings.Repeat("0", 24),
			"Mon, 24 Nov 2026 05:00:00 +0000"}
	}
	r := rand.New(rand.NewPCG(uint64(i), 99))
	raw := make([]byte, 48)
	for j := 0; j < len(raw); j += 8 {
		binary.LittleEndian.PutUint64(raw[j:], r.Uint64())
	}
	firsts := []string{"Ana", "Bob", "Chiara", "Dmitri", "Elif", "François", "Greta", "Hiroshi", "Ines", "Jonas"}
	lasts := []string{"Lopez", "Stone", "Rossi", "Ivanov", "Yilmaz", "Dubois", "Berg", "Tanaka", "Silva", "Weber"}
	first, last := firsts[r.IntN(len(firsts))], lasts[r.IntN(len(lasts))]
	return fakeRecipient{
		first: first, last: last,
		company:  fmt.Sprintf("%s Holding %d GmbH", last, i%997),
		addr:     fmt.Sprintf("%s.%s%d@d%04d.example.com", strings.ToLower(first[:1]), strings.ToLower(last), i, i%50),
		token:    base64.RawURLEncoding.EncodeToString(raw),
		boundary: fmt.Sprintf("%016x%016x%016x%012x", r.Uint64(), r.Uint64(), r.Uint64(), r.Uint64()>>16),
		msgID:    fmt.Sprintf("%024x", r.Uint64()),
		date:     fmt.Sprintf("Mon, 24 Nov 2026 05:%02d:%02d +0000", i/60%60, i%60),
	}
}

// campaignBody renders a ~22 KB multipart/alternative message for rcpt the
// way a campaign does: fixed template text with the name, company,
// address, unsubscribe token, boundary, Message-ID and date set in.
func campaignBody(rc fakeRecipient) []byte {
	unsub := "https://mail.example.com/u/" + rc.token
	var b strings.Builder
	b.Grow(24 << 10)
	fmt.Fprintf(&b, "From: \"Example News\" <news@mail.example.com>\r\nTo: \"%s %s\" <%s>\r\n", rc.first, rc.last, rc.addr)
	fmt.Fprintf(&b, "Subject: %s, a note about %s\r\nDate: %s\r\nMessage-Id: <%s.spring@mail.example.com>\r\n", rc.first, rc.company, rc.date, rc.msgID)
	fmt.Fprintf(&b, "MIME-Version: 1.0\r\nList-Id: \"Example News\" <news.mail.example.com>\r\nList-Unsubscribe: <%s>\r\n", unsub)
	b.WriteString("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
	fmt.Fprintf(&b, "Content-Type: multipart/alternative; boundary=%s\r\n\r\n", rc.boundary)
	paras := campaignText()
	fmt.Fprintf(&b, "--%s\r\nContent-Transfer-Encoding: quoted-printable\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n", rc.boundary)
	fmt.Fprintf(&b, "Hello %s,\r\n\r\n", rc.first)
	for i, p := range paras {
		if i == 10 {
			fmt.Fprintf(&b, "For %s this means fewer manual steps.\r\n\r\n", rc.company)
		}
		writeQP(&b, p)
		b.WriteString("\r\n\r\n")
	}
	fmt.Fprintf(&b, "Unsubscribe: %s\r\nPrivacy: https://example.com/privacy\r\n\r\n", unsub)
	fmt.Fprintf(&b, "--%s\r\nContent-Transfer-Encoding: quoted-printable\r\nContent-Type: text/html; charset=utf-8\r\n\r\n", rc.boundary)
	b.WriteString("<!DOCTYPE html>\r\n<html lang=3D\"en\"><head><meta charset=3D\"utf-8\"></head>\r\n")
	b.WriteString("<body style=3D\"margin:0;padding:0;background-color:#f4f4f5;\">\r\n")
	fmt.Fprintf(&b, "<p style=3D\"margin:0 0 16px;\">Hello %s,</p>\r\n", rc.first)
	for i, p := range paras {
		if i == 10 {
			fmt.Fprintf(&b, "<p><b>For %s this means fewer manual steps.</b></p>\r\n", rc.company)
		}
		b.WriteString("<p style=3D\"margin:0 0 16px;font-family:Arial,Helvetica,sans-serif;font-size:16px;line-height:1.5;color:#1f2937;\">")
		writeQP(&b, p)
		b.WriteString("</p>\r\n")
	}
	fmt.Fprintf(&b, "<p><a href=3D\"%s\">Unsubscribe</a> | <a href=3D\"https://example.com/privacy\">Privacy</a></p>\r\n</body></html>\r\n", unsub)
	fmt.Fprintf(&b, "--%s--\r\n", rc.boundary)
	return []byte(b.String())
}

// writeQP writes p in quoted-printable soft-wrapped lines of at most 76 characters.
func writeQP(b *strings.Builder, p string) {
	for len(p) > 75 {
		b.WriteString(p[:75])
		b.WriteString("=\r\n")
		p = p[75:]
	}
	b.WriteString(p)
}

// sampleBody is the campaign's dictionary sample: a placeholder recipient.
func sampleBody() []byte { return campaignBody(recipientN(-1)) }

// putDict stores sample and fails the test on error.
func putDict(t testing.TB, s *Store, sample []byte) uint32 {
	t.Helper()
	id, err := s.PutDictionary(sample)
	if err != nil || id == 0 {
		t.Fatalf("PutDictionary = %08x, %v", id, err)
	}
	return id
}

// mustBody reads message id's body and fails the test unless it is want.
func mustBody(t testing.TB, s *Store, id string, want []byte) {
	t.Helper()
	got, err := s.Body(id)
	if err != nil {
		t.Fatalf("Body(%s): %v", id, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Body(%s) = %d bytes, want the %d enqueued (first difference at %d)", id, len(got), len(want), firstDiff(got, want))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// usedSize is how much of the queue file its pages fill (bbolt grows the file
// itself in steps: doubling up to 1 GB).
func usedSize(t testing.TB, s *Store) int64 {
	t.Helper()
	var n int64
	if err := s.view(func(tx *bbolt.Tx) error { n = tx.Size(); return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// forgetCodecs empties the process-wide codec cache, as in a fresh process.
func forgetCodecs() {
	codecs.Lock()
	clear(codecs.m)
	codecs.Unlock()
}

// storedFormat returns the format byte of message id's stored body.
func storedFormat(t *testing.T, s *Store, id string) byte {
	t.Helper()
	_, v := rawValues(t, s, id)
	plain, err := testBox.Open(v, bodyContext(id))
	if err != nil || len(plain) == 0 {
		t.Fatalf("open stored body of %s: %v", id, err)
	}
	return plain[0]
}

func TestBodyRoundTrip(t *testing.T) {
	s := openTest(t, Config{})
	dict := putDict(t, s, sampleBody())
	r := rand.New(rand.NewPCG(3, 4))
	random := make([]byte, 50_000)
	for i := range random {
		random[i] = byte(r.Uint32())
	}
	big := bytes.Repeat(campaignBody(recipientN(7)), 20) // ~450 KB: several zstd blocks
	type tc struct {
		name string
		body []byte
		dict uint32
		want byte // stored format
	}
	var cases []tc
	for i := range 100 {
		cases = append(cases, tc{fmt.Sprint("campaign-dict-", i), campaignBody(recipientN(i)), dict, bodyZstdDict})
	}
	for i := range 20 {
		cases = append(cases, tc{fmt.Sprint("campaign-plain-", i), campaignBody(recipientN(i)), 0, bodyZstd})
	}
	cases = append(cases,
		tc{"one byte", []byte("x"), 0, bodyRaw},
		tc{"one byte with dict", []byte("x"), dict, bodyRaw},
		tc{"short", []byte("Subject: hi\r\n\r\nhello\r\n"), 0, bodyRaw},
		tc{"NUL and high bytes", []byte("\x00\x01\xff\xfe\x00body\x00"), dict, bodyRaw},
		tc{"incompressible", random, 0, bodyRaw},
		tc{"incompressible with dict", random, dict, bodyRaw},
		tc{"large", big, 0, bodyZstd},
		tc{"large with dict", big, dict, bodyZstdDict},
		tc{"unrelated with dict", bytes.Repeat([]byte("unrelated text, not the template\r\n"), 500), dict, bodyZstdDict},
	)
	msgs := make([]NewMessage, len(cases))
	for i, c := range cases {
		msgs[i] = NewMessage{Campaign: "c1", Key: c.name, From: "b@mail.example.com", To: fmt.Sprintf("u%d@example.com", i), Body: c.body, Dict: c.dict}
	}
	ids := enqueue(t, s, msgs...).IDs
	check := func() {
		t.Helper()
		for i, c := range cases {
			mustBody(t, s, ids[i], c.body)
			if f := storedFormat(t, s, ids[i]); f != c.want {
				t.Errorf("%s: stored in format %d, want %d", c.name, f, c.want)
			}
		}
	}
	check()
	forgetCodecs() // as a fresh process would: codecs rebuilt from the stored dictionary
	check()
	if err := s.Compact(); err != nil {
		t.Fatal(err)
	}
	check()
}

func TestPutDictionary(t *testing.T) {
	s := openTest(t, Config{})
	a, b := sampleBody(), []byte("another sample")
	ida := putDict(t, s, a)
	if again := putDict(t, s, a); again != ida {
		t.Fatalf("same sample: id %08x, then %08x", ida, again)
	}
	if idb := putDict(t, s, b); idb == ida {
		t.Fatalf("two samples share id %08x", ida)
	}
	for _, bad := range [][]byte{nil, make([]byte, MaxDictionary+1)} {
		if _, err := s.PutDictionary(bad); err == nil {
			t.Errorf("PutDictionary(%d bytes) accepted", len(bad))
		}
	}
	if raw := rawFile(t, s.path); bytes.Contains(raw, []byte("Firstname")) || bytes.Contains(raw, []byte("another sample")) {
		t.Error("a dictionary is stored in clear")
	}
}

func TestPutDictionaryCollision(t *testing.T) {
	s := openTest(t, Config{})
	sample := sampleBody()
	sum := sha256.Sum256(sample)
	first := binary.BigEndian.Uint32(sum[:4])
	// Another sample already holds the id derived from this one's content.
	other := campaignBody(recipientN(5))
	err := s.update(func(tx *bbolt.Tx) error {
		val := append(make([]byte, dictTagSize), testBox.Seal(other, dictContext(first))...)
		return s.buckets(tx).dict.Put(dictKey(first), val)
	})
	if err != nil {
		t.Fatal(err)
	}
	id := putDict(t, s, sample)
	if id == first {
		t.Fatalf("PutDictionary took id %08x, held by another sample", id)
	}
	if again := putDict(t, s, sample); again != id {
		t.Fatalf("after a collision: id %08x, then %08x", id, again)
	}
	body := campaignBody(recipientN(1))
	ids := enqueue(t, s,
		NewMessage{Campaign: "c", Key: "a", To: "a@example.com", Body: body, Dict: id},
		NewMessage{Campaign: "c", Key: "b", To: "b@example.com", Body: body, Dict: first}).IDs
	forgetCodecs()
	mustBody(t, s, ids[0], body)
	mustBody(t, s, ids[1], body)
}

func TestEnqueueUnknownDictionary(t *testing.T) {
	s := openTest(t, Config{})
	dict := putDict(t, s, sampleBody())
	msgs := []NewMessage{
		{Campaign: "c", Key: "a", To: "ana@example.com", Body: campaignBody(recipientN(1)), Dict: dict},
		{Campaign: "c", Key: "b", To: "bob@example.com", Body: campaignBody(recipientN(2)), Dict: dict + 1},
	}
	_, err := s.Enqueue(msgs)
	if err == nil || !errors.Is(err, errUnknownDict) || !strings.Contains(err.Error(), "enqueue message 1 (") {
		t.Fatalf("Enqueue with an unknown dictionary: %v", err)
	}
	if strings.Contains(err.Error(), "bob@example.com") {
		t.Errorf("error quotes the address: %v", err)
	}
	if st, err := s.Stats(); err != nil || st.Total != 0 {
		t.Fatalf("Stats after a refused Enqueue = %+v, %v", st.ByState, err)
	}
	if res := enqueue(t, s, msgs[0]); res.Added != 1 {
		t.Fatalf("the valid message was recorded by the refused call: %+v", res)
	}
}

func TestBodyWrittenBeforeFormats(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, Config{Path: path})
	body := campaignBody(recipientN(3))
	id := enqueue(t, s, NewMessage{Campaign: "c", Key: "a", To: "ana@example.com", Body: body}).IDs[0]
	// Store it as the previous version did: the message bytes sealed under "queue:body:"+id.
	err := s.update(func(tx *bbolt.Tx) error {
		return s.buckets(tx).body.Put([]byte(id), testBox.Seal(body, "queue:body:"+id))
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openTest(t, Config{Path: path})
	mustBody(t, s, id, body)
	f := newFake()
	var got []byte
	f.onOK = func(int) {}
	drain(t, s.NewRunner(deliverFunc(func(_ context.Context, _, _, _ string, b []byte) error {
		got = bytes.Clone(b)
		return f.DeliverUntil(context.Background(), context.Background(), id, "", "ana@example.com", b)
	}), newSup(), RunnerConfig{}))
	if !bytes.Equal(got, body) {
		t.Fatalf("delivered %d bytes, want the %d enqueued", len(got), len(body))
	}
}

// deliverFunc is a Deliverer from a function.
type deliverFunc func(ctx context.Context, id, from, to string, body []byte) error

func (f deliverFunc) DeliverVia(ctx, _ context.Context, id, from, to string, body []byte, _, _ string) (string, string, string, string, error) {
	return "", "", "", "", f(ctx, id, from, to, body)
}

func TestCorruptBody(t *testing.T) {
	s := openTest(t, Config{})
	dict := putDict(t, s, sampleBody())
	body := campaignBody(recipientN(1))
	id := enqueue(t, s, NewMessage{Campaign: "c", Key: "a", To: "a@example.com", Body: body, Dict: dict}).IDs[0]
	_, v := rawValues(t, s, id)
	good, err := testBox.Open(v, bodyContext(id))
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0x55
	frameDict := binary.BigEndian.AppendUint32([]byte{bodyZstdDict}, dict)
	for _, c := range []struct {
		name   string
		plain  []byte
		reason string
	}{
		{"flipped byte in the frame", flipped, "decompress"},
		{"truncated frame", good[:len(good)-10], "decompress"},
		{"frame cut after the id", frameDict, "decompress"},
		{"garbage frame", append([]byte{bodyZstd}, "not zstd at all"...), "decompress"},
		{"empty frame", []byte{bodyZstd}, "decompress"},
		{"dictionary id cut short", []byte{bodyZstdDict, 1, 2}, "dictionary id"},
		{"unknown dictionary", append(binary.BigEndian.AppendUint32([]byte{bodyZstdDict}, dict+1), good[5:]...), "unknown dictionary"},
		{"unknown format", []byte{9, 'x'}, "unknown body format 9"},
		{"no format byte", []byte{}, "no format byte"},
		{"frame made with another dictionary", append(bytes.Clone(frameDict), otherFrame(t, dict+1, body)...), "decompress"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := s.update(func(tx *bbolt.Tx) error {
				return s.buckets(tx).body.Put([]byte(id), testBox.Seal(c.plain, bodyContext(id)))
			})
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Body(id)
			if err == nil || !strings.Contains(err.Error(), c.reason) || !strings.Contains(err.Error(), "body of "+id) {
				t.Fatalf("Body = %d bytes, %v; want an error about %q", len(got), err, c.reason)
			}
		})
	}
	// Sealed for another message, or tampered with: refused by the seal.
	if err := s.update(func(tx *bbolt.Tx) error {
		return s.buckets(tx).body.Put([]byte(id), testBox.Seal(good, bodyContext("0000000000000001")))
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Body(id); !errors.Is(err, sealed.ErrOpen) {
		t.Fatalf("Body of a value sealed for another message: %v", err)
	}
}

// otherFrame returns body as a zstd frame made with dictionary id holding another sample.
func otherFrame(t *testing.T, id uint32, body []byte) []byte {
	t.Helper()
	c, err := newCodec(id, []byte("another sample, another campaign"))
	if err != nil {
		t.Fatal(err)
	}
	return c.enc.EncodeAll(body, nil)
}

func TestBodyConcurrent(t *testing.T) {
	s := openTest(t, Config{})
	dicts := []uint32{0, putDict(t, s, sampleBody()), putDict(t, s, campaignBody(recipientN(-1))[100:])}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	var mu sync.Mutex
	all := map[string][]byte{} // id → body
	for g := range 8 {
		wg.Go(func() {
			for round := range 5 {
				msgs := make([]NewMessage, 16)
				for i := range msgs {
					n := g*1000 + round*100 + i
					msgs[i] = NewMessage{Campaign: "c", Key: fmt.Sprint(n), To: fmt.Sprintf("u%d@example.com", n),
						Body: campaignBody(recipientN(n)), Dict: dicts[n%len(dicts)]}
				}
				res, err := s.Enqueue(msgs)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				for i, id := range res.IDs {
					all[id] = msgs[i].Body
				}
				ids := make([]string, 0, len(all))
				for id := range all {
					ids = append(ids, id)
				}
				mu.Unlock()
				for _, id := range ids[:min(len(ids), 40)] { // ours and the other goroutines'
					mu.Lock()
					want := all[id]
					mu.Unlock()
					got, err := s.Body(id)
					if err != nil || !bytes.Equal(got, want) {
						errs <- fmt.Errorf("Body(%s) = %d bytes, %v; want %d bytes", id, len(got), err, len(want))
						return
					}
				}
				if round == 2 && g == 0 {
					forgetCodecs() // rebuilt while others use the old ones
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(all) != 8*5*16 {
		t.Fatalf("%d messages stored, want %d", len(all), 8*5*16)
	}
}

func TestStoreSizeWithDictionary(t *testing.T) {
	const n = 2000
	var raw int64
	sizes := map[bool]int64{}
	for _, withDict := range []bool{false, true} {
		s := openTest(t, Config{})
		var dict uint32
		if withDict {
			dict = putDict(t, s, sampleBody())
		}
		msgs := make([]NewMessage, 0, 250)
		raw = 0
		for i := range n {
			b := campaignBody(recipientN(i))
			raw += int64(len(b))
			msgs = append(msgs, NewMessage{Campaign: "c", Key: fmt.Sprint(i), From: "news@mail.example.com",
				To: recipientN(i).addr, Body: b, Dict: dict})
			if len(msgs) == cap(msgs) {
				enqueue(t, s, msgs...)
				msgs = msgs[:0]
			}
		}
		sizes[withDict] = usedSize(t, s)
		t.Logf("dictionary %v: %d messages of %d bytes on average: queue file pages %d bytes, %d per message",
			withDict, n, raw/n, sizes[withDict], sizes[withDict]/n)
	}
	if sizes[true] > raw/8 {
		t.Errorf("with a dictionary the queue file is %d bytes for %d bytes of bodies; want under an eighth", sizes[true], raw)
	}
	if sizes[false] > raw/2 {
		t.Errorf("without a dictionary the queue file is %d bytes for %d bytes of bodies; want under half", sizes[false], raw)
	}
}

func TestErasePruneCompactWithDictionary(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, Config{Path: path})
	dict := putDict(t, s, sampleBody())
	ana := recipientN(1)
	ana.first, ana.last = "Zyxwvut", "Qwertyplex"
	keep := campaignBody(recipientN(2))
	ids := enqueue(t, s,
		NewMessage{Campaign: "c", Key: "a", To: "ana@example.com", Body: campaignBody(ana), Dict: dict},
		NewMessage{Campaign: "c", Key: "b", To: "bob@example.com", Body: keep, Dict: dict}).IDs
	if res, err := s.EraseRecipient("ana@example.com", "erasure request"); err != nil || len(res.IDs) != 1 {
		t.Fatalf("EraseRecipient = %+v, %v", res, err)
	}
	if _, err := s.Body(ids[0]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Body of an erased message: %v", err)
	}
	if _, err := s.PruneFinished(time.Nanosecond); err != nil {
		t.Fatal(err)
	}
	if err := s.Compact(); err != nil {
		t.Fatal(err)
	}
	mustNotContain(t, rawFile(t, path), "compacted file", "Zyxwvut", "Qwertyplex")
	forgetCodecs()
	mustBody(t, s, ids[1], keep)
	checkCounters(t, s)
}

// benchBodies returns 1024 campaign bodies (distinct recipients).
func benchBodies() [][]byte {
	bodies := make([][]byte, 1024)
	for i := range bodies {
		bodies[i] = campaignBody(recipientN(i))
	}
	return bodies
}

// benchStore opens a store for a benchmark and, withDict, stores the
// campaign sample as its dictionary (id 0 without).
func benchStore(b *testing.B, withDict bool) (*Store, uint32) {
	s := openTest(b, Config{})
	if !withDict {
		return s, 0
	}
	return s, putDict(b, s, sampleBody())
}

// BenchmarkEnqueueCampaign is BenchmarkEnqueue with realistic ~22 KB campaign
// bodies, compressed without and with the campaign's dictionary; it reports
// the queue file's bytes per message.
func BenchmarkEnqueueCampaign(b *testing.B) {
	bodies := benchBodies()
	for _, withDict := range []bool{false, true} {
		b.Run(fmt.Sprintf("dict=%v", withDict), func(b *testing.B) {
			s, dict := benchStore(b, withDict)
			const group = 256
			msgs := make([]NewMessage, group)
			b.ReportAllocs()
			b.SetBytes(int64(group * len(bodies[0])))
			n := 0
			for b.Loop() {
				for i := range msgs {
					msgs[i] = NewMessage{Campaign: "bench", Key: fmt.Sprint(n), From: "b@mail.example.com",
						To: fmt.Sprintf("u%d@example.com", n), Body: bodies[n%len(bodies)], Dict: dict}
					n++
				}
				res, err := s.Enqueue(msgs)
				if err != nil || res.Added != group {
					b.Fatalf("Enqueue = %+v, %v", res, err)
				}
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "msgs/s")
			b.ReportMetric(float64(usedSize(b, s))/float64(n), "db-B/msg")
		})
	}
}

// BenchmarkBodyPackSeal measures compressing and sealing one campaign body.
func BenchmarkBodyPackSeal(b *testing.B) {
	bodies := benchBodies()
	for _, withDict := range []bool{false, true} {
		b.Run(fmt.Sprintf("dict=%v", withDict), func(b *testing.B) {
			s := openTest(b, Config{})
			c, err := plainCodec()
			if withDict {
				dict := putDict(b, s, sampleBody())
				err = s.view(func(tx *bbolt.Tx) error {
					c, err = s.buckets(tx).dictCodec(dict)
					return err
				})
			}
			if err != nil {
				b.Fatal(err)
			}
			var buf []byte
			stored, n := 0, 0
			b.ReportAllocs()
			for b.Loop() {
				buf = c.pack(buf[:0], bodies[n%len(bodies)])
				stored += len(testBox.Seal(buf, bodyContext("0123456789abcdef")))
				n++
			}
			b.ReportMetric(float64(stored)/float64(n), "stored-B/body")
		})
	}
}

// BenchmarkBodyOpen measures Store.Body: read, open and decompress one campaign body.
func BenchmarkBodyOpen(b *testing.B) {
	bodies := benchBodies()
	for _, withDict := range []bool{false, true} {
		b.Run(fmt.Sprintf("dict=%v", withDict), func(b *testing.B) {
			s, dict := benchStore(b, withDict)
			msgs := make([]NewMessage, len(bodies))
			for i := range msgs {
				msgs[i] = NewMessage{Campaign: "bench", Key: fmt.Sprint(i), To: fmt.Sprintf("u%d@example.com", i), Body: bodies[i], Dict: dict}
			}
			ids := enqueue(b, s, msgs...).IDs
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				if _, err := s.Body(ids[n%len(ids)]); err != nil {
					b.Fatal(err)
				}
				n++
			}
		})
	}
}

// A worker reads each body into the memory the last one used (Deliver does
// not keep it), and every delivery still gets exactly its own bytes: a
// long body after a short one grows the buffer, a short one after it reuses it.
func TestRunnerReusesBodyBuffer(t *testing.T) {
	s := openTest(t, Config{})
	dict := putDict(t, s, sampleBody())
	bodies := map[string][]byte{}
	var msgs []NewMessage
	for i, extra := range []int{0, 40 << 10, 0, 3} {
		rc := recipientN(i)
		body := append(campaignBody(rc), bytes.Repeat([]byte("P.S. one more line of text.\r\n"), extra/29)...)
		msgs = append(msgs, NewMessage{Campaign: "c", Key: rc.addr, To: rc.addr, Body: body, Dict: dict})
	}
	res := enqueue(t, s, msgs...)
	for i, id := range res.IDs {
		bodies[id] = msgs[i].Body
	}
	var (
		mu    sync.Mutex
		got   = map[string][]byte{}
		mem   []*byte
		order []string
	)
	drain(t, s.NewRunner(deliverFunc(func(_ context.Context, id, _, _ string, b []byte) error {
		mu.Lock()
		defer mu.Unlock()
		got[id] = bytes.Clone(b)
		mem = append(mem, unsafe.SliceData(b))
		order = append(order, id)
		return nil
	}), newSup(), RunnerConfig{Workers: 1}))
	for id, want := range bodies {
		if !bytes.Equal(got[id], want) {
			t.Fatalf("%s: delivered %d bytes differing from the %d enqueued", id, len(got[id]), len(want))
		}
	}
	// After the longest body, the shorter ones that follow land in its memory.
	longest := slices.IndexFunc(order, func(id string) bool { return len(bodies[id]) > 40<<10 })
	if longest < 0 || longest == len(order)-1 {
		t.Fatalf("delivery order %v: want the long body before another", order)
	}
	for i := longest + 1; i < len(mem); i++ {
		if mem[i] != mem[longest] {
			t.Fatalf("delivery %d did not reuse the worker's buffer", i)
		}
	}
}
