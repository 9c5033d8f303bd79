package queue

import (
	"bytes"
	"fmt"
	"testing"
)

// BenchmarkEnqueue measures group commits of 256 messages with 20 KB bodies.
func BenchmarkEnqueue(b *testing.B) {
	s := openTest(b, Config{})
	body := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz\r\n"), 20*1024/38)
	const group = 256
	msgs := make([]NewMessage, group)
	b.ReportAllocs()
	b.SetBytes(int64(group * len(body)))
	n := 0
	for b.Loop() {
		for i := range msgs {
			msgs[i] = NewMessage{Campaign: "bench", Key: fmt.Sprint(n), From: "b@mail.example.com",
				To: fmt.Sprintf("u%d@example.com", n), Body: body}
			n++
		}
		res, err := s.Enqueue(msgs)
		if err != nil || res.Added != group {
			b.Fatalf("Enqueue = %+v, %v", res, err)
		}
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "msgs/s")
}
