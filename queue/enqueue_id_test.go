package queue

import "testing"

func TestNextID(t *testing.T) {
	const ms = int64(1_780_000_000_000)
	base := uint64(ms) << 20
	for _, tc := range []struct {
		name      string
		milli     int64
		seq, last uint64
		want      uint64
	}{
		{"first", ms, 1, 0, base | 1},
		{"sequence keeps 20 bits", ms, 1<<20 | 5, 0, base | 5},
		{"after last", ms, 7, base | 3, base | 7},
		{"equal to last", ms, 3, base | 3, base | 4},
		{"clock stepped back", ms - 1000, 9, base | 3, base | 4},
	} {
		if got := nextID(tc.milli, tc.seq, tc.last); got != tc.want {
			t.Errorf("%s: nextID = %#x, want %#x", tc.name, got, tc.want)
		}
	}
}
