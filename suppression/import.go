package suppression

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/bbolt"
)

// importBatch is how many entries Import writes per transaction (one fsync each).
const importBatch = 1000

// ImportResult counts what Import did.
type ImportResult struct {
	Rows   int     // data rows read (header excluded)
	Added  int     // entries written (new or updated)
	Errors []error // one per skipped row, each naming name:line
}

// Import reads a CSV with a header row and adds one entry per row. The
// target column is "email" (or "address" / "target"; "@domain" allowed);
// optional columns are "list", "reason", "source" and "note"; empty values
// come from def, and Source defaults to "import:"+basename(name). Targets
// and notes are sealed as Add seals them; a row never changes an erased
// address. Invalid rows are skipped and reported in ImportResult.Errors; the
// returned error is for problems that stop the whole import (no header,
// unreadable input, store).
func (s *Store) Import(r io.Reader, name string, def Entry) (ImportResult, error) {
	var res ImportResult
	if def.Source == "" {
		def.Source = "import:" + filepath.Base(name)
	}
	if def.Time.IsZero() {
		def.Time = time.Now()
	}
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1 // we report width mismatches ourselves, per row
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return res, fmt.Errorf("import %s: empty file, want a header row", name)
	}
	if err != nil {
		return res, fmt.Errorf("import %s: header: %w", name, err)
	}
	col := map[string]int{}
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(h, "\ufeff"))) // Excel writes a BOM
		if _, dup := col[h]; !dup {
			col[h] = i
		}
	}
	target := -1
	for _, n := range []string{"email", "address", "target"} {
		if i, ok := col[n]; ok {
			target = i
			break
		}
	}
	if target < 0 {
		return res, fmt.Errorf("import %s:1: header has no \"email\" (or \"address\", \"target\") column", name)
	}
	field := func(rec []string, n string) string {
		if i, ok := col[n]; ok && i < len(rec) {
			return strings.Trim(rec[i], " \t")
		}
		return ""
	}
	or := func(v, d string) string {
		if v == "" {
			return d
		}
		return v
	}

	batch := make([]Entry, 0, importBatch)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		n := 0
		err := s.update(func(tx *bbolt.Tx) error {
			b := tx.Bucket(bucketEntries)
			n = 0
			for _, e := range batch {
				wrote, err := s.put(b, e)
				if err != nil {
					return err
				}
				if wrote {
					n++
				}
			}
			return nil
		})
		batch = batch[:0]
		if err != nil {
			return fmt.Errorf("import %s: write: %w", name, err)
		}
		res.Added += n
		return nil
	}

	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		var pe *csv.ParseError
		if errors.As(err, &pe) {
			res.Rows++
			res.Errors = append(res.Errors, fmt.Errorf("%s:%d: %w", name, pe.StartLine, pe.Err))
			continue
		}
		if err != nil {
			return res, fmt.Errorf("import %s: read: %w", name, err)
		}
		res.Rows++
		line, _ := cr.FieldPos(0)
		if len(rec) != len(header) {
			res.Errors = append(res.Errors, fmt.Errorf("%s:%d: row has %d fields, header has %d", name, line, len(rec), len(header)))
			continue
		}
		raw := strings.Trim(rec[target], " \t")
		if raw == "" {
			res.Errors = append(res.Errors, fmt.Errorf("%s:%d: %s is empty", name, line, header[target]))
			continue
		}
		e, err := normalize(Entry{
			Target: raw,
			List:   or(field(rec, "list"), def.List),
			Reason: Reason(or(field(rec, "reason"), string(def.Reason))),
			Source: or(field(rec, "source"), def.Source),
			Note:   or(field(rec, "note"), def.Note),
			Time:   def.Time,
		})
		if err != nil {
			res.Errors = append(res.Errors, fmt.Errorf("%s:%d: %w", name, line, err))
			continue
		}
		if batch = append(batch, e); len(batch) == importBatch {
			if err := flush(); err != nil {
				return res, err
			}
		}
	}
	if err := flush(); err != nil {
		return res, err
	}
	s.log.Info().Str("file", filepath.Base(name)).Int("rows", res.Rows).Int("added", res.Added).
		Int("errors", len(res.Errors)).Msg("suppressions imported")
	return res, nil
}
