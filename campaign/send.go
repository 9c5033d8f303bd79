package campaign

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/user"
	"regexp"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression/address"
)

const (
	batchSize      = 256  // messages per Queue.Enqueue call, one durable commit each
	maxInvalidRows = 100  // Summary.InvalidRows kept, and invalid rows logged
	maxErrors      = 1000 // row problems listed by Validate
)

// dotAtom is what a campaign ID, list and hostname must look like to sit in a
// Message-ID or List-Id (RFC 5322 §3.2.3 dot-atom-text, narrowed).
var dotAtom = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)

// backlogPoll is how often Send looks at a full backlog again.
const backlogPoll = 20 * time.Millisecond

// waitBacklog returns once fewer than max of campaign's messages wait in the
// queue, or when ctx ends.
func waitBacklog(ctx context.Context, bl Backlog, campaign string, max int) error {
	for {
		n, err := bl.Backlog(campaign)
		if err != nil {
			return fmt.Errorf("queue backlog: %w", err)
		}
		if n < max {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backlogPoll):
		}
	}
}

// Send queues one message for every valid row of spec.Recipients that its
// legal basis allows and the suppression store does not stop. It returns the
// summary so far together with any error that stopped it.
func Send(ctx context.Context, spec Spec, deps Deps, progress Progress) (Summary, error) {
	sum := Summary{Campaign: spec.ID, Suppressed: map[string]int{}, Skipped: map[string]int{}}
	fail := func(err error) (Summary, error) { return sum, fmt.Errorf("campaign %s: %w", spec.ID, err) }
	s, err := prepareRenderer(spec, deps)
	if err != nil {
		return fail(err)
	}
	rs, err := openRecipients(spec.Recipients)
	if err != nil {
		return fail(err)
	}
	defer rs.Close()

	log := deps.Log.With().Str("campaign", spec.ID).Str("list", spec.List).Logger()
	if deps.Dictionary != nil {
		if s.dict, err = s.putDictionary(deps.Dictionary, log); err != nil {
			return fail(err)
		}
	}
	rec := startRecord(spec, s)
	if err := putRecord(deps.Records, rec); err != nil {
		return fail(err)
	}
	log.Info().Str("recipients", spec.Recipients).Str("run_by", rec.RunBy).Msg("campaign send started")

	b := &batcher{ctx: ctx, campaign: spec.ID, queue: deps.Queue, backlog: deps.Backlog,
		maxAhead: maxAhead(spec.MaxAhead), spare: s, log: log, sum: &sum,
		invalid: firstRows{max: maxInvalidRows}, batch: make([]Message, 0, batchSize)}
	rows, err := run(ctx, rs, s.process, b.handle, progress)
	if err == nil {
		err = b.flush()
	}
	b.summarise(rows)

	rec.Finished = s.now()
	rec.Summary = sum
	if recErr := putRecord(deps.Records, rec); recErr != nil {
		err = errors.Join(err, recErr)
	}
	logFinished(log, sum, err)
	if err != nil {
		return fail(err)
	}
	return sum, nil
}

// prepareRenderer checks deps and spec (templates included) and returns the
// renderer of spec wired to deps' stores, links and clock.
func prepareRenderer(spec Spec, deps Deps) (*renderer, error) {
	if deps.Suppressions == nil || deps.Queue == nil || deps.Links == nil {
		return nil, errors.New("suppressions, queue and links are required")
	}
	if len(spec.MessageIDKey) == 0 {
		return nil, errors.New("message-id key is empty")
	}
	s, errs := newRenderer(spec)
	if len(errs) == 0 {
		if err := spec.Templates.Validate(); err != nil {
			errs = append(errs, err) // "templates: …"
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	s.sup = deps.Suppressions
	s.wire(deps)
	return s, nil
}

// wire gives the renderer deps' links and clock (deps.Links is required).
func (s *renderer) wire(deps Deps) {
	s.links = deps.Links.UnsubscribeURL
	if deps.Mailto != nil {
		s.mailto = deps.Mailto.UnsubscribeMailto
	}
	if deps.Now != nil {
		s.now = deps.Now
	}
}

// startRecord is the campaign record as Send stores it before the first row.
func startRecord(spec Spec, s *renderer) Record {
	return Record{ID: spec.ID, List: spec.List, Subject: spec.Subject, Recipients: spec.Recipients,
		LegalBasis: spec.LegalBasis, LIA: spec.LIA, LIAHash: spec.LIAHash, Audience: spec.Audience, Pool: spec.Pool,
		ExcludeCountries: s.excludedList(), UnknownCountry: s.unknownPolicy(),
		FileHash: spec.FileHash, TemplateHash: spec.Templates.Hash(), RunBy: runBy(), Started: s.now(),
		LIAHeadings: spec.LIAHeadings, ConfigHash: spec.ConfigHash, PrivacyURL: spec.PrivacyURL, RequestedBy: spec.RequestedBy}
}

// maxAhead is the backlog Send allows: Spec.MaxAhead, or DefaultMaxAhead when
// that is zero or negative.
func maxAhead(n int) int {
	if n <= 0 {
		return DefaultMaxAhead
	}
	return n
}

// logFinished logs the end of a send, as an error when err is set.
func logFinished(log zerolog.Logger, sum Summary, err error) {
	ev := log.Info()
	if err != nil {
		ev = log.Error().Err(err)
	}
	ev.Int("rows", sum.Rows).Int("invalid", sum.Invalid).Interface("suppressed", sum.Suppressed).Interface("skipped", sum.Skipped).
		Int("enqueued", sum.Enqueued).Int("already_sent", sum.AlreadySent).Msg("campaign send finished")
}

// batcher gathers the messages of one Send into batches of batchSize, one
// Queue.Enqueue each, and counts into sum what became of every row.
type batcher struct {
	ctx      context.Context
	campaign string
	queue    Queue
	backlog  Backlog // nil: never wait
	maxAhead int
	spare    *renderer // takes the bodies back once enqueued
	log      zerolog.Logger
	sum      *Summary
	invalid  firstRows
	batch    []Message
}

// flush enqueues the batch, once the backlog has room, and counts what was added.
func (b *batcher) flush() error {
	if len(b.batch) == 0 {
		return nil
	}
	if err := b.ctx.Err(); err != nil {
		return err // what is not committed yet is not sent; a re-run picks it up
	}
	if b.backlog != nil {
		if err := waitBacklog(b.ctx, b.backlog, b.campaign, b.maxAhead); err != nil {
			return err
		}
	}
	var added, dups, queued int
	var err error
	if qc, ok := b.queue.(QueuedCounter); ok {
		added, dups, queued, err = qc.EnqueueCounting(b.batch)
	} else {
		added, dups, err = b.queue.Enqueue(b.batch)
	}
	for _, m := range b.batch {
		b.spare.giveSpare(m.Body)
	}
	if err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	b.sum.Enqueued += added
	b.sum.AlreadySent += dups
	b.sum.AlreadyQueued += queued
	b.batch = make([]Message, 0, batchSize)
	return nil
}

// handle counts one row's outcome, or batches its message, flushing a full batch.
func (b *batcher) handle(o outcome) error {
	switch {
	case o.err != nil:
		return o.err
	case o.rowErr != nil:
		b.sum.Invalid++
		b.invalid.add(*o.rowErr)
		if b.sum.Invalid <= maxInvalidRows {
			b.log.Warn().Str("file", o.rowErr.File).Int("line", o.rowErr.Line).Str("field", o.rowErr.Field).
				Str("rcpt", address.Mask(o.rowErr.rcpt)).Str("problem", o.rowErr.Masked()).Msg("invalid row skipped")
		}
	case o.suppressed != "":
		b.sum.Suppressed[o.suppressed]++
	case o.skipped != "":
		b.sum.Skipped[o.skipped]++
	default:
		b.batch = append(b.batch, o.msg)
		if len(b.batch) == batchSize {
			return b.flush()
		}
	}
	return nil
}

// summarise puts the row count and the first invalid rows into the summary.
func (b *batcher) summarise(rows int) {
	b.sum.Rows = rows
	b.sum.InvalidRows = b.invalid.rows
	for _, e := range b.invalid.rows {
		b.sum.InvalidLines = append(b.sum.InvalidLines, e.Masked())
	}
}

// Validate checks spec and its templates, then reads the whole recipients file and
// renders every row with a dummy unsubscribe URL. It touches no store and returns
// every problem found, row problems in line order, at most 1000 of them.
//
// Summary.Skipped counts the region_excluded and not_b2b rows, which depend on
// the spec alone. Suppressed stays empty and no_consent is never counted: both
// need a store (suppression, subscribers), and Validate asks none, so a
// consent campaign's Enqueued-to-be is only known at Send. When ctx ends it
// stops reading and returns ctx's error among the problems.
func Validate(ctx context.Context, spec Spec) (Summary, []error) {
	sum := Summary{Campaign: spec.ID, Suppressed: map[string]int{}, Skipped: map[string]int{}}
	s, errs := newRenderer(spec)
	if spec.Templates != nil {
		if err := spec.Templates.Validate(); err != nil {
			for _, e := range split(err) { // each "templates: …"
				errs = append(errs, TemplateError{e})
			}
		}
	}
	if spec.Recipients == "" {
		return sum, errs
	}
	render := len(errs) == 0 // else the rows are still checked, but not rendered
	rs, err := openRecipients(spec.Recipients)
	if err != nil {
		return sum, append(errs, err)
	}
	defer rs.Close()

	problems := firstRows{max: maxErrors}
	handle := func(o outcome) error {
		switch {
		case o.rowErr != nil:
			sum.Invalid++
			problems.add(*o.rowErr)
		case o.skipped != "":
			sum.Skipped[o.skipped]++
		}
		return nil
	}
	process := func(r row) outcome { return outcome{skipped: s.skip(r)} }
	if render {
		process = s.process
	}
	sum.Rows, err = run(ctx, rs, process, handle, nil)
	if err != nil {
		errs = append(errs, err)
	}
	for i, e := range problems.rows {
		errs = append(errs, e)
		if i < maxInvalidRows {
			sum.InvalidRows = append(sum.InvalidRows, e)
			sum.InvalidLines = append(sum.InvalidLines, e.Masked())
		}
	}
	if more := sum.Invalid - len(problems.rows); more > 0 {
		errs = append(errs, fmt.Errorf("… and %d more invalid rows", more))
	}
	return sum, errs
}

// split lists the errors inside an errors.Join.
func split(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// outcome is what became of one row; exactly one of its parts is set, or msg.
type outcome struct {
	msg        Message
	suppressed string    // the suppression reason
	skipped    string    // the legal-basis reason: SkipRegion, SkipNotB2B, SkipNoConsent
	rowErr     *RowError // the row is invalid
	err        error     // the run must stop
}

// run reads the rows of rs and hands the checked ones to process on GOMAXPROCS
// workers; handle sees every outcome on the calling goroutine. The first error from
// handle stops the reading; run returns the rows read and the error that stopped it.
func run(ctx context.Context, rs *recipients, process func(row) outcome, handle func(outcome) error, progress Progress) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	workers := runtime.GOMAXPROCS(0)
	jobs := make(chan row, 4*workers)
	out := make(chan outcome, 4*workers)

	var wg sync.WaitGroup
	var rows int
	var readErr error
	wg.Go(func() {
		defer close(jobs)
		rows, readErr = rs.each(ctx, progress, func(r row, rerr *RowError) bool {
			if rerr != nil {
				select {
				case out <- outcome{rowErr: rerr}:
					return true
				case <-ctx.Done():
					return false
				}
			}
			select {
			case jobs <- r:
				return true
			case <-ctx.Done():
				return false
			}
		})
	})
	for range workers {
		wg.Go(func() {
			for r := range jobs {
				if ctx.Err() == nil {
					out <- process(r)
				}
			}
		})
	}
	go func() {
		wg.Wait()
		close(out)
	}()

	var stop error
	for o := range out {
		if stop == nil {
			if stop = handle(o); stop != nil {
				cancel()
			}
		}
	}
	if stop != nil {
		return rows, stop
	}
	return rows, readErr
}

// firstRows keeps the max row problems with the lowest line numbers, in line order.
type firstRows struct {
	max  int
	rows []RowError
}

// add keeps e if it is among the max lowest lines seen so far.
func (f *firstRows) add(e RowError) {
	if len(f.rows) == f.max && e.Line >= f.rows[len(f.rows)-1].Line {
		return
	}
	i, _ := slices.BinarySearchFunc(f.rows, e.Line, func(r RowError, line int) int { return r.Line - line })
	f.rows = slices.Insert(f.rows, i, e)
	if len(f.rows) > f.max {
		f.rows = f.rows[:f.max]
	}
}

// putRecord stores rec through records, if set.
func putRecord(records Records, rec Record) error {
	if records == nil {
		return nil
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode campaign record: %w", err)
	}
	if err := records.PutCampaign(rec.ID, b); err != nil {
		return fmt.Errorf("store campaign record: %w", err)
	}
	return nil
}

// runBy names the operating-system user running the campaign, for the record.
func runBy() string {
	u, err := user.Current()
	if err != nil {
		return "unknown"
	}
	return u.Username
}
