package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/postwarden/postwarden/campaign"
	"github.com/postwarden/postwarden/campaign/brakes"
	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/queue/campaignq"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
	"github.com/postwarden/postwarden/templates"
)

type campaignSendArgs struct {
	File   string `json:"file"`
	NoWait bool   `json:"no_wait"`
}

// sendResult is the record `campaign send` ends with.
type sendResult struct {
	Summary    campaign.Summary    `json:"summary"`
	Delivery   map[queue.State]int `json:"delivery,omitempty"`
	CaptureDir string              `json:"capture_dir,omitempty"`
	Daemon     bool                `json:"handed_to_daemon,omitempty"`
	DKIMKeys   []createdKey        `json:"dkim_keys_created,omitempty"`
}

// loadSpec loads a campaign file and its templates into a campaign.Spec.
// Every problem names the campaign file and line.
func loadSpec(e *env, file string) (campaign.Spec, *configs.Campaign, error) {
	c, err := configs.LoadCampaign(file)
	if err != nil {
		return campaign.Spec{}, nil, err
	}
	if err := checkSendable(e.cfg, c); err != nil {
		return campaign.Spec{}, nil, err
	}
	set, err := templates.Load(c.Template, c.Subject)
	if err != nil {
		return campaign.Spec{}, nil, fmt.Errorf("%s:%d: template: %w", c.Path, c.Line("template"), err)
	}
	hash, err := c.Hash()
	if err != nil {
		return campaign.Spec{}, nil, err
	}
	privacy := c.PrivacyURL
	if privacy == "" {
		privacy = e.cfg.PrivacyURL
	}
	return campaign.Spec{
		ID: c.ID, List: c.List, ListName: c.ListName,
		From: c.From, ReplyTo: c.ReplyTo, Subject: c.Subject,
		Templates:  set,
		Recipients: c.Recipients,
		PrivacyURL: privacy,
		Hostname:   e.cfg.Hostname,
		LegalBasis: c.LegalBasis, LIA: c.LIA, Audience: c.Audience,
		LIAHash:          c.LIAHash(),
		ExcludeCountries: c.ExcludedCountries(),
		CountryCode:      configs.CountryCode,
		UnknownCountry:   c.UnknownCountry,
		FreeMail:         c.FreeMail,
		FileHash:         hash,
		MessageIDKey:     e.msgIDKey,
		Pool:             c.Pool,
	}, c, nil
}

// publicURLWarning says why a plain-http public_url is for testing only.
func publicURLWarning(cfg *configs.Server) string {
	if strings.HasPrefix(cfg.PublicURL, "https://") {
		return ""
	}
	return fmt.Sprintf("note: public_url %s is not https; RFC 8058 one-click unsubscribe needs https, so mailbox providers will not use it (fine for a local test)", cfg.PublicURL)
}

// links mints the unsubscribe URIs of a message: the one-click https URL
// and, when the inbound listener takes mail for bounce_domain, a mailto URI.
type links struct {
	*unsubscribe.Tokens
	bounceDomain string
}

// UnsubscribeMailto satisfies campaign.MailtoLinks.
func (l links) UnsubscribeMailto(address, list, campaign string) string {
	if l.bounceDomain == "" {
		return ""
	}
	return l.MailtoURI(address, list, campaign, l.bounceDomain)
}

// mailtoDomain is the domain of mailto unsubscribe URIs: bounce_domain when
// smtp_listen receives its mail, else none.
func (e *env) mailtoDomain() string {
	if e.cfg.SMTPListen == "" {
		return ""
	}
	return e.cfg.BounceDomain
}

func opCampaignSend(ctx context.Context, e *env, req request, o *out) error {
	var args campaignSendArgs
	if err := decodeArgs(req, &args); err != nil {
		return err
	}
	spec, c, err := loadSpec(e, args.File)
	if err != nil {
		return err
	}
	if err := spec.Templates.Validate(); err != nil {
		return fmt.Errorf("%s:%d: template: %w", c.Path, c.Line("template"), err)
	}
	if w := publicURLWarning(e.cfg); w != "" {
		_ = o.Note("%s", w)
	}
	var total int64
	if fi, err := os.Stat(spec.Recipients); err == nil {
		total = fi.Size()
	}
	e.log.Info().Str("who", req.Who).Str("campaign", spec.ID).Str("file", c.Path).Str("file_sha256", spec.FileHash).Float64("rate", c.Rate).Msg("campaign send")
	if err := e.record(req, "campaign.send", "campaign:"+spec.ID, "", map[string]string{"file": c.Path, "file_sha256": spec.FileHash,
		"legal_basis": spec.LegalBasis, "lia_sha256": spec.LIAHash, "recipients": spec.Recipients}); err != nil {
		return err
	}
	res := sendResult{}
	if c.Rate > 0 || e.queue.CampaignRate(spec.ID) > 0 {
		// The file's rate (none: unlimited) holds for this and later runs of the campaign.
		if err := e.queue.SetCampaignRate(spec.ID, c.Rate); err != nil {
			return err
		}
	}
	// The file's brakes (what it leaves out: the server's) hold for this and later runs.
	if err := e.brake.Arm(spec.ID, c.Brakes.Over(e.cfg.Delivery.Brakes)); err != nil {
		return err
	}
	if (brakeQueue{e.queue}).Paused(spec.ID) {
		_ = o.Note("campaign %s is paused: its messages wait for `postwarden campaign resume %s`", spec.ID, spec.ID)
	}

	// Without a daemon, this process delivers, starting while it enqueues.
	var deliveryDone chan error
	var drain func(context.Context) error
	runCtx, stopDelivery := context.WithCancel(ctx)
	defer stopDelivery()
	if !e.daemon && !args.NoWait {
		sender, created, err := e.newSender()
		if err != nil {
			return err
		}
		defer sender.Close()
		res.DKIMKeys = created
		// On a signal, deliveries in flight get drain_timeout, as in serve.
		rc := queue.RunnerConfig{Workers: e.cfg.Delivery.Workers, Campaign: spec.ID, DrainTimeout: e.cfg.Delivery.DrainTimeout}
		runner := e.queue.NewRunner(sender, e.deliveryGate(), rc)
		deliveryDone = make(chan error, 1)
		go func() { deliveryDone <- runner.Run(runCtx) }()
		drain = func(ctx context.Context) error {
			return e.queue.NewRunner(sender, e.deliveryGate(), rc).Drain(ctx)
		}
		if e.cfg.Delivery.Mode == "capture" {
			res.CaptureDir = e.cfg.Delivery.CaptureDir
		}
	}

	// The campaign's backlog holds enqueueing back only while a runner (the
	// daemon's, or this process's) delivers: without one (send --no-wait, no
	// daemon) nothing would drain it.
	var backlog campaign.Backlog
	if e.daemon || deliveryDone != nil {
		backlog = e.queue
	}
	lk := links{e.tokens, e.mailtoDomain()}
	summary, sendErr := campaign.Send(ctx, spec, campaign.Deps{
		Suppressions: e.gate(),
		Queue:        campaignq.Adapter{Q: e.queue},
		Links:        lk,
		Mailto:       lk,
		Dictionary:   e.queue,
		Backlog:      backlog,
		Records:      e.queue,
		Now:          time.Now,
		Log:          e.log.With().Str("component", "campaign").Logger(),
	}, func(rows int, bytes int64) {
		_ = o.Progress(progress{Rows: rows, Bytes: bytes, Total: total})
	})
	if req.Reveal {
		summary.InvalidLines = summary.InvalidLines[:0]
		for _, re := range summary.InvalidRows {
			summary.InvalidLines = append(summary.InvalidLines, re.Error())
		}
	}
	res.Summary = summary
	if deliveryDone != nil {
		stopDelivery()
		if err := <-deliveryDone; err != nil && !errors.Is(err, context.Canceled) {
			sendErr = errors.Join(sendErr, err)
		}
		if sendErr == nil {
			// Deliver what is due, including what an interrupted earlier run left.
			if err := drain(ctx); err != nil {
				sendErr = fmt.Errorf("deliver campaign %s: %w", spec.ID, err)
			}
		}
		counts, err := e.queue.CampaignCounts(spec.ID)
		if err == nil {
			res.Delivery = counts
		}
	}
	if e.daemon {
		e.queue.Kick()
		res.Daemon = true
	}
	if err := o.Record(res); err != nil {
		return err
	}
	return sendErr
}

type campaignStatusArgs struct {
	ID string `json:"id"`
}

// campaignStatus is what `campaign status` reports: the queue's counts by
// state, the campaign record's summary and the inbound events.
type campaignStatus struct {
	ID     string              `json:"id"`
	Record json.RawMessage     `json:"record,omitempty"`
	Queue  map[queue.State]int `json:"queue"`
	// Enqueued counts every message the campaign put in the queue (all runs).
	Enqueued  int `json:"enqueued"`
	Delivered int `json:"delivered"`
	Pending   int `json:"pending"` // ready, deferred, held or in flight
	Deferred  int `json:"deferred"`
	// Bounced counts messages in state bounced (during delivery, after it, or by
	// an operator); BouncedHard and BouncedSoft count the bounce events by kind.
	Bounced      int `json:"bounced"`
	BouncedHard  int `json:"bounced_hard"`
	BouncedSoft  int `json:"bounced_soft"`
	Expired      int `json:"expired"`
	Cancelled    int `json:"cancelled"` // suppressed before delivery, or deleted
	Complained   int `json:"complained"`
	Unsubscribed int `json:"unsubscribed"`
	// Suppressed counts the recipients skipped at enqueue, by reason (last run's summary).
	Suppressed map[string]int `json:"suppressed_at_enqueue"`
	// Skipped counts the recipients the legal basis left out (region_excluded,
	// not_b2b, no_consent), by reason (last run's summary).
	Skipped map[string]int `json:"skipped_at_enqueue"`
	Rate    float64        `json:"rate,omitempty"` // msgs/s ceiling; 0 unlimited
	Events  map[string]int `json:"events,omitempty"`
	// Brake is the campaign's brakes, the figures they judge and its pause.
	Brake *brakes.Status `json:"brake,omitempty"`
}

func opCampaignStatus(ctx context.Context, e *env, req request, o *out) error {
	var args campaignStatusArgs
	if err := decodeArgs(req, &args); err != nil {
		return err
	}
	rec, err := e.queue.GetCampaign(args.ID)
	if err != nil && !errors.Is(err, queue.ErrNotFound) {
		return err
	}
	counts, err := e.queue.CampaignCounts(args.ID)
	if err != nil {
		return err
	}
	if rec == nil && len(counts) == 0 {
		return no("campaign %q not found", args.ID)
	}
	events, err := e.queue.CampaignEvents(args.ID)
	if err != nil {
		return err
	}
	st := campaignStatus{ID: args.ID, Record: rec, Queue: counts, Events: events,
		Delivered: counts[queue.StateDelivered], Deferred: counts[queue.StateDeferred],
		Bounced: counts[queue.StateBounced], Expired: counts[queue.StateExpired], Cancelled: counts[queue.StateCancelled],
		BouncedHard: events["bounced_hard"], BouncedSoft: events["bounced_soft"],
		Complained: events["complained"], Unsubscribed: events["unsubscribed"],
		Suppressed: map[string]int{}, Rate: e.queue.CampaignRate(args.ID)}
	for state, n := range counts {
		st.Enqueued += n
		if !state.Finished() {
			st.Pending += n
		}
	}
	bs, err := e.brake.Status(args.ID)
	if err != nil {
		return err
	}
	st.Brake = &bs
	if rec != nil {
		var r campaign.Record
		if err := json.Unmarshal(rec, &r); err == nil {
			if r.Summary.Suppressed != nil {
				st.Suppressed = r.Summary.Suppressed
			}
			st.Skipped = r.Summary.Skipped
		}
	}
	return o.Record(st)
}
