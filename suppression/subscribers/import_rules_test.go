package subscribers

import (
	"errors"
	"testing"
	"time"
)

func TestImportSource(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "import"},
		{"  ", "import"},
		{"import", "import"},
		{"import:crm", "import:crm"},
		{" crm ", "import:crm"},
		{"importer", "import:importer"},
	} {
		if got := importSource(tc.in); got != tc.want {
			t.Errorf("importSource(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestImportRefusal(t *testing.T) {
	consented := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name      string
		last      []byte
		consented time.Time
		want      error
	}{
		{"no history, consent", nil, consented, nil},
		{"no history, legitimate interest", nil, time.Time{}, nil},
		{"unsubscribed", []byte{codeUnsubscribed}, consented, ErrUnsubscribed},
		{"unsubscribed, legitimate interest", []byte{codeUnsubscribed}, time.Time{}, ErrUnsubscribed},
		{"confirmed", []byte{codeConfirmed}, consented, ErrExists},
		{"pending, consent", []byte{codeSubscribed}, consented, nil},
		{"pending, legitimate interest", []byte{codeSubscribed}, time.Time{}, ErrExists},
		{"resubscribed, consent", []byte{codeResubscribed}, consented, nil},
		{"imported, consent", []byte{codeImportedLegitimate}, consented, nil},
		{"imported, legitimate interest", []byte{codeImportedLegitimate}, time.Time{}, ErrExists},
	} {
		if got := importRefusal(tc.last, tc.consented); !errors.Is(got, tc.want) || (got == nil) != (tc.want == nil) {
			t.Errorf("%s: importRefusal = %v, want %v", tc.name, got, tc.want)
		}
	}
}
