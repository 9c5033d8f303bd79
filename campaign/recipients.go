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
	rs.r = csv.NewReader(rs.count)
	rs.r.ReuseRecord = true
	header, err := rs.r.Read()
	if err != nil {
		f.Close()
		if err == io.EOF {
			return nil, fmt.Errorf("%s:1: empty file: a header row naming an email column is required", path)
		}
		return nil, fmt.Errorf("%s:1: header: %w", path, err)
	}
	rs.cols = make([]string, len(header))
	seen := make(map[string]bool, len(header))
	for i, h := range header {
		name := normaliseColumn(h)
		if name == "" {
			continue // an unnamed column (a trailing comma) is ignored
		}
		if seen[name] {
			f.Close()
			return nil, fmt.Errorf("%s:1: header: column %q appears twice", path, name)
		}
		seen[name] = true
		rs.cols[i] = name
		if name == "email" {
			rs.email = i
		}
	}
	if rs.email < 0 {
		f.Close()
		return nil, fmt.Errorf("%s:1: header: no email column (columns: %s)", path, strings.Join(rs.cols, ", "))
	}
	return rs, nil
}

var columnReplacer = strings.NewReplacer(" ", "_", "-", "_")

// normaliseColumn trims a header name, strips a UTF-8 BOM, lower-cases it and turns spaces and hyphens into underscores.
func normaliseColumn(h string) string {
	h = strings.TrimSpace(strings.TrimPrefix(h, "\uFEFF"))
	return columnReplacer.Replace(strings.ToLower(h))
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
