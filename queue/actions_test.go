package queue

import (
	"slices"
	"testing"
)

func TestActionStates(t *testing.T) {
	for _, tc := range []struct {
		action string
		want   []State
	}{
		{"retry", []State{StateReady, StateDeferred, StateHeld}},
		{"hold", []State{StateReady, StateDeferred}},
		{"release", []State{StateHeld}},
		{"delete", []State{StateReady, StateDeferred, StateHeld}},
		{"bounce", []State{StateReady, StateDeferred, StateHeld}},
		{"unknown", nil},
	} {
		if got := ActionStates(tc.action); !slices.Equal(got, tc.want) {
			t.Errorf("ActionStates(%q) = %v, want %v", tc.action, got, tc.want)
		}
	}
}
