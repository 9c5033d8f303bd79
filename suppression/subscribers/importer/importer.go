// Package importer reads a CSV of contacts into the consent store
// (suppression/subscribers), asking the gate first for every row.
//
// A row with consented_at is imported as confirmed consent with its evidence
// (ip, source); a row without it is a legitimate-interest candidate, never
// consent. The gate wins: whoever unsubscribed, bounced, complained or was
// erased (and did not come back by double opt-in) is counted as suppressed
// and never brought back by an import. Rows are committed in batches, each
// one fsynced transaction of the store; a batch committed stays committed if
// a later one fails, and a re-run counts its rows as existing.
package importer

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/suppression/gate"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

// DefaultBatch is how many rows go into one fsynced transaction.
const DefaultBatch = 500

// Store is the consent store as an import writes it; *subscribers.Store
// satisfies it.
type Store interface {
	Import(cands []subscribers.Candidate) ([]subscribers.ImportResult, error)
}

// Gate says whether an address may be mailed on a list; *gate.Gate
// satisfies it.
type Gate interface {
	Decide(addr, list string, p gate.Purpose, basis string) (gate.Decision, error)
}

// Config is what an import needs.
type Config struct {
	Store Store // required
	Gate  Gate  // required
	// Reveal keeps addresses in the row errors; they are masked otherwise.
	Reveal bool
	// Progress, if set, is called after each batch with the rows read so far.
	Progress func(rows int)
	// Batch is how many rows go into one transaction; 0 means DefaultBatch.
	Batch int
}

// Summary is what an import did; the JSON record `subscribers import` ends with.
type Summary struct {
	File               string         `json:"file"`
	List               string         `json:"list"`
	Rows               int            `json:"rows"`
	Consent            int            `json:"imported_consent"`
	LegitimateInterest int            `json:"imported_legitimate_interest"`
	Existing           int            `json:"existing"`
	Suppressed         int            `json:"suppressed"`
	SuppressedBy       map[string]int `json:"suppressed_by,omitempty"`
	// Errors are the invalid rows, each as "FILE:LINE: problem".
	Errors []string `json:"errors,omitempty"`
}

// Import reads the CSV at path (a header naming an address column, then
// name, company, consented_at, ip, source, all optional) into list. source
// names where the contacts come from (default: the file's name); a row's
// own source column is appended to it. Invalid rows are counted in
// Summary.Errors and do not stop the import; an unreadable file, a bad
// header, a failing store or gate, or ctx ending between batches does,
// returning the summary so far.
func Import(ctx context.Context, cfg Config, path, list, source string) (Summary, error) {
	if source == "" {
		source = filepath.Base(path)
	}
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultBatch
	}
	run := &run{cfg: cfg, path: path, list: list, source: source,
		sum: Summary{File: path, List: list, SuppressedBy: map[string]int{}}}
	f, err := os.Open(path)
	if err != nil {
		return run.sum, fmt.Errorf("subscribers import: %w", err)
	}
	defer f.Close()
	if err := run.read(ctx, f); err != nil {
		return run.sum, err
	}
	return run.sum, nil
}

// run is one import in progress.
type run struct {
	cfg                Config
	path, list, source string
	sum                Summary
	cands              []subscribers.Candidate
	lines              []int // lines[i] is the CSV line of cands[i]
}

// read reads the header, then every row, committing a batch whenever one fills.
func (r *run) read(ctx context.Context, f io.Reader) error {
	cr := csv.NewReader(f)
	cr.FieldsPerRecord = -1
	cr.TrimLeadingSpace = true
	header, err := cr.Read()
	if err != nil {
		return fmt.Errorf("subscribers import %s: read header: %w", r.path, err)
	}
	hd, err := address.ReadHeader(r.path, header)
	if err != nil {
		return fmt.Errorf("subscribers import: %w", err)
	}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				r.rowErr(pe.Line, "%v", pe.Err)
				continue
			}
			return fmt.Errorf("subscribers import %s: %w", r.path, err)
		}
		// FieldPos only after a good read: on a parse error it may panic.
		line, _ := cr.FieldPos(0)
		if err := r.row(hd, rec, line); err != nil {
			return err
		}
		if len(r.cands) >= r.cfg.Batch {
			if err := r.flush(ctx); err != nil {
				return err
			}
		}
	}
	return r.flush(ctx)
}

// row checks one record and adds it to the batch, or counts why not.
func (r *run) row(hd *address.Header, rec []string, line int) error {
	get := hd.Field
	r.sum.Rows++
	addr, err := address.Parse(get(rec, hd.Names[hd.Address]))
	if err != nil {
		r.rowErr(line, "email: %v", err)
		return nil
	}
	at, err := parseConsentTime(get(rec, "consented_at"))
	if err != nil {
		r.rowErr(line, "%v", err)
		return nil
	}
	// The gate wins: whoever unsubscribed, bounced, complained or was
	// erased (and did not come back by double opt-in) is never brought
	// back by an import.
	d, err := r.cfg.Gate.Decide(addr.String(), r.list, gate.Campaign, gate.Unchecked)
	if err != nil {
		return fmt.Errorf("subscribers import %s:%d: %w", r.path, line, err)
	}
	if !d.Mailable {
		r.suppressed(d.Reason)
		return nil
	}
	src := r.source
	if s := get(rec, "source"); s != "" {
		src += "/" + s
	}
	c := subscribers.Candidate{Address: addr.String(), List: r.list, Name: get(rec, "name"), Company: get(rec, "company"),
		Source: src, ConsentedAt: at}
	if !at.IsZero() {
		c.IP = get(rec, "ip") // evidence only with a consent time
	}
	r.cands, r.lines = append(r.cands, c), append(r.lines, line)
	return nil
}

// flush commits the batch in one transaction and counts each outcome.
func (r *run) flush(ctx context.Context) error {
	if len(r.cands) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("subscribers import %s: %w", r.path, err)
	}
	res, err := r.cfg.Store.Import(r.cands)
	if err != nil {
		return fmt.Errorf("subscribers import %s: %w", r.path, err)
	}
	for i, rs := range res {
		switch {
		case rs.Err == nil && rs.Event.Kind == subscribers.KindImportedLegitimate:
			r.sum.LegitimateInterest++
		case rs.Err == nil:
			r.sum.Consent++
		case errors.Is(rs.Err, subscribers.ErrExists):
			r.sum.Existing++
		case errors.Is(rs.Err, subscribers.ErrUnsubscribed):
			r.suppressed("unsubscribed")
		case errors.Is(rs.Err, subscribers.ErrErased):
			r.suppressed("erased")
		default:
			r.rowErr(r.lines[i], "%v", rs.Err)
		}
	}
	r.cands, r.lines = r.cands[:0], r.lines[:0]
	if r.cfg.Progress != nil {
		r.cfg.Progress(r.sum.Rows)
	}
	return nil
}

// suppressed counts a row the gate or the consent history stopped.
func (r *run) suppressed(reason string) {
	r.sum.Suppressed++
	r.sum.SuppressedBy[reason]++
}

// rowErr records an invalid row as "FILE:LINE: problem", addresses masked
// unless Reveal.
func (r *run) rowErr(line int, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if !r.cfg.Reveal {
		msg = address.MaskText(msg)
	}
	r.sum.Errors = append(r.sum.Errors, fmt.Sprintf("%s:%d: %s", r.path, line, msg))
}

// parseConsentTime reads consented_at: RFC 3339 or a date.
func parseConsentTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("consented_at %q: want RFC 3339 or YYYY-MM-DD", s)
}
