package mta

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/mta/mtatest"
)

// benchMessage is a ~20 KB message from the signing domain.
func benchMessage() []byte {
	var sb strings.Builder
	sb.WriteString("From: Ana Ruiz <ana@example.com>\r\nTo: <r@bench.example>\r\nSubject: bench\r\n" +
		"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bench@mail.example.com>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n\r\n")
	for sb.Len() < 20<<10 {
		sb.WriteString("A line of a campaign message, long enough to look like one in a real body.\r\n")
	}
	return []byte(sb.String())
}

// BenchmarkDeliver measures one message through the MTA over loopback:
// DKIM signing and SMTP to a go-smtp sink on a pooled connection, with
// RSA-2048 and Ed25519 keys, and 1 or 8 deliveries at a time. RSA signs with
// the engine a server picks by default (rsa_signer auto: OpenSSL when it loads).
func BenchmarkDeliver(b *testing.B) {
	for _, keyType := range []string{dkim.TypeRSA, dkim.TypeEd25519} {
		for _, par := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/parallel=%d", keyType, par), func(b *testing.B) {
				sink, err := mtatest.Start(mtatest.Options{Discard: true})
				if err != nil {
					b.Fatal(err)
				}
				defer sink.Close()
				key, _, err := dkim.LoadOrCreate(filepath.Join(b.TempDir(), "k.key"), "example.com", "pw1", keyType)
				if err != nil {
					b.Fatal(err)
				}
				if err := key.UseEngine(dkim.EngineAuto); err != nil {
					b.Fatal(err)
				}
				s, err := New(Config{Hostname: "mail.example.com", Mode: ModeMX, Routes: map[string]string{"bench.example": sink.Addr},
					ConcurrencyPerDomain: par, TLSPolicy: map[string]string{"default": TLSNone}}, dkim.NewSigner([]*dkim.Key{key}), zerolog.Nop())
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				msg := benchMessage()
				var n atomic.Int64
				b.SetBytes(int64(len(msg)))
				b.ReportAllocs()
				b.SetParallelism(par)
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						id := fmt.Sprintf("b%d", n.Add(1))
						if err := s.Deliver(context.Background(), id, "bounce@example.com", "r@bench.example", msg); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
				if got := sink.Count(); got != b.N {
					b.Errorf("sink got %d of %d", got, b.N)
				}
			})
		}
	}
}
