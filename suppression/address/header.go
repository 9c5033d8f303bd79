package address

import (
	"fmt"
	"strings"
)

// Header is the header row of an address list file (a recipients CSV, a
// suppression import, a subscribers import), read by the one rule every such
// file follows:
//   - a name is trimmed, loses a UTF-8 byte order mark (Excel writes one),
//     is lower-cased, and has spaces and hyphens turned into underscores
//     ("E-Mail Address" → "e_mail_address");
//   - an empty name (a trailing comma) marks a column that is ignored;
//   - a name given twice is refused: which copy holds the value is a guess;
//   - the address column is "email"; "address" and "target" are accepted as
//     its other names, and giving more than one of them is refused.
type Header struct {
	// Names are the normalised names by column; "" for an ignored column.
	Names []string
	// Address is the index of the address column.
	Address int
	index   map[string]int
}

// AddressColumns are the names of the address column, in the order they are
// preferred in messages.
var AddressColumns = []string{"email", "address", "target"}

// ReadHeader applies the header rule to row, the first row of file; errors
// name file and line 1.
func ReadHeader(file string, row []string) (*Header, error) {
	h := &Header{Names: make([]string, len(row)), Address: -1, index: make(map[string]int, len(row))}
	for i, raw := range row {
		name := NormaliseColumn(raw)
		if name == "" {
			continue
		}
		if _, dup := h.index[name]; dup {
			return nil, fmt.Errorf("%s:1: header: column %q appears twice", file, name)
		}
		h.index[name] = i
		h.Names[i] = name
	}
	var found []string
	for _, n := range AddressColumns {
		if i, ok := h.index[n]; ok {
			found = append(found, n)
			h.Address = i
		}
	}
	switch {
	case len(found) == 0:
		return nil, fmt.Errorf("%s:1: header: no email column (columns: %s)", file, strings.Join(h.Names, ", "))
	case len(found) > 1:
		return nil, fmt.Errorf("%s:1: header: columns %s all name the address; keep one", file, strings.Join(found, ", "))
	}
	return h, nil
}

// Column returns the index of the column named name (normalised), if any.
func (h *Header) Column(name string) (int, bool) {
	i, ok := h.index[NormaliseColumn(name)]
	return i, ok
}

// Field returns rec's value in the column named name, trimmed of spaces and
// tabs; "" when there is no such column or rec is short.
func (h *Header) Field(rec []string, name string) string {
	if i, ok := h.Column(name); ok && i < len(rec) {
		return strings.Trim(rec[i], " \t")
	}
	return ""
}

var columnReplacer = strings.NewReplacer(" ", "_", "-", "_")

// NormaliseColumn is the header rule for one name (see Header).
func NormaliseColumn(name string) string {
	name = strings.TrimSpace(strings.TrimPrefix(name, "\uFEFF"))
	return columnReplacer.Replace(strings.ToLower(name))
}
