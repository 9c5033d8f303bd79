package subject

import "fmt"

// Restrict keeps r.Address's data but stops all processing (Art. 18): no
// campaign mails the person until Unrestrict. Audited first.
func Restrict(d Deps, r Request) error {
	ref, err := r.check(d, "restrict")
	if err != nil {
		return err
	}
	if err := d.record(r, "subject.restrict", ref, nil); err != nil {
		return err
	}
	if err := d.Suppression.Restrict(r.Address, r.Reason); err != nil {
		return fmt.Errorf("subject restrict: %w", err)
	}
	return nil
}

// Unrestrict lifts a restriction; ErrNotRestricted when there was none
// (the request is audited either way, before the store is asked).
func Unrestrict(d Deps, r Request) error {
	ref, err := r.check(d, "unrestrict")
	if err != nil {
		return err
	}
	if err := d.record(r, "subject.unrestrict", ref, nil); err != nil {
		return err
	}
	ok, err := d.Suppression.Unrestrict(r.Address)
	if err != nil {
		return fmt.Errorf("subject unrestrict: %w", err)
	}
	if !ok {
		return ErrNotRestricted
	}
	return nil
}
