package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/gate"
)

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
	if err := e.joinReplica(ctx); err != nil {
		return err
	}
	// Write-ahead: audited before it is written.
	if err := e.record(req, "suppress.add", e.targetRef(a.Target), a.Reason, map[string]string{"list": listName(a.List)}); err != nil {
		return err
	}
	if err := e.suppressions().Add(en); err != nil {
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
	if err := e.joinReplica(ctx); err != nil {
		return err
	}
	ok, err := e.suppressions().Remove(a.Target, a.List)
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
	if err := e.joinReplica(ctx); err != nil {
		return err
	}
	def := suppression.Entry{List: a.List, Reason: suppression.Reason(a.Reason), Source: "import:" + filepath.Base(a.Path)}
	var pub suppression.ImportPublisher // nil: written here, single node
	if e.rep != nil {                   // a cluster node: each batch through the stream (PublishAll)
		pub = e.rep.Writer()
	}
	res, err := e.supp.ImportFileVia(a.Path, def, importAuditor{e.audit, req.Who, a.Reason}, pub)
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
