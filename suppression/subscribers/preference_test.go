package subscribers

import "testing"

func TestOnPreferencePage(t *testing.T) {
	for _, tc := range []struct {
		state            string
		shown, subscribe bool
	}{
		{StateConfirmed, true, true},
		{StateLegitimateInterest, true, true},
		{StateUnsubscribed, true, false},
		{StatePending, false, false},
		{StateNone, false, false},
		{StateErased, false, false},
		{"", false, false},
	} {
		shown, sub := OnPreferencePage(tc.state)
		if shown != tc.shown || sub != tc.subscribe {
			t.Errorf("OnPreferencePage(%q) = %v, %v; want %v, %v", tc.state, shown, sub, tc.shown, tc.subscribe)
		}
	}
}
