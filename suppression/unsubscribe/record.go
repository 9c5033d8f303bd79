package unsubscribe

import (
	"hash/maphash"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/address"
)

// Events counts what a person did, once per person per campaign (kind
// "unsubscribed"); *queue.Store satisfies it.
type Events interface {
	CountCampaignEvent(campaign, addr, kind string) (bool, error)
}

// Timings keeps, per campaign, when each unsubscribe was asked and how long
// until the suppression store held it (kind "unsubscribe"), naming nobody:
// the evidence a campaign report shows that opt-outs are honoured at once;
// *queue.Store satisfies it.
type Timings interface {
	AddCampaignTiming(campaign, kind string, at time.Time, took time.Duration) error
}

// Recorder records unsubscribes, from POST /u/TOKEN and from mailto alike.
// A request is recorded once: when the suppression store already holds what
// it asks (Covers), nothing is written or audited again, and the campaign
// counts each person once (Events), so repeating a request changes nothing.
type Recorder struct {
	sup     Suppressor
	events  Events
	history ConsentHistory
	timings Timings
	now     func() time.Time
	log     zerolog.Logger
}

// NewRecorder records into cfg.Suppressor and, when set, cfg.Events,
// cfg.History and cfg.Timings.
func NewRecorder(cfg Config, log zerolog.Logger) *Recorder {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Recorder{sup: cfg.Suppressor, events: cfg.Events, history: cfg.History, timings: cfg.Timings, now: now, log: log}
}

// personLocks serialise the requests about one address (by hash), in the
// whole process, so concurrent repeats are seen as repeats.
var (
	personLocks [64]sync.Mutex
	lockSeed    = maphash.MakeSeed()
)

func lockFor(addr string) *sync.Mutex {
	return &personLocks[maphash.String(lockSeed, strings.ToLower(addr))%uint64(len(personLocks))]
}

// Record records e, the unsubscribe claim c asks for. Unless the store
// already holds it, audit is called first with the action's detail (the
// action counts as done only once it is recorded), then the entry is added
// and the consent history told; its error is returned and nothing else is
// done. The token's campaign then counts the person once; a failure there is
// logged. changed reports whether the suppression store changed.
func (r *Recorder) Record(c Claim, e suppression.Entry, audit func(detail string) error) (changed bool, err error) {
	asked := r.now()
	mu := lockFor(e.Target)
	mu.Lock()
	changed, err = r.suppress(c, e, audit)
	mu.Unlock()
	if err != nil {
		return false, err
	}
	if changed && r.timings != nil && c.Campaign != "" {
		// Timed from the request to the suppression store's fsynced write.
		if err := r.timings.AddCampaignTiming(c.Campaign, "unsubscribe", asked.UTC(), r.now().Sub(asked)); err != nil {
			r.log.Error().Err(err).Str("campaign", c.Campaign).Msg("unsubscribe timing not kept")
		}
	}
	if r.events != nil && c.Campaign != "" {
		if _, err := r.events.CountCampaignEvent(c.Campaign, c.Address, "unsubscribed"); err != nil {
			r.log.Error().Err(address.MaskError(err)).Str("campaign", c.Campaign).Msg("unsubscribe event not counted")
		}
	}
	return changed, nil
}

// suppress is Record's part under the person's lock.
func (r *Recorder) suppress(c Claim, e suppression.Entry, audit func(detail string) error) (bool, error) {
	log := r.log.With().Str("rcpt", address.Mask(c.Address)).Str("list", e.List).Str("campaign", c.Campaign).
		Str("source", e.Source).Logger()
	covered, err := r.sup.Covers(e)
	if err != nil {
		log.Error().Err(address.MaskError(err)).Msg("unsubscribe not recorded")
		return false, err
	}
	if covered {
		log.Debug().Msg("unsubscribe repeated; nothing to record")
		return false, nil
	}
	if audit != nil {
		list := e.List
		if list == "" {
			list = "*"
		}
		if err := audit("unsubscribed list " + list + " via " + e.Source); err != nil {
			log.Error().Err(err).Msg("unsubscribe not audited")
			return false, err
		}
	}
	if err := r.sup.Add(e); err != nil {
		log.Error().Err(address.MaskError(err)).Msg("unsubscribe not recorded")
		return false, err
	}
	log.Info().Msg("unsubscribed")
	if r.history != nil {
		if err := r.history.Unsubscribed(c.Address, e.List, e.Source); err != nil {
			log.Error().Err(address.MaskError(err)).Msg("unsubscribe not recorded in the consent history")
		}
	}
	return true, nil
}
