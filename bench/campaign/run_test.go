package main

import (
	"strings"
	"testing"
)

func TestParseGCLine(t *testing.T) {
	for _, tc := range []struct {
		line       string
		heap, live float64
		ok         bool
	}{
		{"gc 1 @0.012s 2%: 0.010+0.45+0.003 ms clock, 0.04+0.1/0.3/0+0.01 ms cpu, 4->4->1 MB, 4 MB goal, 0 MB stacks, 0 MB globals, 4 P", 4, 1, true},
		{"gc 12 @3.1s 1%: 0.02+1.2+0.01 ms clock, 0.1+0.5/1/0+0.05 ms cpu, 120->130->64 MB, 128 MB goal, 4 P", 120, 64, true},
		{"gc 3 @0.1s: no sizes here", 0, 0, false},
	} {
		heap, live, ok := parseGCLine(tc.line)
		if heap != tc.heap || live != tc.live || ok != tc.ok {
			t.Errorf("parseGCLine(%q) = %v, %v, %v; want %v, %v, %v", tc.line, heap, live, ok, tc.heap, tc.live, tc.ok)
		}
	}
}

func TestCheckDelivered(t *testing.T) {
	for _, tc := range []struct {
		name    string
		res     runResult
		allSeen bool
		wantErr string
	}{
		{"all", runResult{AtSink: 10, Enqueued: 10, Delivered: 10}, true, ""},
		{"last not seen", runResult{AtSink: 10, Enqueued: 10, Delivered: 10}, false, "sink has 10 of 10"},
		{"short at sink", runResult{AtSink: 9, Enqueued: 10, Delivered: 10}, true, "sink has 9 of 10"},
		{"summary differs", runResult{AtSink: 10, Enqueued: 10, Delivered: 9}, true, "summary says enqueued 10, delivered 9"},
	} {
		err := checkDelivered(tc.res, 10, tc.allSeen, []byte(`{"summary":{}}`))
		if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: checkDelivered = %v, want %q", tc.name, err, tc.wantErr)
		}
	}
}

func TestReadSummary(t *testing.T) {
	var res runResult
	err := readSummary([]byte(`{"summary":{"enqueued":7,"suppressed":{"unsubscribed":2,"hard_bounce":1}},"delivery":{"delivered":6}}`), &res)
	if err != nil || res.Enqueued != 7 || res.Suppressed != 3 || res.Delivered != 6 {
		t.Errorf("readSummary = %+v, %v", res, err)
	}
	if err := readSummary([]byte(`not json`), &res); err == nil || !strings.HasPrefix(err.Error(), "summary: ") {
		t.Errorf("readSummary(bad) err = %v", err)
	}
}
