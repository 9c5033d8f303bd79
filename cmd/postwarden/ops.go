package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/mail"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-message/textproto"

	"github.com/postwarden/postwarden/campaign"
	"github.com/postwarden/postwarden/campaign/brakes"
	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/queue/campaignq"
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/gate"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
	"github.com/postwarden/postwarden/templates"
)

// ops is the table of admin operations, by name: every op is here, so
// none depends on the order in which files' init functions run.
var ops = map[string]opSpec{
	"campaign.send":   {fn: opCampaignSend, creates: true},
	"campaign.pause":  {fn: opCampaignPause},
	"campaign.resume": {fn: opCampaignResume},
	"campaign.status": {fn: opCampaignStatus},

	"queue.ls":        {fn: opQueueList},
	"queue.show":      {fn: opQueueShow},
	"queue.retry":     {fn: opQueueAct("retry")},
	"queue.hold":      {fn: opQueueAct("hold")},
	"queue.release":   {fn: opQueueAct("release")},
	"queue.delete":    {fn: opQueueAct("delete")},
	"queue.bounce":    {fn: opQueueAct("bounce")},
	"queue.stats":     {fn: opQueueStats},
	"queue.suspend":   {fn: opQueueSuspend, creates: true},
	"queue.suspended": {fn: opQueueSuspensions},
	"queue.resume":    {fn: opQueueResume},

	"suppress.add":    {fn: opSuppressAdd, creates: true},
	"suppress.remove": {fn: opSuppressRemove},
	"suppress.check":  {fn: opSuppressCheck},
	"suppress.ls":     {fn: opSuppressList},
	"suppress.import": {fn: opSuppressImport, creates: true},

	"subscribers.import": {fn: opSubscribersImport, creates: true},
	"subscribers.ls":     {fn: opSubscribersList},

	"subject.export":     {fn: opSubjectExport},
	"subject.erase":      {fn: opSubjectErase},
	"subject.restrict":   {fn: opSubjectRestrict(true)},
	"subject.unrestrict": {fn: opSubjectRestrict(false)},

	"audit.ls":     {fn: opAuditList},
	"audit.verify": {fn: opAuditVerify},

	"db.prune":    {fn: opDBPrune},
	"db.compact":  {fn: opDBCompact},
	"dkim.keygen": {fn: opDKIMKeygen, creates: true},
}

// decodeArgs reads an op's arguments, refusing unknown fields.
func decodeArgs(req request, v any) error {
	if len(req.Args) == 0 {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(req.Args)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad arguments: %w", err)
	}
	return nil
}

// maskIf masks an address unless the caller asked to reveal it.
func maskIf(reveal bool, addr string) string {
	if reveal || addr == "" {
		return addr
	}
	return address.Mask(addr)
}

// maskTextIf masks every address in free text (SMTP replies quote them, in
// any case) unless the caller asked to reveal them.
func maskTextIf(reveal bool, text string) string {
	if reveal {
		return text
	}
	return address.MaskText(text)
}

// --- campaign ---

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

// --- queue ---

// msgView is a queue message as the CLI shows it.
type msgView struct {
	ID          string          `json:"id"`
	Campaign    string          `json:"campaign"`
	List        string          `json:"list,omitempty"`
	Rcpt        string          `json:"rcpt"`
	Domain      string          `json:"domain"`
	State       queue.State     `json:"state"`
	Attempts    int             `json:"attempts"`
	Created     time.Time       `json:"created"`
	NextAttempt *time.Time      `json:"next_attempt,omitempty"`
	LastReply   string          `json:"last_reply,omitempty"`
	Reason      string          `json:"reason,omitempty"`
	From        string          `json:"from,omitempty"`
	History     []queue.Attempt `json:"history,omitempty"`
	Headers     []headerView    `json:"headers,omitempty"`
}

// headerView is one header field of a stored message.
type headerView struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

func viewOf(m queue.Message, reveal, full bool) msgView {
	v := msgView{
		ID: m.ID, Campaign: m.Campaign, List: m.List, Rcpt: maskIf(reveal, m.To), Domain: m.Domain,
		State: m.State, Attempts: m.Attempts, Created: m.Created,
		LastReply: maskTextIf(reveal, m.LastReply), Reason: maskTextIf(reveal, m.Reason),
	}
	if !m.NextAttempt.IsZero() && (m.State == queue.StateReady || m.State == queue.StateDeferred || m.State == queue.StateActive) {
		t := m.NextAttempt
		v.NextAttempt = &t
	}
	if full {
		v.From = m.From
		for _, a := range m.History {
			a.Reply = maskTextIf(reveal, a.Reply)
			v.History = append(v.History, a)
		}
	}
	return v
}

type queueListArgs struct {
	Campaign  string `json:"campaign,omitempty"`
	State     string `json:"state,omitempty"`
	Domain    string `json:"domain,omitempty"`
	OlderThan string `json:"older_than,omitempty"`
	Limit     int    `json:"limit,omitempty"`
}

// validStates are the states `queue ls --state` accepts.
var validStates = []queue.State{queue.StateReady, queue.StateDeferred, queue.StateHeld, queue.StateActive,
	queue.StateDelivered, queue.StateBounced, queue.StateExpired, queue.StateCancelled}

func (a queueListArgs) filter() (queue.Filter, error) {
	f := queue.Filter{Campaign: a.Campaign, Domain: a.Domain, Limit: a.Limit}
	if a.State != "" {
		ok := false
		for _, s := range validStates {
			ok = ok || string(s) == a.State
		}
		if !ok {
			return f, fmt.Errorf("--state %q: want one of %v", a.State, validStates)
		}
		f.State = queue.State(a.State)
	}
	if a.OlderThan != "" {
		d, err := configs.ParseDuration(a.OlderThan)
		if err != nil {
			return f, fmt.Errorf("--older-than: %w", err)
		}
		f.OlderThan = d
	}
	return f, nil
}

func opQueueList(ctx context.Context, e *env, req request, o *out) error {
	var args queueListArgs
	if err := decodeArgs(req, &args); err != nil {
		return err
	}
	f, err := args.filter()
	if err != nil {
		return err
	}
	return e.queue.List(f, func(m queue.Message) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		return o.Record(viewOf(m, req.Reveal, false))
	})
}

type idArgs struct {
	IDs    []string `json:"ids,omitempty"`
	All    bool     `json:"all,omitempty"`
	Reason string   `json:"reason,omitempty"`
	queueListArgs
}

func opQueueShow(ctx context.Context, e *env, req request, o *out) error {
	var args idArgs
	if err := decodeArgs(req, &args); err != nil {
		return err
	}
	if len(args.IDs) == 0 {
		return errors.New("queue show: an ID is required")
	}
	for _, id := range args.IDs {
		m, err := e.queue.Get(id)
		if errors.Is(err, queue.ErrNotFound) {
			return no("queue message %s not found", id)
		}
		if err != nil {
			return err
		}
		v := viewOf(m, req.Reveal, true)
		if body, err := e.queue.Body(id); err == nil { // finished messages keep no body
			v.Headers = headersOf(body, m.To, req.Reveal)
		}
		if err := o.Record(v); err != nil {
			return err
		}
	}
	return nil
}

// maskedHeaders carry recipient addresses: masked unless --reveal.
var maskedHeaders = map[string]bool{"To": true, "Cc": true}

// headersOf parses the header of a stored message (go-message textproto), in order.
func headersOf(body []byte, rcpt string, reveal bool) []headerView {
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(body)))
	if err != nil {
		return []headerView{{Name: "X-Postwarden-Error", Value: "unparsable header: " + err.Error()}}
	}
	var out []headerView
	for f := h.Fields(); f.Next(); {
		v := f.Value()
		if dec, err := (&mime.WordDecoder{}).DecodeHeader(v); err == nil {
			v = dec
		}
		if !reveal {
			if maskedHeaders[f.Key()] {
				v = maskAddresses(v)
			} else {
				v = address.MaskText(v)
			}
		}
		out = append(out, headerView{Name: f.Key(), Value: v})
	}
	return out
}

// maskAddresses masks every address in an address-list header value.
func maskAddresses(v string) string {
	list, err := mail.ParseAddressList(v)
	if err != nil {
		return "***"
	}
	parts := make([]string, len(list))
	for i, a := range list {
		parts[i] = address.Mask(a.Address)
		if a.Name != "" {
			parts[i] = fmt.Sprintf("%q <%s>", a.Name, parts[i])
		}
	}
	return strings.Join(parts, ", ")
}

// actResult reports what a queue action changed.
type actResult struct {
	Action  string   `json:"action"`
	Changed int      `json:"changed"`
	Missing []string `json:"missing,omitempty"`
}

// actStates are the states each action can change: a bulk selection reads
// only those (state index), not every message ever queued.
var actStates = map[string][]queue.State{
	"retry":   {queue.StateReady, queue.StateDeferred, queue.StateHeld},
	"hold":    {queue.StateReady, queue.StateDeferred},
	"release": {queue.StateHeld},
	"delete":  {queue.StateReady, queue.StateDeferred, queue.StateHeld},
	"bounce":  {queue.StateReady, queue.StateDeferred, queue.StateHeld},
}

// selectIDs returns the ids of a bulk selection for action.
func selectIDs(q *queue.Store, action string, args idArgs) ([]string, error) {
	f, err := args.filter()
	if err != nil {
		return nil, err
	}
	if f.State != "" {
		return q.AllIDs(f)
	}
	var ids []string
	for _, st := range actStates[action] {
		f.State = st
		more, err := q.AllIDs(f)
		if err != nil {
			return nil, err
		}
		ids = append(ids, more...)
	}
	return ids, nil
}

func opQueueAct(action string) opFunc {
	return func(ctx context.Context, e *env, req request, o *out) error {
		var args idArgs
		if err := decodeArgs(req, &args); err != nil {
			return err
		}
		if (action == "delete" || action == "bounce") && strings.TrimSpace(args.Reason) == "" {
			return fmt.Errorf("queue %s: --reason is required", action)
		}
		// --domain or --campaign select in bulk, like ALL.
		bulk := args.All || args.Domain != "" || args.Campaign != ""
		if bulk && len(args.IDs) > 0 {
			return fmt.Errorf("queue %s: give message IDs or a selection (ALL, --domain, --campaign), not both", action)
		}
		ids := args.IDs
		if bulk {
			var err error
			if ids, err = selectIDs(e.queue, action, args); err != nil {
				return err
			}
		}
		if len(ids) == 0 && !bulk {
			return fmt.Errorf("queue %s: give message IDs, ALL, --domain or --campaign", action)
		}
		// Write-ahead: the request is on the audit log before any message changes.
		details := map[string]string{"campaign": args.Campaign, "domain": args.Domain, "state": args.State, "bulk": fmt.Sprint(bulk)}
		if len(ids) <= maxAuditIDs {
			details["ids"] = strings.Join(ids, " ")
		}
		if aerr := e.record(req, "queue."+action, fmt.Sprintf("messages:%d", len(ids)), args.Reason, details); aerr != nil {
			return aerr
		}
		var n int
		var err error
		switch action {
		case "retry":
			n, err = e.queue.Retry(ids)
		case "hold":
			n, err = e.queue.Hold(ids)
		case "release":
			n, err = e.queue.Release(ids)
		case "delete":
			n, err = e.queue.Delete(ids, args.Reason)
		case "bounce":
			n, err = e.queue.Bounce(ids, args.Reason)
		}
		e.log.Info().Str("who", req.Who).Str("action", action).Bool("bulk", bulk).Str("campaign", args.Campaign).
			Str("domain", args.Domain).Str("state", args.State).Int("ids", len(ids)).Int("changed", n).
			Str("reason", args.Reason).Msg("queue admin action")
		res := actResult{Action: action, Changed: n}
		if errors.Is(err, queue.ErrNotFound) {
			res.Missing = missingIDs(e.queue, ids)
			if rerr := o.Record(res); rerr != nil {
				return rerr
			}
			return no("%v", err)
		}
		if err != nil {
			return err
		}
		if action == "retry" || action == "release" {
			e.queue.Kick()
		}
		return o.Record(res)
	}
}

// maxAuditIDs is how many message ids a queue action's audit entry lists;
// a larger selection is recorded by its selectors and count.
const maxAuditIDs = 1000

func missingIDs(q *queue.Store, ids []string) []string {
	var miss []string
	for _, id := range ids {
		if _, err := q.Get(id); errors.Is(err, queue.ErrNotFound) {
			miss = append(miss, id)
		}
	}
	return miss
}

// statsView is `queue stats`.
type statsView struct {
	Total        int                            `json:"total"`
	ByState      map[queue.State]int            `json:"by_state"`
	ByDomain     map[string]int                 `json:"by_domain"`
	DomainStates map[string]map[queue.State]int `json:"domain_states,omitempty"`
	Oldest       *time.Time                     `json:"oldest,omitempty"`
	// Rates is delivered messages per minute over the last 1m, 5m and 15m.
	Rates       map[string]float64 `json:"delivered_per_minute"`
	Recent      map[string]int     `json:"last_15m"`
	Suspensions []queue.Suspension `json:"suspensions,omitempty"`
}

func opQueueStats(ctx context.Context, e *env, req request, o *out) error {
	st, err := e.queue.Stats()
	if err != nil {
		return err
	}
	sus, err := e.queue.Suspensions()
	if err != nil {
		return err
	}
	v := statsView{Total: st.Total, ByState: st.ByState, ByDomain: st.ByDomain, DomainStates: st.DomainStates,
		Rates: st.Rates, Recent: st.Recent, Suspensions: sus}
	if !st.Oldest.IsZero() {
		v.Oldest = &st.Oldest
	}
	return o.Record(v)
}

type suspendArgs struct {
	Domain   string `json:"domain,omitempty"`
	Campaign string `json:"campaign,omitempty"`
	Duration string `json:"duration,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

func (a suspendArgs) selector() (queue.Selector, error) {
	if a.Domain == "" && a.Campaign == "" {
		return queue.Selector{}, errors.New("--domain or --campaign is required")
	}
	return queue.Selector{Domain: a.Domain, Campaign: a.Campaign}.Normalize()
}

func opQueueSuspend(ctx context.Context, e *env, req request, o *out) error {
	var a suspendArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	sel, err := a.selector()
	if err != nil {
		return fmt.Errorf("queue suspend: %w", err)
	}
	if strings.TrimSpace(a.Reason) == "" {
		return errors.New("queue suspend: --reason is required")
	}
	d, err := configs.ParseDuration(a.Duration)
	if err != nil || d <= 0 {
		return fmt.Errorf("queue suspend: --duration %q: want a positive duration such as 30m, 2h, 1d", a.Duration)
	}
	until := time.Now().Add(d)
	if err := e.record(req, "queue.suspend", sel.String(), a.Reason, map[string]string{"duration": a.Duration, "until": until.UTC().Format(time.RFC3339)}); err != nil {
		return err
	}
	if err := e.queue.Suspend(sel, until, a.Reason); err != nil {
		return err
	}
	e.log.Info().Str("who", req.Who).Str("action", "suspend").Str("domain", a.Domain).Str("campaign", a.Campaign).
		Dur("duration", d).Str("reason", a.Reason).Msg("queue admin action")
	sus, err := e.queue.Suspensions()
	if err != nil {
		return err
	}
	if len(sus) == 0 {
		return nil
	}
	newest := sus[0]
	for _, sp := range sus[1:] {
		if sp.Created.After(newest.Created) {
			newest = sp
		}
	}
	return o.Record(newest)
}

func opQueueSuspensions(ctx context.Context, e *env, req request, o *out) error {
	sus, err := e.queue.Suspensions()
	if err != nil {
		return err
	}
	for _, sp := range sus {
		if err := o.Record(sp); err != nil {
			return err
		}
	}
	return nil
}

func opQueueResume(ctx context.Context, e *env, req request, o *out) error {
	var a suspendArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	sel, err := a.selector()
	if err != nil {
		return fmt.Errorf("queue resume: %w", err)
	}
	sus, err := e.queue.Suspensions()
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(sus, func(sp queue.Suspension) bool { return sp.Selector == sel }) {
		return no("%s was not suspended", sel)
	}
	if err := e.record(req, "queue.resume", sel.String(), a.Reason, nil); err != nil {
		return err
	}
	ok, err := e.queue.Resume(sel)
	if err != nil {
		return err
	}
	e.log.Info().Str("who", req.Who).Str("action", "resume").Str("domain", a.Domain).Str("campaign", a.Campaign).
		Bool("was_suspended", ok).Msg("queue admin action")
	if !ok {
		return no("%s was not suspended", sel)
	}
	return o.Record(map[string]any{"resumed": sel.String()})
}

// --- suppression ---

type suppressArgs struct {
	Target string `json:"target"`
	List   string `json:"list,omitempty"`
	Reason string `json:"reason,omitempty"`
	Note   string `json:"note,omitempty"`
	Path   string `json:"path,omitempty"`
}

// entryView is a suppression entry as the CLI shows it.
type entryView struct {
	Target string    `json:"target"`
	List   string    `json:"list"`
	Reason string    `json:"reason"`
	Source string    `json:"source,omitempty"`
	Note   string    `json:"note,omitempty"`
	Time   time.Time `json:"time"`
}

func entryOf(en suppression.Entry, reveal bool) entryView {
	list := en.List
	if list == "" {
		list = "*"
	}
	return entryView{Target: maskIf(reveal, en.Target), List: list, Reason: string(en.Reason), Source: en.Source, Note: en.Note, Time: en.Time}
}

func opSuppressAdd(ctx context.Context, e *env, req request, o *out) error {
	var a suppressArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	en := suppression.Entry{Target: a.Target, List: a.List, Reason: suppression.Reason(a.Reason), Source: "cli:" + req.Who, Note: a.Note}
	if _, err := suppression.NormalizeTarget(a.Target); err != nil {
		return fmt.Errorf("add suppression: %w", err)
	}
	// Write-ahead: audited before it is written.
	if err := e.record(req, "suppress.add", e.targetRef(a.Target), a.Reason, map[string]string{"list": listName(a.List)}); err != nil {
		return err
	}
	if err := e.supp.Add(en); err != nil {
		return err
	}
	e.log.Info().Str("who", req.Who).Str("target", address.Mask(a.Target)).Str("list", a.List).Str("reason", a.Reason).Msg("suppression added")
	got, _, err := e.supp.Lookup(a.Target, a.List)
	if err != nil {
		return err
	}
	return o.Record(entryOf(got, req.Reveal))
}

func opSuppressRemove(ctx context.Context, e *env, req request, o *out) error {
	var a suppressArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	ok, err := e.supp.Remove(a.Target, a.List)
	if err != nil {
		return err
	}
	e.log.Info().Str("who", req.Who).Str("target", address.Mask(a.Target)).Str("list", a.List).Bool("removed", ok).Msg("suppression removed")
	if ok {
		if err := e.record(req, "suppress.remove", e.targetRef(a.Target), a.Reason, map[string]string{"list": listName(a.List)}); err != nil {
			return err
		}
	}
	if !ok {
		return no("%s is not suppressed on %s", maskIf(req.Reveal, a.Target), listName(a.List))
	}
	return o.Record(map[string]any{"removed": maskIf(req.Reveal, a.Target), "list": listName(a.List)})
}

func listName(l string) string {
	if l == "" {
		return "all lists"
	}
	return "list " + l
}

func opSuppressCheck(ctx context.Context, e *env, req request, o *out) error {
	var a suppressArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	// Answered as a campaign on the list would be (the gate), so a person
	// who came back by double opt-in after an erasure is not suppressed on
	// the list they re-joined.
	d, err := e.gate().Decide(a.Target, a.List, gate.Campaign, gate.Unchecked)
	if err != nil {
		return err
	}
	switch {
	case d.Mailable:
		return no("%s is not suppressed", maskIf(req.Reveal, a.Target))
	case d.Entry != nil:
		return o.Record(entryOf(*d.Entry, req.Reveal))
	}
	// The consent store stops it with no entry here: an unsubscribe or an
	// erasure recorded there.
	return o.Record(entryOf(suppression.Entry{Target: a.Target, List: a.List, Reason: suppression.Reason(d.Reason), Source: "consent", Time: d.Consent.Since}, req.Reveal))
}

func opSuppressList(ctx context.Context, e *env, req request, o *out) error {
	var a suppressArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	return e.supp.List(func(en suppression.Entry) error {
		if a.List != "" && en.List != a.List {
			return nil
		}
		return o.Record(entryOf(en, req.Reveal))
	})
}

func opSuppressImport(ctx context.Context, e *env, req request, o *out) error {
	var a suppressArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	if e.audit == nil {
		return errors.New("suppress import: audit log is not open")
	}
	res, err := e.supp.ImportFile(a.Path, suppression.Entry{List: a.List, Reason: suppression.Reason(a.Reason), Source: "import:" + filepath.Base(a.Path)},
		importAuditor{e.audit, req.Who, a.Reason})
	if err != nil {
		return fmt.Errorf("suppress import: %w", err)
	}
	e.log.Info().Str("who", req.Who).Str("file", a.Path).Str("run", res.Run).Int("rows", res.Rows).Int("added", res.Added).
		Int("batches", res.Batches).Int("resumed_batches", res.Resumed).Int("errors", len(res.Errors)).Msg("suppressions imported")
	var msgs []string
	for _, err := range res.Errors {
		msgs = append(msgs, err.Error())
	}
	rec := map[string]any{"file": a.Path, "rows": res.Rows, "added": res.Added, "errors": msgs, "run": res.Run}
	if res.Resumed > 0 {
		rec["resumed_batches"] = res.Resumed
	}
	if err := o.Record(rec); err != nil {
		return err
	}
	if len(res.Errors) > 0 {
		return fmt.Errorf("suppress import: %d invalid rows in %s", len(res.Errors), a.Path)
	}
	return nil
}

// importAuditor writes a suppression import's steps to the audit log before
// the store commits them: one suppress.import.batch entry per batch (file
// digest, run, batch number, line range) and a suppress.import summary.
// Each is appended once per run and step (AppendOnce), so a re-run that
// resumes a killed import does not audit a batch twice.
type importAuditor struct {
	log    *audit.Log
	who    string
	reason string
}

// AuditImport implements suppression.ImportAuditor.
func (a importAuditor) AuditImport(st suppression.ImportStep) error {
	en := audit.Entry{Who: a.who, Action: "suppress.import.batch", Target: "file:" + st.File, Reason: a.reason,
		Details: map[string]string{"file_sha256": st.FileSHA256, "run": st.Run}}
	if st.Final {
		en.Action = "suppress.import"
		en.Details["rows"] = fmt.Sprint(st.Result.Rows)
		en.Details["added"] = fmt.Sprint(st.Result.Added)
		en.Details["errors"] = fmt.Sprint(len(st.Result.Errors))
		en.Details["batches"] = fmt.Sprint(st.Result.Batches)
		en.Details["resumed_batches"] = fmt.Sprint(st.Result.Resumed)
	} else {
		en.Details["batch"] = fmt.Sprint(st.Batch)
		en.Details["lines"] = fmt.Sprintf("%d-%d", st.FirstLine, st.LastLine)
		en.Details["entries"] = fmt.Sprint(st.Entries)
	}
	if _, _, err := a.log.AppendOnce("suppress.import/"+st.Key, en); err != nil {
		return fmt.Errorf("audit %s: %w", en.Action, err)
	}
	return nil
}
