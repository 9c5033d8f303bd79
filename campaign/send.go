package campaign

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/mail"
	"net/url"
	"os/user"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/templates"
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
	if deps.Suppressions == nil || deps.Queue == nil || deps.Links == nil {
		return fail(errors.New("suppressions, queue and links are required"))
	}
	if len(spec.MessageIDKey) == 0 {
		return fail(errors.New("message-id key is empty"))
	}
	s, errs := newRenderer(spec)
	if len(errs) == 0 {
		if err := spec.Templates.Validate(); err != nil {
			errs = append(errs, err) // "templates: …"
		}
	}
	if len(errs) > 0 {
		return fail(errors.Join(errs...))
	}
	s.sup, s.links = deps.Suppressions, deps.Links.UnsubscribeURL
	if deps.Mailto != nil {
		s.mailto = deps.Mailto.UnsubscribeMailto
	}
	if deps.Now != nil {
		s.now = deps.Now
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
	rec := Record{ID: spec.ID, List: spec.List, Subject: spec.Subject, Recipients: spec.Recipients,
		LegalBasis: spec.LegalBasis, LIA: spec.LIA, LIAHash: spec.LIAHash, Audience: spec.Audience, Pool: spec.Pool,
		ExcludeCountries: s.excludedList(), UnknownCountry: s.unknownPolicy(),
		FileHash: spec.FileHash, RunBy: runBy(), Started: s.now()}
	if err := putRecord(deps.Records, rec); err != nil {
		return fail(err)
	}
	log.Info().Str("recipients", spec.Recipients).Str("run_by", rec.RunBy).Msg("campaign send started")

	invalid := firstRows{max: maxInvalidRows}
	maxAhead := spec.MaxAhead
	if maxAhead <= 0 {
		maxAhead = DefaultMaxAhead
	}
	batch := make([]Message, 0, batchSize)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err // what is not committed yet is not sent; a re-run picks it up
		}
		if deps.Backlog != nil {
			if err := waitBacklog(ctx, deps.Backlog, spec.ID, maxAhead); err != nil {
				return err
			}
		}
		added, dups, err := deps.Queue.Enqueue(batch)
		for _, m := range batch {
			s.giveSpare(m.Body)
		}
		if err != nil {
			return fmt.Errorf("enqueue: %w", err)
		}
		sum.Enqueued += added
		sum.AlreadySent += dups
		batch = make([]Message, 0, batchSize)
		return nil
	}
	handle := func(o outcome) error {
		switch {
		case o.err != nil:
			return o.err
		case o.rowErr != nil:
			sum.Invalid++
			invalid.add(*o.rowErr)
			if sum.Invalid <= maxInvalidRows {
				log.Warn().Str("file", o.rowErr.File).Int("line", o.rowErr.Line).Str("field", o.rowErr.Field).
					Str("rcpt", address.Mask(o.rowErr.rcpt)).Str("problem", o.rowErr.Masked()).Msg("invalid row skipped")
			}
		case o.suppressed != "":
			sum.Suppressed[o.suppressed]++
		case o.skipped != "":
			sum.Skipped[o.skipped]++
		default:
			batch = append(batch, o.msg)
			if len(batch) == batchSize {
				return flush()
			}
		}
		return nil
	}
	rows, err := run(ctx, rs, s.process, handle, progress)
	if err == nil {
		err = flush()
	}
	sum.Rows = rows
	sum.InvalidRows = invalid.rows
	for _, e := range invalid.rows {
		sum.InvalidLines = append(sum.InvalidLines, e.Masked())
	}

	rec.Finished = s.now()
	rec.Summary = sum
	if recErr := putRecord(deps.Records, rec); recErr != nil {
		err = errors.Join(err, recErr)
	}
	ev := log.Info()
	if err != nil {
		ev = log.Error().Err(err)
	}
	ev.Int("rows", sum.Rows).Int("invalid", sum.Invalid).Interface("suppressed", sum.Suppressed).Interface("skipped", sum.Skipped).
		Int("enqueued", sum.Enqueued).Int("already_sent", sum.AlreadySent).Msg("campaign send finished")
	if err != nil {
		return fail(err)
	}
	return sum, nil
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
			errs = append(errs, split(err)...) // each "templates: …"
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

// renderer turns a checked row into a message.
type renderer struct {
	spec Spec
	from string // envelope sender: the bare address of spec.From
	// feedbackID is "campaign:list:sender" (the From domain), Gmail's
	// feedback-loop key, in every message and under its DKIM signature.
	feedbackID string
	sup        Suppressions
	links      func(addr, list, campaign string) string
	mailto     func(addr, list, campaign string) string // nil without a mailto URI
	now        func() time.Time
	dict       uint32 // the queue's compression dictionary for this campaign; 0: none
	// spare holds the memory of bodies already enqueued, for the next renders
	// (Queue.Enqueue does not keep Body): ~22 KB less garbage per message.
	spare chan []byte

	exclude        map[string]bool // spec.ExcludeCountries, upper-case ISO codes
	unknownExclude bool            // rows of unknown country are skipped
	freeMail       map[string]bool // spec.FreeMail, lower case; used under legitimate interest
}

// newRenderer checks the fields of spec that go into headers and returns every problem.
func newRenderer(spec Spec) (*renderer, []error) {
	var errs []error
	for _, f := range []struct{ name, v string }{{"id", spec.ID}, {"list", spec.List}, {"hostname", spec.Hostname}} {
		if !dotAtom.MatchString(f.v) {
			errs = append(errs, fmt.Errorf("%s %q: want letters, digits, '-', '_' and single dots", f.name, f.v))
		}
	}
	s := &renderer{spec: spec, now: time.Now, spare: make(chan []byte, batchSize),
		links: func(_, _, _ string) string { return "https://unsubscribe.invalid/u/validate" }}
	from, err := headerAddress(spec.From)
	if err != nil {
		errs = append(errs, fmt.Errorf("from: %w", err))
	} else {
		s.from = from.String()
		s.feedbackID = spec.ID + ":" + spec.List + ":" + from.Domain
	}
	if spec.ReplyTo != "" {
		if _, err := headerAddress(spec.ReplyTo); err != nil {
			errs = append(errs, fmt.Errorf("reply_to: %w", err))
		}
	}
	if strings.ContainsAny(spec.ListName, "\r\n\x00") {
		errs = append(errs, fmt.Errorf("list_name: %w", errControl))
	}
	if u, err := url.Parse(spec.PrivacyURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		errs = append(errs, fmt.Errorf("privacy_url %q: want an http(s) URL", spec.PrivacyURL))
	}
	if spec.Templates == nil {
		errs = append(errs, errors.New("templates: none loaded"))
	}
	if spec.Recipients == "" {
		errs = append(errs, errors.New("recipients: no file given"))
	}
	return s, append(errs, s.legalBasis()...)
}

// legalBasis checks the rules of the spec's legal basis and prepares the
// row filters; it returns every problem.
func (s *renderer) legalBasis() []error {
	spec := s.spec
	var errs []error
	switch spec.LegalBasis {
	case LegitimateInterest:
		if strings.TrimSpace(spec.LIA) == "" {
			errs = append(errs, errors.New("lia: legitimate_interest needs a legitimate-interest assessment (purpose, necessity, balancing)"))
		}
		if spec.Audience != AudienceB2B {
			errs = append(errs, fmt.Errorf("audience %q: legitimate_interest covers b2b audiences only (PECR regulation 22)", spec.Audience))
		}
		if spec.FreeMail == nil {
			errs = append(errs, errors.New("free-mail list: legitimate_interest needs the consumer mailbox domains to skip"))
		}
	case Consent:
	default:
		errs = append(errs, fmt.Errorf("legal_basis %q: want legitimate_interest or consent", spec.LegalBasis))
	}
	s.exclude = make(map[string]bool, len(spec.ExcludeCountries))
	if (len(spec.ExcludeCountries) > 0 || spec.UnknownCountry == UnknownExclude) && spec.CountryCode == nil {
		errs = append(errs, errors.New("exclude_countries: no CountryCode to read the recipients' country column"))
	}
	for c := range spec.ExcludeCountries {
		if spec.CountryCode == nil {
			break
		}
		code, ok := spec.CountryCode(c)
		if !ok || len(strings.TrimSpace(c)) != 2 {
			errs = append(errs, fmt.Errorf("exclude_countries: %q is not an ISO 3166-1 alpha-2 code (groups such as EU are expanded by the caller)", c))
			continue
		}
		s.exclude[code] = true
	}
	switch spec.UnknownCountry {
	case UnknownExclude:
		s.unknownExclude = true
	case UnknownInclude:
	case "":
		s.unknownExclude = len(s.exclude) > 0
	default:
		errs = append(errs, fmt.Errorf("unknown_country %q: want exclude or include", spec.UnknownCountry))
	}
	s.freeMail = make(map[string]bool, len(spec.FreeMail))
	for d := range spec.FreeMail {
		s.freeMail[strings.ToLower(d)] = true
	}
	return errs
}

// skip returns why the legal basis leaves row r out — SkipRegion, then
// SkipNotB2B — or "" when it may go on to the suppression check.
func (s *renderer) skip(r row) string {
	if len(s.exclude) > 0 || s.unknownExclude {
		code, known := s.spec.CountryCode(r.data.Country)
		if (known && s.exclude[code]) || (!known && s.unknownExclude) {
			return SkipRegion
		}
	}
	if s.spec.LegalBasis == LegitimateInterest && s.freeMail[r.addr.Domain] {
		return SkipNotB2B
	}
	return ""
}

// excludedList is the excluded country codes, sorted, for the record.
func (s *renderer) excludedList() []string {
	out := make([]string, 0, len(s.exclude))
	for c := range s.exclude {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}

// unknownPolicy is the unknown-country policy applied, for the record.
func (s *renderer) unknownPolicy() string {
	if s.unknownExclude {
		return UnknownExclude
	}
	return UnknownInclude
}

// headerAddress parses a "Name <addr>" form and checks its address.
func headerAddress(s string) (address.Address, error) {
	if strings.ContainsAny(s, "\r\n\x00") {
		return address.Address{}, errControl
	}
	m, err := mail.ParseAddress(s)
	if err != nil {
		return address.Address{}, fmt.Errorf("%q: %w", s, err)
	}
	a, err := address.Parse(m.Address)
	if err != nil {
		return address.Address{}, fmt.Errorf("%q: %w", s, err)
	}
	return a, nil
}

// process checks the legal basis's filters, then the gate over suppression
// and consent (when set), then renders the row's message.
func (s *renderer) process(r row) outcome {
	spec := s.spec
	if why := s.skip(r); why != "" {
		return outcome{skipped: why}
	}
	if s.sup != nil {
		reason, suppressed, err := s.sup.CheckCampaign(r.addr.String(), spec.List, spec.LegalBasis)
		if err != nil {
			return outcome{err: fmt.Errorf("%s:%d: suppression check: %w", spec.Recipients, r.line, err)}
		}
		switch {
		case suppressed && reason == SkipNoConsent:
			return outcome{skipped: SkipNoConsent}
		case suppressed && reason == "":
			return outcome{suppressed: "unspecified"}
		case suppressed:
			return outcome{suppressed: reason}
		}
	}
	to, key := r.addr.String(), r.addr.Key()
	body, err := s.render(s.takeSpare(), to, key, r.data, s.now())
	if err != nil {
		s.giveSpare(body)
		return outcome{rowErr: &RowError{File: spec.Recipients, Line: r.line, Field: "template", Err: err, rcpt: to}}
	}
	return outcome{msg: Message{Campaign: spec.ID, List: spec.List, Key: key, From: s.from, To: to, Body: body, Dict: s.dict}}
}

// render appends to dst the message to address to, whose address key is
// key, with its row's data d, dated date.
func (s *renderer) render(dst []byte, to, key string, d templates.Data, date time.Time) ([]byte, error) {
	spec := s.spec
	unsubscribe := s.links(to, spec.List, spec.ID)
	d.UnsubscribeURL, d.PrivacyURL = unsubscribe, spec.PrivacyURL
	env := templates.Envelope{
		From:        spec.From,
		ReplyTo:     spec.ReplyTo,
		To:          to,
		ToName:      strings.TrimSpace(d.FirstName + " " + d.LastName),
		MessageID:   messageID(spec.MessageIDKey, spec.ID, key, spec.Hostname),
		Date:        date,
		ListID:      spec.List + "." + spec.Hostname, // RFC 2919 §2
		ListName:    spec.ListName,
		Unsubscribe: []string{unsubscribe}, // RFC 8058: the https URL first
		FeedbackID:  s.feedbackID,
	}
	if s.mailto != nil {
		if m := s.mailto(to, spec.List, spec.ID); m != "" {
			env.Unsubscribe = append(env.Unsubscribe, m) // RFC 2369 §3.2: mailto as an alternative
		}
	}
	return spec.Templates.RenderAppend(dst, d, env)
}

// takeSpare returns the memory of an enqueued body to render into, or nil.
func (s *renderer) takeSpare() []byte {
	select {
	case b := <-s.spare:
		return b
	default:
		return nil
	}
}

// giveSpare keeps b's memory for a later render, if there is room.
func (s *renderer) giveSpare(b []byte) {
	if cap(b) == 0 {
		return
	}
	select {
	case s.spare <- b[:0]:
	default:
	}
}

// sampleAddress is the recipient of a campaign's dictionary sample: nobody.
// Its date and MIME boundary are fixed too, so a re-run of the campaign
// stores the same sample and the queue keeps one dictionary for both.
const sampleAddress = "recipient@example.invalid"

var sampleDate = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// putDictionary renders the campaign's message for a placeholder recipient
// (no personal data: placeholder names, an unsubscribe link minted for
// sampleAddress, the real privacy link and headers) and stores it as the
// queue's compression dictionary. It returns the id, or 0 when the templates
// do not render for the placeholder (the queue then compresses without one).
func (s *renderer) putDictionary(ds Dictionaries, log zerolog.Logger) (uint32, error) {
	d := templates.Data{FirstName: "Firstname", LastName: "Lastname", Company: "Company Name",
		JobTitle: "Job Title", Email: sampleAddress}
	sample, err := s.render(nil, sampleAddress, sampleAddress, d, sampleDate)
	if err != nil {
		log.Warn().Err(err).Msg("campaign sample does not render; bodies compressed without a dictionary")
		return 0, nil
	}
	if m, err := mail.ReadMessage(bytes.NewReader(sample)); err == nil {
		if _, params, err := mime.ParseMediaType(m.Header.Get("Content-Type")); err == nil && len(params["boundary"]) > 0 {
			b := params["boundary"] // random per render
			sample = bytes.ReplaceAll(sample, []byte(b), bytes.Repeat([]byte("0"), len(b)))
		}
	}
	id, err := ds.PutDictionary(sample)
	if err != nil {
		return 0, fmt.Errorf("store compression dictionary: %w", err)
	}
	return id, nil
}

// messageID is hex(HMAC-SHA256(secret, campaign NUL key))[:24] "." campaign "@" host:
// the same recipient of the same campaign always gets the same Message-ID, so a
// re-send after a crash can be deduplicated by receivers.
func messageID(secret []byte, campaign, key, host string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(campaign + "\x00" + key))
	return hex.EncodeToString(m.Sum(nil))[:24] + "." + campaign + "@" + host
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
