package queue

import "time"

// PausedUntil is the end of the suspension that pauses a campaign: never in
// practice, it lasts until the campaign is resumed. It survives restarts like
// any suspension, spends no attempt, and max_age still applies.
var PausedUntil = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)

// PauseCampaign holds every message of campaign, those enqueued later too,
// until ResumeCampaign, recording reason.
func (s *Store) PauseCampaign(campaign, reason string) error {
	return s.Suspend(Selector{Campaign: campaign}, PausedUntil, reason)
}

// ResumeCampaign lifts the campaign's pause (or suspension) and makes its
// held messages due now; it reports whether one was in force.
func (s *Store) ResumeCampaign(campaign string) (bool, error) {
	return s.Resume(Selector{Campaign: campaign})
}

// CampaignPaused reports whether campaign is paused (a suspension of the
// campaign that lasts until PausedUntil); an unreadable store says no.
func (s *Store) CampaignPaused(campaign string) bool {
	sus, err := s.Suspensions()
	if err != nil {
		return false
	}
	for _, sp := range sus {
		if sp.Selector == (Selector{Campaign: campaign}) && !sp.Until.Before(PausedUntil) {
			return true
		}
	}
	return false
}
