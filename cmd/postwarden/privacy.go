package main

// Data subject rights (GDPR Art. 15, 17, 18, 20), the audit trail, and
// retention: each op decodes its arguments, makes one call into
// suppression/subject or suppression/retention (which audit before they
// change anything) and records the result. Here too the audit helpers every
// op uses, and the adapters the wiring needs.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/mta"
	"github.com/postwarden/postwarden/mta/inbound/handover"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/audit/auditstream"
	"github.com/postwarden/postwarden/suppression/gate"
	"github.com/postwarden/postwarden/suppression/retention"
	"github.com/postwarden/postwarden/suppression/subject"
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

// subjectRef names a person in the audit log (subject.Ref).
func (e *env) subjectRef(addr string) (string, error) { return subject.Ref(e.box, addr) }

// targetRef names a suppression target in the audit log: a domain as it
// is (a company, not a person), an address by its index.
func (e *env) targetRef(target string) string {
	if suppression.IsDomainTarget(target) {
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

func (a subjectArgs) request(req request) subject.Request {
	return subject.Request{Who: req.Who, Address: a.Address, Reason: a.Reason}
}

// subjectDeps are this env's stores as the subject procedures see them.
func (e *env) subjectDeps() subject.Deps {
	d := subject.Deps{Queue: subjectQueue{e.queue}, Suppression: e.suppressions(), Subscribers: e.subs,
		Outbox: mta.NewOutbox(e.cfg.Delivery.CaptureDir), Index: e.box, Stores: e.compactable(), Log: e.log}
	if e.audit != nil { // a nil *audit.Log is "not open", not an Audit
		d.Audit = e.audit
	}
	return d
}

// compactable are the store files compaction rewrites, in order.
func (e *env) compactable() []retention.Store {
	return []retention.Store{
		{Name: "queue", Path: storePath(e.cfg, "queue"), DB: e.queue},
		{Name: "suppression", Path: storePath(e.cfg, "suppression"), DB: e.supp},
		{Name: "subscribers", Path: storePath(e.cfg, "subscribers"), DB: e.subs},
	}
}

// subjectQueue adapts queue.Store to subject.Queue (suppression/subject may
// not import queue): it copies the fields a person is shown.
type subjectQueue struct{ q *queue.Store }

// MessagesFor implements subject.Queue.
func (a subjectQueue) MessagesFor(addr string) ([]subject.Message, error) {
	msgs, err := a.q.MessagesFor(addr)
	if err != nil {
		return nil, err
	}
	var out []subject.Message
	for _, m := range msgs {
		out = append(out, subjectMessage(m))
	}
	return out, nil
}

// subjectMessage is m as an export shows it.
func subjectMessage(m queue.Message) subject.Message {
	var hist []subject.Attempt
	for _, at := range m.History {
		hist = append(hist, subject.Attempt{Time: at.Time, Outcome: at.Outcome, Reply: at.Reply, Remote: at.Remote})
	}
	return subject.Message{ID: m.ID, Campaign: m.Campaign, List: m.List, State: string(m.State),
		Created: m.Created, Updated: m.Updated, Reply: m.LastReply, Reason: m.Reason, History: hist}
}

// EraseRecipientIndex implements subject.Queue.
func (a subjectQueue) EraseRecipientIndex(ix, reason string) (subject.Erased, error) {
	r, err := a.q.EraseRecipientIndex(ix, reason)
	return subject.Erased{IDs: r.IDs, Cancelled: r.Cancelled, Scrubbed: r.Scrubbed}, err
}

func opSubjectExport(ctx context.Context, e *env, req request, o *out) error {
	var a subjectArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	x, err := subject.Export(e.subjectDeps(), a.request(req), a.Format)
	if err != nil {
		return err
	}
	if a.Format == "csv" {
		return o.Record(map[string]string{"csv": x.CSV()})
	}
	return o.Record(x)
}

func opSubjectErase(ctx context.Context, e *env, req request, o *out) error {
	var a subjectArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	if err := e.joinReplica(ctx); err != nil {
		return err
	}
	res, err := subject.Erase(e.subjectDeps(), a.request(req))
	if err != nil {
		return err
	}
	rows, err := e.eraseFromShares(ctx, a.Address)
	if err != nil {
		return err
	}
	if err := e.eraseReports(ctx, a.Address); err != nil {
		return err
	}
	return o.Record(clusterErasure{Erasure: res, ShareRows: rows})
}

// clusterErasure is subject erase's result; ShareRows counts the campaign
// share rows removed from the cluster (none on a single node).
type clusterErasure struct {
	subject.Erasure
	ShareRows int `json:"share_rows_erased,omitempty"`
}

// eraseFromShares removes the person from the cluster's campaign shards
// and outcomes (issue 13, promise 5); the node that runs subject erase
// does it once for the cluster, the streams being shared. Other nodes
// only drop them from the shards they hold (eraseHere).
func (e *env) eraseFromShares(ctx context.Context, addr string) (int, error) {
	if e.cfg.Cluster == nil {
		return 0, nil
	}
	ad, err := address.Parse(addr)
	if err != nil {
		return 0, fmt.Errorf("subject erase: campaign shares: %s", address.Mask(addr))
	}
	coord, done, err := e.coordinator(ctx)
	if err != nil {
		return 0, fmt.Errorf("subject erase: erased on this node, not yet from the campaign shares (run it again): %w", err)
	}
	defer done()
	n, err := coord.EraseIndex(ctx, e.box.IndexHex(ad.Key()))
	if err != nil {
		return n, fmt.Errorf("subject erase: erased on this node, not yet from the campaign shares (run it again): %w", err)
	}
	return n, nil
}

// eraseReports removes the person's bounce and complaint reports handed
// over between nodes (PW_REPORTS, whichever node they wait for) and this
// node's outbox of them (issue 13, promise 5); the other nodes' outboxes
// follow through the replica's erasure (eraseHere).
func (e *env) eraseReports(ctx context.Context, addr string) error {
	if e.cfg.Cluster == nil {
		return nil
	}
	ad, err := address.Parse(addr)
	if err != nil {
		return fmt.Errorf("subject erase: handed-over reports: %s", address.Mask(addr))
	}
	idx := e.box.IndexHex(ad.Key())
	if h := e.handover; h != nil {
		_, err = h.EraseIndex(ctx, idx)
	} else {
		var js jetstream.JetStream
		var done func()
		if js, done, err = e.clusterJS(ctx); err == nil {
			defer done()
			if err = handover.PurgeIndex(ctx, js, handover.Config{}, idx); err == nil {
				_, err = handover.EraseOutbox(e.reportsOutbox(), idx)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("subject erase: erased on this node, not yet from the handed-over reports (run it again): %w", err)
	}
	return nil
}

func opSubjectRestrict(restrict bool) opFunc {
	verb, do := "restrict", subject.Restrict
	if !restrict {
		verb, do = "unrestrict", subject.Unrestrict
	}
	return func(ctx context.Context, e *env, req request, o *out) error {
		var a subjectArgs
		if err := decodeArgs(req, &a); err != nil {
			return err
		}
		if err := e.joinReplica(ctx); err != nil {
			return err
		}
		err := do(e.subjectDeps(), a.request(req))
		if errors.Is(err, subject.ErrNotRestricted) {
			return no("%s is not restricted", maskIf(req.Reveal, a.Address))
		}
		if err != nil {
			return err
		}
		return o.Record(map[string]string{"subject": maskIf(req.Reveal, a.Address), "action": verb})
	}
}

type auditArgs struct {
	Since   string `json:"since,omitempty"`
	Cluster bool   `json:"cluster,omitempty"` // audit verify: every node's chain, from the cluster
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
	var a auditArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
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
	if !a.Cluster {
		return nil
	}
	js, done, err := e.clusterJS(ctx)
	if err != nil {
		return err
	}
	defer done()
	nodes, err := auditstream.VerifyCluster(ctx, js, e.box, e.cfg.Cluster.Node, e.audit)
	if err != nil {
		return err
	}
	var bad []string
	for _, n := range nodes {
		if err := o.Record(n); err != nil {
			return err
		}
		if !n.OK {
			bad = append(bad, n.Problem)
		}
	}
	if len(bad) > 0 {
		return &exitError{code: 1, msg: "cluster audit trail does not verify: " + strings.Join(bad, "; ")}
	}
	return nil
}

// retentionDeps are this env's stores and retention periods as pruning sees them.
func (e *env) retentionDeps() retention.Deps {
	rt := e.cfg.Retention
	d := retention.Deps{Queue: e.queue, Outbox: mta.NewOutbox(e.cfg.Delivery.CaptureDir), Subscribers: e.subs,
		Periods: retention.Periods{FinishedMessages: rt.FinishedMessages, PendingOptin: rt.PendingOptin, Audit: rt.Audit}}
	if e.audit != nil { // a nil *audit.Log is "not open", not an Audit
		d.Audit = e.audit
	}
	// A cluster node's daemon prunes the cluster's finished campaigns too,
	// once its share coordinator is up (any node may: the purges are
	// idempotent).
	if w := e.shares; w != nil {
		select {
		case <-w.ready:
			d.Campaigns = w.coord
		default:
		}
	}
	return d
}

func opDBPrune(ctx context.Context, e *env, req request, o *out) error {
	r, err := retention.Prune(ctx, e.retentionDeps(), retention.Request{Who: req.Who})
	if err != nil {
		return err
	}
	return o.Record(r)
}

func opDBCompact(ctx context.Context, e *env, req request, o *out) error {
	sizes, err := retention.Compact(e.compactable())
	if err != nil {
		return err
	}
	for _, s := range sizes {
		if err := o.Record(s); err != nil {
			return err
		}
	}
	return nil
}

// gate is who may be mailed (suppression/gate): campaigns ask it at
// enqueue, the runners at dequeue, the sign-up form, the subscribers import
// and `suppress check` too.
func (e *env) gate() *gate.Gate { return gate.New(e.suppressions(), e.subs) }

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
	return a.e.suppressions().SuppressAddress(addr, list, reason, source, note)
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
