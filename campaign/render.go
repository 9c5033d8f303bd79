package campaign

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"mime"
	"net/mail"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/templates"
)

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
		errs = append(errs, TemplateError{errors.New("templates: none loaded")})
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
	return outcome{msg: Message{Campaign: spec.ID, List: spec.List, Key: key, From: s.from, To: to, Body: body, Dict: s.dict, Pool: spec.Pool}}
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
