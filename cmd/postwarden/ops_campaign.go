package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/postwarden/postwarden/campaign"
	"github.com/postwarden/postwarden/campaign/brakes"
	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/mta"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/queue/campaignq"
	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
	"github.com/postwarden/postwarden/templates"
)

type campaignSendArgs struct {
	File   string `json:"file"`
	NoWait bool   `json:"no_wait"`
	// SkipInvalid accepts a run with invalid rows (they are never sent):
	// without it such a run exits 1, so a script notices.
	SkipInvalid bool `json:"skip_invalid,omitempty"`
	// Force sends a re-run whose subject or templates changed since the
	// campaign's earlier run; the CLI also sends despite failed preflight
	// checks with it.
	Force bool `json:"force,omitempty"`
	// Preflighted says the CLI ran the preflight and printed its findings
	// (public_url's among them), so the send does not repeat them.
	Preflighted bool `json:"preflighted,omitempty"`
	// TestTo sends data row TestRow (default 1) to this address only: not
	// counted, not recorded as the campaign.
	TestTo  string `json:"test_to,omitempty"`
	TestRow int    `json:"test_row,omitempty"`
}

// testCampaign is the queue's campaign of test sends: no campaign record,
// so never listed or counted as a campaign.
const testCampaign = "test-to"

// testSendView is what `campaign send --test-to` reports.
type testSendView struct {
	Campaign string      `json:"campaign"`
	Row      int         `json:"row"`
	To       string      `json:"to"`
	Skip     string      `json:"skip,omitempty"`
	State    queue.State `json:"state,omitempty"` // when this process delivered it
	Daemon   bool        `json:"daemon,omitempty"`
}

// sendTest renders one row for the operator's own address and delivers it
// as a message of testCampaign, audited.
func (e *env) sendTest(ctx context.Context, req request, spec campaign.Spec, lang string, args campaignSendArgs, o *out) error {
	row := max(1, args.TestRow)
	msg, skip, err := campaign.Preview(ctx, spec, e.campaignDeps(false, lang), row, args.TestTo)
	if err != nil {
		return maskRowError(err, req.Reveal)
	}
	if err := e.record(req, "campaign.test", "campaign:"+spec.ID, "", map[string]string{"row": fmt.Sprint(row), "to": address.Mask(msg.To)}); err != nil {
		return err
	}
	var local *localDelivery
	if !e.daemon {
		if local, err = e.startLocalDelivery(ctx, testCampaign); err != nil {
			return err
		}
		defer local.close()
	}
	key := fmt.Sprintf("%s:%d", spec.ID, time.Now().UnixNano()) // every test is sent
	if _, err := e.queue.Enqueue([]queue.NewMessage{{Campaign: testCampaign, List: spec.List, Key: key, From: msg.From, To: msg.To, Body: msg.Body, Pool: spec.Pool}}); err != nil {
		return err
	}
	v := testSendView{Campaign: spec.ID, Row: row, To: maskIf(req.Reveal, msg.To), Skip: skip, Daemon: e.daemon}
	if local != nil {
		if err := local.finish(ctx, nil); err != nil {
			return err
		}
		if m, found, err := e.queue.ByKey(testCampaign, key); err == nil && found {
			v.State = m.State
		}
	} else {
		e.queue.Kick()
	}
	return o.Record(v)
}

// invalidRowsError is a send that left invalid rows out, without --skip-invalid.
func invalidRowsError(s campaign.Summary) error {
	if s.Invalid == 0 {
		return nil
	}
	return no("campaign %s: %d of %d rows are invalid and were not sent (listed above); fix them and send again (what was sent is not sent twice), or pass --skip-invalid to accept", s.Campaign, s.Invalid, s.Rows)
}

// sendResult is the record `campaign send` ends with.
type sendResult struct {
	Summary    campaign.Summary    `json:"summary"`
	Delivery   map[queue.State]int `json:"delivery,omitempty"`
	CaptureDir string              `json:"capture_dir,omitempty"`
	Daemon     bool                `json:"handed_to_daemon,omitempty"`
	DKIMKeys   []createdKey        `json:"dkim_keys_created,omitempty"`
	Cluster    *clusterSend        `json:"cluster,omitempty"` // a cluster node: what it published for every node to deliver
}

// loadSpec loads a campaign file and its templates into a campaign.Spec.
// Every problem names the campaign file and line.
func loadSpec(e *env, file string) (campaign.Spec, *configs.Campaign, error) {
	c, err := configs.LoadCampaignToSend(file)
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
		LIAHeadings:      c.LIAHeadings(),
		ConfigHash:       e.cfg.Hash(),
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
	if cfg.OneClickUnsubscribe() {
		return ""
	}
	return fmt.Sprintf("note: public_url %s is not https; RFC 8058 one-click unsubscribe needs https, so mailbox providers will not use it (fine for a local test)", cfg.PublicURL)
}

// links mints the unsubscribe URIs of a message: the one-click https URL
// and, when the inbound listener takes mail for bounce_domain, a mailto URI.
// The URL carries lang, the campaign's language (configs.Campaign.Language),
// so the pages it opens speak the message's language on any node, after any
// restart; the mailto URI opens no page and carries none.
type links struct {
	*unsubscribe.Tokens
	bounceDomain string
	lang         string
}

// UnsubscribeURL satisfies campaign.Links.
func (l links) UnsubscribeURL(address, list, campaign string) string {
	return l.UnsubscribeURLIn(address, list, campaign, l.lang)
}

// UnsubscribeURLIn satisfies confirm.Links: the link of a message written in lang.
func (l links) UnsubscribeURLIn(address, list, campaign, lang string) string {
	return l.URL(unsubscribe.Claim{Address: address, List: list, Campaign: campaign, Language: lang})
}

// UnsubscribeMailto satisfies campaign.MailtoLinks.
func (l links) UnsubscribeMailto(address, list, campaign string) string {
	if l.bounceDomain == "" {
		return ""
	}
	return l.MailtoURI(address, list, campaign, l.bounceDomain)
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
	if w := publicURLWarning(e.cfg); w != "" && !args.Preflighted {
		_ = o.Note("%s", w)
	}
	if args.TestTo != "" {
		return e.sendTest(ctx, req, spec, c.Language, args, o)
	}
	if raw, err := e.queue.GetCampaign(spec.ID); err == nil && raw != nil {
		var prev campaign.Record
		if json.Unmarshal(raw, &prev) == nil {
			if err := campaign.CheckRerun(prev, spec); err != nil {
				if !args.Force {
					return fmt.Errorf("%w; the recipients sent to already keep what they got, the rest would get the new content: pass --force to send it, or use a new campaign id", err)
				}
				_ = o.Note("%v; sending it (--force)", err)
			}
		}
	}
	var total int64
	if fi, err := os.Stat(spec.Recipients); err == nil {
		total = fi.Size()
	}
	spec.RequestedBy = req.Who
	if err := e.recordSend(req, spec, c); err != nil {
		return err
	}
	if err := e.armCampaign(spec.ID, c, o); err != nil {
		return err
	}
	res := sendResult{}
	progress := func(rows int, bytes int64) {
		_ = o.Progress(progress{Rows: rows, Bytes: bytes, Total: total})
	}
	if e.cfg.Cluster != nil { // gated and rendered here, delivered by every node
		summary, cs, err := e.sendShared(ctx, spec, e.campaignDeps(false, c.Language), campaignSettings{Rate: c.Rate, Brakes: c.Brakes.Over(e.cfg.Delivery.Brakes)}, progress)
		if req.Reveal {
			revealInvalidLines(&summary)
		}
		res.Summary, res.Cluster = summary, cs
		if rerr := o.Record(res); rerr != nil {
			return rerr
		}
		if err == nil && !args.SkipInvalid {
			err = invalidRowsError(summary)
		}
		return err
	}
	// Without a daemon, this process delivers, starting while it enqueues.
	var local *localDelivery
	if !e.daemon && !args.NoWait {
		if local, err = e.startLocalDelivery(ctx, spec.ID); err != nil {
			return err
		}
		defer local.close()
		res.DKIMKeys, res.CaptureDir = local.created, local.captureDir
	}

	summary, sendErr := campaign.Send(ctx, spec, e.campaignDeps(local != nil, c.Language), progress)
	if req.Reveal {
		revealInvalidLines(&summary)
	}
	res.Summary = summary
	if local != nil {
		stop := e.reportDelivery(spec.ID, o)
		sendErr = local.finish(ctx, sendErr)
		stop()
		res.Delivery = local.counts
	}
	if e.daemon {
		e.queue.Kick()
		res.Daemon = true
	}
	if err := o.Record(res); err != nil {
		return err
	}
	if sendErr == nil && !args.SkipInvalid {
		sendErr = invalidRowsError(summary)
	}
	return sendErr
}

// recordSend logs and audits the start of a campaign send.
func (e *env) recordSend(req request, spec campaign.Spec, c *configs.Campaign) error {
	e.log.Info().Str("who", req.Who).Str("campaign", spec.ID).Str("file", c.Path).Str("file_sha256", spec.FileHash).Float64("rate", c.Rate).Msg("campaign send")
	return e.record(req, "campaign.send", "campaign:"+spec.ID, "", map[string]string{"file": c.Path, "file_sha256": spec.FileHash,
		"legal_basis": spec.LegalBasis, "lia_sha256": spec.LIAHash, "recipients": spec.Recipients, "config_sha256": spec.ConfigHash})
}

// armCampaign stores the campaign file's rate and brakes, which hold for
// this and later runs, and notes when the campaign is paused.
func (e *env) armCampaign(id string, c *configs.Campaign, o *out) error {
	if c.Rate > 0 || e.queue.CampaignRate(id) > 0 {
		// The file's rate (none: unlimited) holds for this and later runs of the campaign.
		if err := e.queue.SetCampaignRate(id, c.Rate); err != nil {
			return err
		}
	}
	// The file's brakes (what it leaves out: the server's) hold for this and later runs.
	if err := e.brake.Arm(id, c.Brakes.Over(e.cfg.Delivery.Brakes)); err != nil {
		return err
	}
	if (brakeQueue{q: e.queue}).Paused(id) {
		_ = o.Note("campaign %s is paused: its messages wait for `postwarden campaign resume %s`", id, id)
	}
	return nil
}

// maskRowError is err with the recipient masked when it is a row's
// problem (its file and line kept), unless reveal.
func maskRowError(err error, reveal bool) error {
	var re campaign.RowError
	if !reveal && errors.As(err, &re) {
		return errors.New(re.Masked())
	}
	return err
}

// deliveryEvery is how often a local send reports its delivery.
const deliveryEvery = 500 * time.Millisecond

// reportDelivery emits the campaign's delivery progress (counts, rate of
// finished messages, time until nothing is pending) until stop is called.
func (e *env) reportDelivery(id string, o *out) (stop func()) {
	done, finished := make(chan struct{}), make(chan struct{})
	start := time.Now()
	base := -1
	report := func() {
		counts, err := e.queue.CampaignCounts(id)
		if err != nil {
			return
		}
		p := progress{Phase: "deliver", Delivered: counts[queue.StateDelivered], Deferred: counts[queue.StateDeferred],
			Bounced: counts[queue.StateBounced]}
		final := 0
		for st, n := range counts {
			if st.Finished() {
				final += n
			} else {
				p.Pending += n
			}
		}
		if base < 0 {
			base = final
		}
		if secs := time.Since(start).Seconds(); secs > 0 && final > base {
			p.Rate = float64(final-base) / secs
			p.ETA = float64(p.Pending-p.Deferred) / p.Rate // deferred ones wait for their retry
		}
		_ = o.Progress(p)
	}
	go func() {
		defer close(finished)
		t := time.NewTicker(deliveryEvery)
		defer t.Stop()
		report()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				report()
			}
		}
	}()
	return func() { close(done); <-finished }
}

// campaignDeps is what campaign.Send reaches. The campaign's backlog holds
// enqueueing back only while a runner (the daemon's, or this process's:
// delivering) delivers: without one (send --no-wait, no daemon) nothing
// would drain it.
func (e *env) campaignDeps(delivering bool, lang string) campaign.Deps {
	var backlog campaign.Backlog
	if e.daemon || delivering {
		backlog = e.queue
	}
	lk := links{e.tokens, e.cfg.MailtoDomain(), lang}
	return campaign.Deps{
		Suppressions: e.gate(),
		Queue:        campaignq.Adapter{Q: e.queue},
		Links:        lk,
		Mailto:       lk,
		Dictionary:   e.queue,
		Backlog:      backlog,
		Records:      e.queue,
		Now:          time.Now,
		Log:          e.log.With().Str("component", "campaign").Logger(),
	}
}

// revealInvalidLines puts the unmasked invalid rows in the summary's lines.
func revealInvalidLines(summary *campaign.Summary) {
	summary.InvalidLines = summary.InvalidLines[:0]
	for _, re := range summary.InvalidRows {
		summary.InvalidLines = append(summary.InvalidLines, re.Error())
	}
}

// localDelivery is the delivery a `campaign send` without a daemon runs
// itself, while it enqueues and then until what is due is delivered.
type localDelivery struct {
	e          *env
	id         string
	sender     *mta.Sender
	rc         queue.RunnerConfig
	stop       context.CancelFunc
	done       chan error
	created    []createdKey
	captureDir string
	counts     map[queue.State]int
}

// startLocalDelivery starts a runner for campaign id's messages.
func (e *env) startLocalDelivery(ctx context.Context, id string) (*localDelivery, error) {
	if err := e.joinReplica(ctx); err != nil { // a cluster node delivers only on a caught-up replica
		return nil, err
	}
	sender, created, err := e.newSender()
	if err != nil {
		return nil, err
	}
	// On a signal, deliveries in flight get drain_timeout, as in serve.
	rc := queue.RunnerConfig{Workers: e.cfg.Delivery.Workers, Campaign: id, DrainTimeout: e.cfg.Delivery.DrainTimeout, Halt: e.halt}
	runCtx, stop := context.WithCancel(ctx)
	l := &localDelivery{e: e, id: id, sender: sender, rc: rc, stop: stop, done: make(chan error, 1), created: created}
	runner := e.queue.NewRunner(sender, e.deliveryGate(), rc)
	go func() { l.done <- runner.Run(runCtx) }()
	if e.cfg.Delivery.Mode == configs.ModeCapture {
		l.captureDir = e.cfg.Delivery.CaptureDir
	}
	return l, nil
}

// finish stops the runner once enqueueing has ended (with sendErr), then,
// when all went well, delivers what is due, and counts the campaign's
// messages by state.
func (l *localDelivery) finish(ctx context.Context, sendErr error) error {
	l.stop()
	if err := <-l.done; err != nil && !errors.Is(err, context.Canceled) {
		sendErr = errors.Join(sendErr, err)
	}
	if sendErr == nil {
		// Deliver what is due, including what an interrupted earlier run left.
		if err := l.e.queue.NewRunner(l.sender, l.e.deliveryGate(), l.rc).Drain(ctx); err != nil {
			sendErr = fmt.Errorf("deliver campaign %s: %w", l.id, err)
		}
	}
	if counts, err := l.e.queue.CampaignCounts(l.id); err == nil {
		l.counts = counts
	}
	return sendErr
}

// close stops the runner and closes the sender.
func (l *localDelivery) close() {
	l.stop()
	l.sender.Close()
}

type campaignStatusArgs struct {
	ID string `json:"id"`
}

// campaignStatus is what `campaign status` reports: the queue's counts by
// state, the campaign record's summary and the inbound events.
type campaignStatus struct {
	ID string `json:"id"`
	// Cluster is the campaign across the cluster's nodes (a cluster node
	// only): recipients by final outcome, shares by state and node; the
	// other fields are this node's own part.
	Cluster *clusterCampaign    `json:"cluster,omitempty"`
	Record  json.RawMessage     `json:"record,omitempty"`
	Queue   map[queue.State]int `json:"queue"`
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

// campaignPreviewArgs ask for one recipient's rendered message.
type campaignPreviewArgs struct {
	File string `json:"file"`
	Row  int    `json:"row"`            // data row, 1 = the first after the header
	HTML bool   `json:"html,omitempty"` // only the HTML part
}

// previewView is what `campaign preview` prints.
type previewView struct {
	Row     int    `json:"row"`
	Skip    string `json:"skip,omitempty"` // the legal basis would leave the row out, and why
	Message string `json:"message"`        // the message, or its HTML part; addresses masked unless --reveal
}

// opCampaignPreview renders one row of a campaign as Send would, with its
// real unsubscribe link, and sends nothing.
func opCampaignPreview(ctx context.Context, e *env, req request, o *out) error {
	var args campaignPreviewArgs
	if err := decodeArgs(req, &args); err != nil {
		return err
	}
	spec, c, err := loadSpec(e, args.File)
	if err != nil {
		return err
	}
	deps := e.campaignDeps(false, c.Language)
	msg, skip, err := campaign.Preview(ctx, spec, deps, args.Row, "")
	if err != nil {
		return maskRowError(err, req.Reveal)
	}
	body := msg.Body
	if args.HTML {
		if body, err = templates.Part(msg.Body, "text/html"); err != nil {
			return err
		}
	}
	return o.Record(previewView{Row: args.Row, Skip: skip, Message: maskTextIf(req.Reveal, string(body))})
}

// campaignListView is one campaign as `campaign ls` lists it.
type campaignListView struct {
	ID        string    `json:"id"`
	List      string    `json:"list"`
	Started   time.Time `json:"started,omitzero"` // its last run
	State     string    `json:"state"`            // sending, paused or finished (nothing pending)
	Enqueued  int       `json:"enqueued"`
	Delivered int       `json:"delivered"`
	Pending   int       `json:"pending"`
	Bounced   int       `json:"bounced"`
}

// opCampaignList lists the campaigns this node's queue has a record of, by id.
func opCampaignList(ctx context.Context, e *env, req request, o *out) error {
	if err := decodeArgs(req, &struct{}{}); err != nil {
		return err
	}
	ids, err := e.queue.Campaigns()
	if err != nil {
		return err
	}
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		v := campaignListView{ID: id, State: "finished"}
		if raw, err := e.queue.GetCampaign(id); err == nil {
			var r campaign.Record
			if err := json.Unmarshal(raw, &r); err == nil {
				v.List, v.Started = r.List, r.Started
			}
		}
		counts, err := e.queue.CampaignCounts(id)
		if err != nil {
			return err
		}
		for state, n := range counts {
			v.Enqueued += n
			if !state.Finished() {
				v.Pending += n
			}
		}
		v.Delivered, v.Bounced = counts[queue.StateDelivered], counts[queue.StateBounced]
		switch {
		case e.queue.CampaignPaused(id):
			v.State = "paused"
		case v.Pending > 0:
			v.State = "sending"
		}
		if err := o.Record(v); err != nil {
			return err
		}
	}
	return nil
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
	cs, err := e.clusterCampaignStatus(ctx, args.ID)
	if err != nil {
		return err
	}
	if rec == nil && len(counts) == 0 && cs == nil {
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
	st.Cluster = cs
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
