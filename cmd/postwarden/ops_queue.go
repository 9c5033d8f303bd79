package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"mime"
	"net/mail"
	"strings"
	"time"

	"github.com/emersion/go-message/textproto"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/mta"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression/address"
)

// msgView is a queue message as the CLI shows it.
type msgView struct {
	ID          string      `json:"id"`
	Campaign    string      `json:"campaign"`
	List        string      `json:"list,omitempty"`
	Rcpt        string      `json:"rcpt"`
	Domain      string      `json:"domain"`
	State       queue.State `json:"state"`
	Attempts    int         `json:"attempts"`
	Created     time.Time   `json:"created"`
	NextAttempt *time.Time  `json:"next_attempt,omitempty"`
	Pool        string      `json:"pool,omitempty"`     // sending pool
	Source      string      `json:"source,omitempty"`   // egress source of the last attempt that reported one
	Provider    string      `json:"provider,omitempty"` // the recipient's provider, once an attempt found it
	LastReply   string      `json:"last_reply,omitempty"`
	Reason      string      `json:"reason,omitempty"`
	From        string      `json:"from,omitempty"`
	// EnvelopeFrom is the MAIL FROM the message leaves with (its VERP
	// address when bounce_domain is set): what a remote's logs show.
	EnvelopeFrom string        `json:"envelope_from,omitempty"`
	History      []attemptView `json:"history,omitempty"`
	Headers      []headerView  `json:"headers,omitempty"`
}

// attemptView is one event of a message's history as `queue show` prints
// it: the remote ("host[ip]:port"), the full reply and, for a delivery, the
// id the remote gave the message in its 250 reply.
type attemptView struct {
	queue.Attempt
	RemoteQueueID string `json:"remote_queue_id,omitempty"`
}

// headerView is one header field of a stored message.
type headerView struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

func viewOf(m queue.Message, reveal, full bool) msgView {
	v := msgView{
		ID: m.ID, Campaign: m.Campaign, List: m.List, Rcpt: maskIf(reveal, m.To), Domain: m.Domain,
		State: m.State, Attempts: m.Attempts, Created: m.Created, Pool: m.Pool, Source: m.Source, Provider: m.Provider,
		LastReply: maskTextIf(reveal, m.LastReply), Reason: maskTextIf(reveal, m.Reason),
	}
	if !m.NextAttempt.IsZero() && (m.State == queue.StateReady || m.State == queue.StateDeferred || m.State == queue.StateActive) {
		t := m.NextAttempt
		v.NextAttempt = &t
	}
	if full {
		v.From = m.From
		for _, a := range m.History {
			av := attemptView{Attempt: a}
			if a.Outcome == string(queue.StateDelivered) {
				av.RemoteQueueID = mta.RemoteQueueID(a.Reply)
			}
			av.Reply = maskTextIf(reveal, a.Reply)
			v.History = append(v.History, av)
		}
	}
	return v
}

type queueListArgs struct {
	Campaign  string `json:"campaign,omitempty"`
	State     string `json:"state,omitempty"`
	Domain    string `json:"domain,omitempty"`
	Provider  string `json:"provider,omitempty"`
	Source    string `json:"source,omitempty"`
	OlderThan string `json:"older_than,omitempty"`
	Limit     int    `json:"limit,omitempty"`
	Rcpt      string `json:"rcpt,omitempty"`
	All       bool   `json:"all,omitempty"` // finished records too (ls lists what is queued, like mailq)
}

// validStates are the states `queue ls --state` accepts.
var validStates = []queue.State{queue.StateReady, queue.StateDeferred, queue.StateHeld, queue.StateActive,
	queue.StateDelivered, queue.StateBounced, queue.StateExpired, queue.StateCancelled}

func (a queueListArgs) filter() (queue.Filter, error) {
	f := queue.Filter{Campaign: a.Campaign, Domain: a.Domain, Limit: a.Limit,
		Provider: strings.TrimSpace(a.Provider), Source: strings.TrimSpace(a.Source), Rcpt: strings.TrimSpace(a.Rcpt)}
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
	f.Pending = args.State == "" && !args.All
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

// eachMessage calls fn with each message the request's IDs name, in order;
// an unknown id ends it with a "not found" answer (exit 1).
func eachMessage(e *env, req request, verb string, fn func(m queue.Message) error) error {
	var args idArgs
	if err := decodeArgs(req, &args); err != nil {
		return err
	}
	if len(args.IDs) == 0 {
		return fmt.Errorf("queue %s: an ID is required", verb)
	}
	for _, id := range args.IDs {
		m, err := e.queue.Get(id)
		if errors.Is(err, queue.ErrNotFound) {
			return no("queue message %s not found", id)
		}
		if err != nil {
			return err
		}
		if err := fn(m); err != nil {
			return err
		}
	}
	return nil
}

func opQueueShow(ctx context.Context, e *env, req request, o *out) error {
	return eachMessage(e, req, "show", func(m queue.Message) error {
		v := viewOf(m, req.Reveal, true)
		v.EnvelopeFrom = e.envelopeSender(m.ID, m.From)
		if body, err := e.queue.Body(m.ID); err == nil { // finished messages keep no body
			v.Headers = headersOf(body, m.To, req.Reveal)
		}
		return o.Record(v)
	})
}

// catView is a stored message as `queue cat` prints it.
type catView struct {
	ID      string `json:"id"`
	Message string `json:"message"`          // the stored bytes with --reveal; else the header, masked
	Hidden  bool   `json:"hidden,omitempty"` // the body was left out (no --reveal)
}

// opQueueCat prints stored messages, like postcat -q: the whole message
// with --reveal (audited by runOp as every reveal is), else only its
// header with the addresses masked; a body is personal data.
func opQueueCat(ctx context.Context, e *env, req request, o *out) error {
	return eachMessage(e, req, "cat", func(m queue.Message) error {
		body, err := e.queue.Body(m.ID)
		if err != nil {
			if m.State.Finished() {
				return no("queue message %s is %s: its body is not kept once a message is finished", m.ID, m.State)
			}
			return fmt.Errorf("queue cat %s: %w", m.ID, err)
		}
		v := catView{ID: m.ID, Message: string(body)}
		if !req.Reveal {
			var b strings.Builder
			for _, h := range headersOf(body, m.To, false) {
				fmt.Fprintf(&b, "%s: %s\r\n", h.Name, h.Value)
			}
			v.Message, v.Hidden = b.String(), true
		}
		return o.Record(v)
	})
}

// maskedHeaders carry recipient addresses: masked unless --reveal.
var maskedHeaders = map[string]bool{"To": true, "Cc": true}

// plainHeaders name no recipient: the operator's own From and the message
// ids are shown as they are (masking applies to recipients' addresses).
var plainHeaders = map[string]bool{"From": true, "Sender": true, "Reply-To": true, "Message-Id": true,
	"In-Reply-To": true, "References": true, "List-Id": true, "Feedback-Id": true}

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
		if !reveal && !plainHeaders[f.Key()] {
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
	for _, st := range queue.ActionStates(action) {
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
	// ByProvider and BySource count pending messages by the provider and
	// the egress source their last attempt reported, as ByDomain does by
	// domain; "" holds those with none yet. *States split them by state.
	ByProvider     map[string]int                 `json:"by_provider"`
	ProviderStates map[string]map[queue.State]int `json:"provider_states,omitempty"`
	BySource       map[string]int                 `json:"by_source"`
	SourceStates   map[string]map[queue.State]int `json:"source_states,omitempty"`
	Oldest         *time.Time                     `json:"oldest,omitempty"`
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
		ByProvider: st.ByProvider, ProviderStates: st.ProviderStates, BySource: st.BySource, SourceStates: st.SourceStates,
		Rates: st.Rates, Recent: st.Recent, Suspensions: sus}
	if !st.Oldest.IsZero() {
		v.Oldest = &st.Oldest
	}
	return o.Record(v)
}
