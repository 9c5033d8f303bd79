package brakes

import "testing"

func TestCheckedBy(t *testing.T) {
	for _, tc := range []struct {
		kind, who string
		ok        bool
	}{
		{"bounced_hard", "mta", true},
		{"complained", "inbound", true},
		{"bounced_soft", "", false},
		{"unsubscribed", "", false},
		{"delayed", "", false},
		{"", "", false},
	} {
		who, ok := CheckedBy(tc.kind)
		if who != tc.who || ok != tc.ok {
			t.Errorf("CheckedBy(%q) = %q, %v; want %q, %v", tc.kind, who, ok, tc.who, tc.ok)
		}
	}
}

func TestFiguresOf(t *testing.T) {
	for _, tc := range []struct {
		name               string
		delivered, bounced int
		events             map[string]int
		want               Figures
	}{
		{"none", 0, 0, nil, Figures{}},
		{"attempted is delivered plus bounced", 90, 10, nil, Figures{Attempted: 100, Delivered: 90}},
		{"events by kind", 5, 2, map[string]int{"bounced_hard": 2, "complained": 1, "bounced_soft": 7, "unsubscribed": 3},
			Figures{Attempted: 7, Delivered: 5, HardBounces: 2, Complaints: 1}},
	} {
		if got := FiguresOf(tc.delivered, tc.bounced, tc.events); got != tc.want {
			t.Errorf("%s: FiguresOf = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
