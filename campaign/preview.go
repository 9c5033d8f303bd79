package campaign

import (
	"context"
	"errors"
	"fmt"

	"github.com/postwarden/postwarden/suppression/address"
)

// Preview is one recipient's message as Send would render it: data row n
// of the recipients file (1 = the first row after the header), with the
// links deps give (deps.Links is required; deps.Mailto optional). Nothing
// is checked against the stores and nothing is enqueued. With to set, the
// message goes to that address instead (its own unsubscribe link and
// Message-ID), with the row's data: a test send to the operator. skip is the
// legal basis's reason Send would leave the row out for ("" when it
// would not); a row that is not valid comes back as its RowError.
func Preview(ctx context.Context, spec Spec, deps Deps, n int, to string) (msg Message, skip string, err error) {
	var override address.Address
	if to != "" {
		if override, err = address.Parse(to); err != nil {
			return Message{}, "", fmt.Errorf("preview: test address %s: %w", address.Mask(to), err)
		}
	}
	if n < 1 {
		return Message{}, "", fmt.Errorf("preview: row %d: rows count from 1 (the first after the header)", n)
	}
	if deps.Links == nil {
		return Message{}, "", errors.New("preview: links are required")
	}
	s, errs := newRenderer(spec)
	if len(errs) == 0 {
		if err := spec.Templates.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return Message{}, "", errors.Join(errs...)
	}
	s.wire(deps)
	rs, err := openRecipients(spec.Recipients)
	if err != nil {
		return Message{}, "", err
	}
	defer rs.Close()
	var found bool
	var rowErr *RowError
	i := 0
	read, err := rs.each(ctx, nil, func(r row, rerr *RowError) bool {
		if i++; i < n {
			return true
		}
		found = true
		if rerr != nil {
			rowErr = rerr
			return false
		}
		// Rendered even when the legal basis would leave the row out: the
		// operator asked to see it; skip says what Send would do.
		skip = s.skip(r)
		addr := r.addr
		if override != (address.Address{}) {
			addr = override
		}
		to, key := addr.String(), addr.Key()
		body, rerr2 := s.render(nil, to, key, r.data, s.now())
		if rerr2 != nil {
			rowErr = &RowError{File: spec.Recipients, Line: r.line, Field: "template", Err: rerr2, rcpt: to}
			return false
		}
		msg = Message{Campaign: spec.ID, List: spec.List, Key: key, From: s.from, To: to, Body: body, Pool: spec.Pool}
		return false
	})
	switch {
	case err != nil:
		return Message{}, "", err
	case !found:
		return Message{}, "", fmt.Errorf("preview: %s has %d data rows, not %d", spec.Recipients, read, n)
	case rowErr != nil:
		return Message{}, "", *rowErr
	}
	return msg, skip, nil
}
