package brakes

// The campaign event kinds the brakes judge, as the queue counts them per
// person per campaign.
const (
	EventHardBounce = "bounced_hard"
	EventComplaint  = "complained"
)

// CheckedBy says which part counts a campaign event of kind, for Check's
// who: a hard bounce the MTA's ("mta"), a complaint the inbound listener's
// ("inbound"); any other kind never moves a brake (ok false).
func CheckedBy(kind string) (who string, ok bool) {
	switch kind {
	case EventHardBounce:
		return "mta", true
	case EventComplaint:
		return "inbound", true
	}
	return "", false
}

// FiguresOf is a campaign's figures from its messages delivered and
// bounced (each a final answer, so both attempted) and its event counts by
// kind.
func FiguresOf(delivered, bounced int, events map[string]int) Figures {
	return Figures{
		Attempted:   delivered + bounced,
		Delivered:   delivered,
		HardBounces: events[EventHardBounce],
		Complaints:  events[EventComplaint],
	}
}
