package queue

// actionStates are the states each operator action can change, as Retry,
// Hold, Release, Delete and Bounce decide: a bulk selection for an action
// need read only those (state index), not every message ever queued.
var actionStates = map[string][]State{
	"retry":   {StateReady, StateDeferred, StateHeld},
	"hold":    {StateReady, StateDeferred},
	"release": {StateHeld},
	"delete":  {StateReady, StateDeferred, StateHeld},
	"bounce":  {StateReady, StateDeferred, StateHeld},
}

// ActionStates returns the states the operator action (retry, hold,
// release, delete, bounce) can change; none for an unknown action.
func ActionStates(action string) []State { return actionStates[action] }
