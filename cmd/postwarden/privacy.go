package main

// Data subject rights (GDPR Art. 15, 17, 18, 20), the audit trail, and
// retention. Every op here asks for --reason and writes an audit entry
// before it reports success; audit entries name a person by the keyed
// index of their address, never the address itself, so an erasure leaves
// nothing readable behind.

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/mta"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/gate"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

// record appends an audit entry for what req did; the action it records
// counts as done only if this succeeds.
func (e *env) record(req request, action, target, reason string, details map[string]string) error {
	if e.audit == nil {
		return errors.New("audit log is not open")
	}
	_, err := e.audit.Append(audit.Entry{Who: req.Who, Action: action, Target: target, Reason: reason, Details: details})
	if err != nil {
		return fmt.Errorf("audit %s: %w", action, err)
	}
	return nil
}

// subjectRef names a person in the audit log: the keyed index of their
// address (the same index the tombstone keeps), never the address.
func (e *env) subjectRef(addr string) (string, error) {
	a, err := address.Parse(addr)
	if err != nil {
		return "", err
	}
	return "subject:" + e.box.IndexHex(a.Key()), nil
}

// targetRef names a suppression target in the audit log: a domain as it
// is (a company, not a person), an address by its index.
func (e *env) targetRef(target string) string {
	if strings.HasPrefix(target, "@") {
		return target
	}
	if ref, err := e.subjectRef(target); err == nil {
		return ref
	}
	return "invalid"
}

type subjectArgs struct {
	Address string `json:"address"`
	Reason  string `json:"reason"`
	Format  string `json:"format,omitempty"`
}

func (a subjectArgs) check(verb string) error {
	if strings.TrimSpace(a.Reason) == "" {
		return fmt.Errorf("subject %s: --reason is required", verb)
	}
	if _, err := address.Parse(a.Address); err != nil {
		return fmt.Errorf("subject %s: %w", verb, err)
	}
	return nil
}

// subjectExport is everything held about one person (Art. 15 and 20).
type subjectExport struct {
	Subject     string                    `json:"subject"`
	GeneratedAt time.Time                 `json:"generated_at"`
	Subscriber  []subscribers.ListHistory `json:"subscriber"`
	Suppression []suppression.Entry       `json:"suppression"`
	Messages    []exportedMessage         `json:"messages"`
}

// exportedMessage is one queued or finished message as the person sees it.
type exportedMessage struct {
	ID       string          `json:"id"`
	Campaign string          `json:"campaign"`
	List     string          `json:"list,omitempty"`
	State    queue.State     `json:"state"`
	Created  time.Time       `json:"created"`
	Updated  time.Time       `json:"updated"`
	Reply    string          `json:"last_reply,omitempty"`
	Reason   string          `json:"reason,omitempty"`
	History  []queue.Attempt `json:"history,omitempty"`
}

func opSubjectExport(ctx context.Context, e *env, req request, o *out) error {
	var a subjectArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	if err := a.check("export"); err != nil {
		return err
	}
	if a.Format == "" {
		a.Format = "json"
	}
	if a.Format != "json" && a.Format != "csv" {
		return fmt.Errorf("subject export: --format %q: want json or csv", a.Format)
	}
	ref, err := e.subjectRef(a.Address)
	if err != nil {
		return err
	}
	x := subjectExport{Subject: a.Address, GeneratedAt: time.Now().UTC()}
	if x.Subscriber, err = e.subs.History(a.Address); err != nil && !errors.Is(err, subscribers.ErrNotFound) {
		return fmt.Errorf("subject export: subscribers: %w", err)
	}
	if x.Suppression, err = e.supp.EntriesFor(a.Address); err != nil {
		return fmt.Errorf("subject export: suppression: %w", err)
	}
	msgs, err := e.queue.MessagesFor(a.Address)
	if err != nil {
		return fmt.Errorf("subject export: queue: %w", err)
	}
	for _, m := range msgs {
		x.Messages = append(x.Messages, exportedMessage{ID: m.ID, Campaign: m.Campaign, List: m.List, State: m.State,
			Created: m.Created, Updated: m.Updated, Reply: m.LastReply, Reason: m.Reason, History: m.History})
	}
	if err := e.record(req, "subject.export", ref, a.Reason, map[string]string{"format": a.Format,
		"messages": fmt.Sprint(len(x.Messages)), "suppression": fmt.Sprint(len(x.Suppression))}); err != nil {
		return err
	}
	if a.Format == "csv" {
		return o.Record(map[string]string{"csv": exportCSV(x)})
	}
	return o.Record(x)
}

// exportCSV flattens an export into rows of section, key, time, detail.
func exportCSV(x subjectExport) string {
	var sb strings.Builder
	w := csv.NewWriter(&sb)
	_ = w.Write([]string{"section", "item", "time", "detail"})
	for _, lh := range x.Subscriber {
		for _, ev := range lh.Events {
			_ = w.Write([]string{"consent", lh.List + ":" + ev.Kind, ev.Time.Format(time.RFC3339), strings.TrimSpace(ev.Source + " " + ev.IP + " " + ev.ConsentText)})
		}
	}
	for _, en := range x.Suppression {
		list := en.List
		if list == "" {
			list = "*"
		}
		_ = w.Write([]string{"suppression", list + ":" + string(en.Reason), en.Time.Format(time.RFC3339), en.Source})
	}
	for _, m := range x.Messages {
		_ = w.Write([]string{"message", m.Campaign + ":" + m.ID, m.Created.Format(time.RFC3339), string(m.State) + " " + m.Reply})
	}
	w.Flush()
	return sb.String()
}

// eraseResult is what `subject erase` reports.
type eraseResult struct {
	Subject      string                     `json:"subject"`
	Tombstone    string                     `json:"tombstone"`
	Consents     []subscribers.ConsentDates `json:"consent_dates,omitempty"`
	Cancelled    int                        `json:"messages_cancelled"`
	Scrubbed     int                        `json:"messages_scrubbed"`
	CaptureFiles int                        `json:"capture_files_removed"`
}

func opSubjectErase(ctx context.Context, e *env, req request, o *out) error {
	var a subjectArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	if err := a.check("erase"); err != nil {
		return err
	}
	ref, err := e.subjectRef(a.Address)
	if err != nil {
		return err
	}
	requestRef := fmt.Sprintf("erase-%s", time.Now().UTC().Format("20060102T150405Z"))
	// Audit first: the entry names the index and the reason, never the address.
	if err := e.record(req, "subject.erase", ref, a.Reason, map[string]string{"request": requestRef}); err != nil {
		return err
	}
	tomb, err := e.subs.Erase(a.Address, requestRef)
	if err != nil {
		return fmt.Errorf("subject erase: subscribers: %w", err)
	}
	consents := make([]suppression.ConsentDates, len(tomb.Consents))
	for i, c := range tomb.Consents {
		consents[i] = suppression.ConsentDates{List: c.List, Subscribed: c.Subscribed, Confirmed: c.Confirmed, Source: c.Source}
	}
	if _, err := e.supp.Erase(a.Address, requestRef, consents); err != nil {
		return fmt.Errorf("subject erase: suppression: %w", err)
	}
	er, err := e.queue.EraseRecipient(a.Address, a.Reason)
	if err != nil {
		return fmt.Errorf("subject erase: queue: %w", err)
	}
	res := eraseResult{Subject: address.Mask(a.Address), Tombstone: tomb.Index, Consents: tomb.Consents, Cancelled: er.Cancelled, Scrubbed: er.Scrubbed}
	outbox := mta.NewOutbox(e.cfg.Delivery.CaptureDir)
	for _, id := range er.IDs {
		n, err := outbox.Remove(id)
		if err != nil {
			return fmt.Errorf("subject erase: capture files: %w", err)
		}
		res.CaptureFiles += n
	}
	// Capture files whose queue record is gone (pruned) still hold the
	// address in clear: find them by content.
	n, err := outbox.RemoveMentioning(a.Address)
	if err != nil {
		return fmt.Errorf("subject erase: capture files: %w", err)
	}
	res.CaptureFiles += n
	// bbolt puts freed pages on its freelist and reuses them without zeroing
	// them: rewrite every store so the erased bytes are gone from the files.
	if err := e.compact(); err != nil {
		return fmt.Errorf("subject erase: %w", err)
	}
	e.log.Info().Str("who", req.Who).Str("subject", ref).Str("request", requestRef).Int("messages", len(er.IDs)).Msg("subject erased")
	return o.Record(res)
}

// compact rewrites every store file.
func (e *env) compact() error {
	if err := e.queue.Compact(); err != nil {
		return fmt.Errorf("compact queue: %w", err)
	}
	if err := e.supp.Compact(); err != nil {
		return fmt.Errorf("compact suppression: %w", err)
	}
	if err := e.subs.Compact(); err != nil {
		return fmt.Errorf("compact subscribers: %w", err)
	}
	return nil
}

func opSubjectRestrict(restrict bool) opFunc {
	verb := "restrict"
	if !restrict {
		verb = "unrestrict"
	}
	return func(ctx context.Context, e *env, req request, o *out) error {
		var a subjectArgs
		if err := decodeArgs(req, &a); err != nil {
			return err
		}
		if err := a.check(verb); err != nil {
			return err
		}
		ref, err := e.subjectRef(a.Address)
		if err != nil {
			return err
		}
		if err := e.record(req, "subject."+verb, ref, a.Reason, nil); err != nil {
			return err
		}
		if restrict {
			err = e.supp.Restrict(a.Address, a.Reason)
		} else {
			var ok bool
			ok, err = e.supp.Unrestrict(a.Address)
			if err == nil && !ok {
				return no("%s is not restricted", maskIf(req.Reveal, a.Address))
			}
		}
		if err != nil {
			return fmt.Errorf("subject %s: %w", verb, err)
		}
		return o.Record(map[string]string{"subject": maskIf(req.Reveal, a.Address), "action": verb})
	}
}

type auditArgs struct {
	Since string `json:"since,omitempty"`
}

func opAuditList(ctx context.Context, e *env, req request, o *out) error {
	var a auditArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	var since time.Time
	if a.Since != "" {
		if d, err := configs.ParseDuration(a.Since); err == nil {
			since = time.Now().Add(-d)
		} else if t, err := time.Parse(time.RFC3339, a.Since); err == nil {
			since = t
		} else if t, err := time.Parse(time.DateOnly, a.Since); err == nil {
			since = t
		} else {
			return fmt.Errorf("audit ls: --since %q: want a date (2026-11-01), a time (RFC 3339) or a duration (7d)", a.Since)
		}
	}
	return e.audit.List(since, func(en audit.Entry) error { return o.Record(en) })
}

func opAuditVerify(ctx context.Context, e *env, req request, o *out) error {
	r, err := e.audit.Verify()
	if err != nil {
		return err
	}
	if err := o.Record(r); err != nil {
		return err
	}
	if !r.OK {
		return &exitError{code: 1, msg: "audit log does not verify: " + r.Problem}
	}
	return nil
}

// pruneResult is what `db prune` removed.
type pruneResult struct {
	FinishedMessages int `json:"finished_messages"`
	CaptureFiles     int `json:"capture_files"`
	PendingOptins    int `json:"pending_optins"`
	AuditEntries     int `json:"audit_entries"`
}

// prune applies the retention periods of the config.
func (e *env) prune() (pruneResult, error) {
	var r pruneResult
	var err error
	rt := e.cfg.Retention
	if r.FinishedMessages, err = e.queue.PruneFinished(rt.FinishedMessages); err != nil {
		return r, fmt.Errorf("prune finished messages: %w", err)
	}
	if r.CaptureFiles, err = mta.NewOutbox(e.cfg.Delivery.CaptureDir).Prune(time.Now().Add(-rt.FinishedMessages)); err != nil {
		return r, fmt.Errorf("prune capture files: %w", err)
	}
	if r.PendingOptins, err = e.subs.PrunePending(rt.PendingOptin); err != nil {
		return r, fmt.Errorf("prune pending opt-ins: %w", err)
	}
	if r.AuditEntries, err = e.audit.Prune(time.Now().Add(-rt.Audit)); err != nil {
		return r, fmt.Errorf("prune audit log: %w", err)
	}
	return r, nil
}

func opDBPrune(ctx context.Context, e *env, req request, o *out) error {
	r, err := e.prune()
	if err != nil {
		return err
	}
	if err := e.record(req, "db.prune", "", "retention", map[string]string{
		"finished_messages": fmt.Sprint(r.FinishedMessages), "capture_files": fmt.Sprint(r.CaptureFiles),
		"pending_optins": fmt.Sprint(r.PendingOptins), "audit_entries": fmt.Sprint(r.AuditEntries)}); err != nil {
		return err
	}
	return o.Record(r)
}

func opDBCompact(ctx context.Context, e *env, req request, o *out) error {
	sizes := func() map[string]int64 {
		m := map[string]int64{}
		for _, f := range []string{"queue.db", "suppression.db", "subscribers.db"} {
			if fi, err := os.Stat(filepath.Join(e.cfg.DataDir, f)); err == nil {
				m[f] = fi.Size()
			}
		}
		return m
	}
	before := sizes()
	if err := e.compact(); err != nil {
		return err
	}
	after := sizes()
	names := make([]string, 0, len(before))
	for n := range before {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := o.Record(map[string]any{"file": n, "bytes_before": before[n], "bytes_after": after[n]}); err != nil {
			return err
		}
	}
	return nil
}

// gate is who may be mailed (suppression/gate): campaigns ask it at
// enqueue, the runners at dequeue, the sign-up form, the subscribers import
// and `suppress check` too.
func (e *env) gate() *gate.Gate { return gate.New(e.supp, e.subs) }

// deliveryGate is the check a message passes as it leaves the queue (the
// gate), with the write of hard bounces at SMTP time, audited as "mta".
type deliveryGate struct {
	*gate.Gate
	auditedSuppressor
}

// deliveryGate is the gate of this env's runners.
func (e *env) deliveryGate() deliveryGate {
	return deliveryGate{e.gate(), auditedSuppressor{e, "mta"}}
}

// auditedSuppressor is how an automatic source (who: "mta" for hard bounces
// at SMTP time, "inbound" for DSNs and complaints) suppresses: the audit
// entry is appended (fsynced) before the entry is written, so no suppression
// exists without its record. A retry after a crash between the two appends
// a second entry for the same address, never none.
type auditedSuppressor struct {
	e   *env
	who string
}

// SuppressAddress implements queue.Suppressions' and inbound.Suppressor's write.
func (a auditedSuppressor) SuppressAddress(addr, list, reason, source, note string) error {
	if err := a.e.record(request{Who: a.who}, "suppress.add", a.e.targetRef(addr), reason,
		map[string]string{"list": listName(list), "source": source}); err != nil {
		return err
	}
	return a.e.supp.SuppressAddress(addr, list, reason, source, note)
}

// httpAuditor records what a recipient did over HTTP (unsubscribe, sign-up,
// confirmation) as "http:IP", naming the person by index.
type httpAuditor struct{ e *env }

// HTTPAction satisfies unsubscribe.Auditor and optin.Auditor.
func (a httpAuditor) HTTPAction(ip, action, addr, detail string) error {
	return a.action("http:"+ip, action, addr, detail)
}

// action records what the person at addr did through who ("http:IP", "smtp").
func (a httpAuditor) action(who, action, addr, detail string) error {
	return a.e.record(request{Who: who}, action, a.e.targetRef(addr), detail, nil)
}
