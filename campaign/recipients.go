package campaign

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/postwarden/postwarden/suppression/address"
	"github.com/postwarden/postwarden/templates"
)

// Progress is reported every progressRows rows or progressEvery, whichever comes first.
const (
	progressRows  = 1000
	progressEvery = 100 * time.Millisecond
)

// MaxFieldBytes caps one CSV field and MaxRowBytes one CSV row (record): a
// longer one stops the read with an error naming its line and column, so a
// broken or hostile file costs bounded time and memory.
const (
	MaxFieldBytes = 64 << 10
	MaxRowBytes   = 1 << 20
)

// errControl is the problem of a value that could break out of a header line.
var errControl = errors.New("value contains CR, LF or NUL, which would reach a header")

// row is one recipient that passed the row checks; data has no links yet.
type row struct {
	line int
	addr address.Address
	data templates.Data
}

// recipients reads a recipients CSV one row at a time.
type recipients struct {
	path  string
	f     *os.File
	count *countingReader
	limit *fieldLimiter
	r     *csv.Reader
	cols  []string // normalised header names; "" = ignored column
	email int      // index of the email column
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// openRecipients opens path and reads its header row, which must name an email column.
func openRecipients(path string) (*recipients, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open recipients: %w", err)
	}
	rs := &recipients{path: path, f: f, count: &countingReader{r: f}, email: -1}
	rs.limit = newFieldLimiter(rs.count, MaxFieldBytes, MaxRowBytes)
	rs.r = csv.NewReader(rs.limit)
	rs.r.ReuseRecord = true
	header, err := rs.r.Read()
	if err := rs.limitErr(); err != nil {
		f.Close()
		return nil, err
	}
	if err != nil {
		f.Close()
		if err == io.EOF {
			return nil, fmt.Errorf("%s:1: empty file: a header row naming an email column is required", path)
		}
		return nil, fmt.Errorf("%s:1: header: %w", path, err)
	}
	h, err := address.ReadHeader(path, header)
	if err != nil {
		f.Close()
		return nil, err
	}
	rs.cols, rs.email = h.Names, h.Address
	return rs, nil
}

// Close closes the file.
func (rs *recipients) Close() error { return rs.f.Close() }

// each calls fn for every data row, with either a checked row or its problem, until the
// file ends, ctx is done or fn returns false. It returns the rows read and the error
// that stopped it (nil at the end of the file).
func (rs *recipients) each(ctx context.Context, progress Progress, fn func(row, *RowError) bool) (int, error) {
	rows, lastRows, last := 0, 0, time.Now()
	for {
		if err := ctx.Err(); err != nil {
			return rows, err
		}
		rec, err := rs.r.Read()
		if err := rs.limitErr(); err != nil {
			return rows, err // the csv reader's view of a cut-off record is not trusted
		}
		if err == io.EOF {
			break
		}
		var pe *csv.ParseError
		if err != nil && !errors.As(err, &pe) {
			return rows, fmt.Errorf("read %s: %w", rs.path, err)
		}
		rows++
		var r row
		var rerr *RowError
		if pe != nil {
			rerr = rs.parseError(pe, rec)
		} else {
			line, _ := rs.r.FieldPos(0)
			r, rerr = rs.check(rec, line)
		}
		if !fn(r, rerr) {
			return rows, ctx.Err()
		}
		if progress != nil && (rows-lastRows >= progressRows || time.Since(last) >= progressEvery) {
			progress(rows, rs.count.n)
			lastRows, last = rows, time.Now()
		}
	}
	if progress != nil {
		progress(rows, rs.count.n)
	}
	return rows, nil
}

// limitErr returns the field or row that went over its cap, as a RowError
// naming the line and the column, or nil.
func (rs *recipients) limitErr() error {
	le := rs.limit.err
	if le == nil {
		return nil
	}
	field := fmt.Sprintf("column %d", le.column)
	if le.column > 0 && le.column <= len(rs.cols) && rs.cols[le.column-1] != "" {
		field += " (" + rs.cols[le.column-1] + ")"
	}
	if le.row {
		field = "row"
	}
	return RowError{File: rs.path, Line: le.line, Field: field, Err: le}
}

// parseError turns a CSV syntax or field-count error into the row's problem.
func (rs *recipients) parseError(pe *csv.ParseError, rec []string) *RowError {
	e := &RowError{File: rs.path, Line: pe.StartLine, Field: "csv", Err: pe.Err}
	if errors.Is(pe.Err, csv.ErrFieldCount) {
		e.Err = fmt.Errorf("%d fields, header has %d", len(rec), len(rs.cols))
	} else if pe.Line != pe.StartLine {
		// An unclosed quote runs on to the end of the file, taking the rows after it.
		e.Err = fmt.Errorf("%w (the quoted field runs on to line %d)", pe.Err, pe.Line)
	}
	if rs.email < len(rec) {
		e.rcpt = rec[rs.email]
	}
	return e
}

// headerColumns feed header values directly (the To display name); the
// rendered Subject is checked by templates.Render. CR or LF there is refused
// (never a header); elsewhere a line break is body text, and only NUL is refused.
var headerColumns = map[string]bool{"email": true, "first_name": true, "last_name": true}

// check parses the email, rejects control characters that could reach a
// header and builds the template data.
func (rs *recipients) check(rec []string, line int) (row, *RowError) {
	raw := rec[rs.email]
	addr, err := address.Parse(raw)
	if err != nil {
		return row{}, &RowError{File: rs.path, Line: line, Field: "email", Err: err, rcpt: raw}
	}
	r := row{line: line, addr: addr, data: templates.Data{Email: addr.String()}}
	for i, v := range rec {
		name := rs.cols[i]
		if name == "" {
			continue
		}
		if strings.ContainsRune(v, 0) || (headerColumns[name] && strings.ContainsAny(v, "\r\n")) {
			return row{}, &RowError{File: rs.path, Line: line, Field: name, Err: errControl, rcpt: raw}
		}
		v = strings.TrimSpace(v)
		switch name {
		case "email": // parsed above
		case "first_name":
			r.data.FirstName = v
		case "last_name":
			r.data.LastName = v
		case "company":
			r.data.Company = v
		case "job_title":
			r.data.JobTitle = v
		case "country":
			r.data.Country = v
		default:
			if r.data.Fields == nil {
				r.data.Fields = make(map[string]string)
			}
			r.data.Fields[name] = v
		}
	}
	return r, nil
}

// limitError is a field or a row of the CSV that passed its cap.
type limitError struct {
	line, column int  // where the field (or row) starts; columns count from 1
	row          bool // the row, not one field, is over
	max          int
}

func (e *limitError) Error() string {
	if e.row {
		return fmt.Sprintf("row longer than %d bytes (the cap of a recipients row)", e.max)
	}
	return fmt.Sprintf("field longer than %d bytes (the cap of a recipients field)", e.max)
}

// Lexer states of fieldLimiter.
const (
	fieldStart = iota // before a field's first byte
	inBare            // inside an unquoted field
	inQuoted          // inside a quoted field
	quoteSeen         // a quote inside a quoted field: its end, or the first of a pair
)

// fieldLimiter passes a CSV stream through while following its fields with a
// lexer of encoding/csv's default dialect (comma, quotes at a field's start,
// "" inside quotes), and fails the read once a field or a row passes its cap,
// before encoding/csv buffers it. It is an over-estimate, never an under-one:
// a quoted field's length counts its quotes.
type fieldLimiter struct {
	r                  io.Reader
	maxField, maxRow   int
	state              int
	field, rowLen      int // bytes of the current field and row so far
	line, column       int // physical line now, column of the current field
	fieldLine, rowLine int // where the current field and row started
	err                *limitError
}

func newFieldLimiter(r io.Reader, maxField, maxRow int) *fieldLimiter {
	return &fieldLimiter{r: r, maxField: maxField, maxRow: maxRow, line: 1, column: 1, fieldLine: 1, rowLine: 1}
}

// Read reads from the underlying reader and lexes what it got; past a cap it
// returns the bytes before the offending one and the limitError, then only
// the error.
func (l *fieldLimiter) Read(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	n, err := l.r.Read(p)
	for i, c := range p[:n] {
		if l.step(c) {
			return i, l.err
		}
	}
	return n, err
}

// step lexes one byte; it reports whether a cap was passed.
func (l *fieldLimiter) step(c byte) bool {
	endRecord := func() {
		l.state, l.field, l.rowLen, l.column = fieldStart, 0, 0, 1
		l.fieldLine, l.rowLine = l.line+1, l.line+1
	}
	nextField := func() {
		l.state, l.field = fieldStart, 0
		l.column++
		l.fieldLine = l.line
	}
	switch l.state {
	case fieldStart, inBare, quoteSeen:
		switch {
		case c == ',':
			nextField()
		case c == '\n':
			endRecord()
		case c == '\r': // a line end's first half, or (alone) a field byte: counted, state kept
			l.field++
		case c == '"' && l.state == fieldStart:
			l.state = inQuoted
			l.field++
		case c == '"' && l.state == quoteSeen: // "" inside quotes
			l.state = inQuoted
			l.field++
		default:
			if l.state == fieldStart {
				l.fieldLine = l.line
			}
			l.state = inBare // bytes after a closing quote make encoding/csv report the row
			l.field++
		}
	case inQuoted:
		if c == '"' {
			l.state = quoteSeen
		}
		l.field++
	}
	if c == '\n' {
		l.line++
	}
	l.rowLen++
	switch {
	case l.field > l.maxField:
		l.err = &limitError{line: l.fieldLine, column: l.column, max: l.maxField}
	case l.rowLen > l.maxRow:
		l.err = &limitError{line: l.rowLine, column: l.column, row: true, max: l.maxRow}
	}
	return l.err != nil
}
