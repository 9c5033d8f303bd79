package queue

import (
	"testing"
	"time"
)

func TestClaimAction(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	maxAge := 5 * 24 * time.Hour
	fresh, old := now.Add(-time.Hour), now.Add(-maxAge-time.Second)
	sp := Suspension{Until: now.Add(time.Hour), Reason: "421 too many"}
	slot := now.Add(3 * time.Second)
	for _, tc := range []struct {
		name        string
		m           Message
		suspended   bool
		slot        time.Time
		want        int
		wantReserve bool // reserve (which takes a rate token) must be asked
	}{
		{"claim", Message{Created: fresh}, false, time.Time{}, actClaim, true},
		{"rate", Message{Created: fresh}, false, slot, actRate, true},
		{"suspended", Message{Created: fresh}, true, slot, actSuspend, false},
		{"expired", Message{Created: old}, true, slot, actExpire, false},
		{"erased", Message{Created: old, Erased: true}, true, slot, actErased, false},
		{"exactly max age", Message{Created: now.Add(-maxAge)}, false, time.Time{}, actClaim, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reserved := false
			cd := claimAction(tc.m, now, maxAge,
				func() (Suspension, bool) { return sp, tc.suspended },
				func() (time.Time, uint64) { reserved = true; return tc.slot, 7 })
			if cd.act != tc.want {
				t.Errorf("act = %d, want %d", cd.act, tc.want)
			}
			if reserved != tc.wantReserve {
				t.Errorf("reserve asked = %v, want %v", reserved, tc.wantReserve)
			}
			switch cd.act {
			case actRate:
				if !cd.slot.Equal(slot) || cd.gen != 7 {
					t.Errorf("slot, gen = %v, %d; want %v, 7", cd.slot, cd.gen, slot)
				}
			case actSuspend:
				if cd.sp.Reason != sp.Reason {
					t.Errorf("suspension = %+v, want %+v", cd.sp, sp)
				}
			}
		})
	}
}
