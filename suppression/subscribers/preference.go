package subscribers

// OnPreferencePage says whether a list whose consent state is state shows
// on the recipient's preference page, and whether as subscribed: confirmed
// consent and legitimate interest count as subscribed; an unsubscribe shows
// the list unsubscribed (so it can be taken back); any other state (none,
// pending, erased) leaves the list off the page.
func OnPreferencePage(state string) (shown, subscribed bool) {
	switch state {
	case StateConfirmed, StateLegitimateInterest:
		return true, true
	case StateUnsubscribed:
		return true, false
	}
	return false, false
}
