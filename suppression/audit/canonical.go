package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strconv"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// Canonical returns the bytes an entry's Hash is computed over.
//
// The encoding is RFC 8785 (JSON Canonicalization Scheme) applied to one JSON
// object holding every field of the entry except "hash", which looks like
//
//	{"action":"…","details":{…},"prev":"…","reason":"…","seq":N,"target":"…","time":"…","who":"…"}
//
// in detail:
//   - keys are sorted by their UTF-16 code units (RFC 8785 §3.2.3): the fixed
//     keys are ASCII and appear in the order above; the keys of "details" are
//     sorted the same way; "details" is {} when there are none;
//   - no whitespace between tokens;
//   - strings escape only '"', '\' and the control characters U+0000–U+001F,
//     as \b \t \n \f \r or \u00xx (lower-case hex); everything else, including
//     '<', '>', '&', U+2028 and non-ASCII letters, is written as plain UTF-8
//     (RFC 8785 §3.2.2.2); invalid UTF-8 is written as U+FFFD (Append stores
//     it that way, so the stored entry and the hashed one agree);
//   - "seq" is a JSON integer in decimal (exact below 2^53, RFC 8785 §3.2.2.3);
//   - "time" is the UTC time in Go's RFC 3339 form with nanoseconds and
//     trailing zeros of the fraction removed ("2026-03-01T09:30:00.12Z",
//     "2026-03-01T09:30:00Z"): exactly the "time" string stored in the record.
//
// Hash is the lower-case hex SHA-256 of these bytes, and each entry's "prev"
// is the previous entry's "hash" ("" for entry 1; the checkpoint's hash after
// a prune). A stored record is this object plus "hash", so an auditor can
// recompute the chain from `postwarden audit ls --json` with any RFC 8785
// implementation, or in Python (identical unless a details key lies above
// U+FFFF):
//
//	c = json.dumps({k: v for k, v in rec.items() if k != "hash"},
//	               sort_keys=True, separators=(",", ":"), ensure_ascii=False)
//	assert hashlib.sha256(c.encode()).hexdigest() == rec["hash"]
func Canonical(e Entry) []byte {
	b := make([]byte, 0, 256)
	b = append(b, `{"action":`...)
	b = appendString(b, e.Action)
	b = append(b, `,"details":{`...)
	keys := make([]string, 0, len(e.Details))
	for k := range e.Details {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareUTF16)
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = appendString(b, e.Details[k])
	}
	b = append(b, `},"prev":`...)
	b = appendString(b, e.Prev)
	b = append(b, `,"reason":`...)
	b = appendString(b, e.Reason)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	b = append(b, `,"target":`...)
	b = appendString(b, e.Target)
	b = append(b, `,"time":`...)
	b = appendString(b, e.Time.UTC().Format(time.RFC3339Nano))
	b = append(b, `,"who":`...)
	b = appendString(b, e.Who)
	return append(b, '}')
}

// Hash returns the lower-case hex SHA-256 of Canonical(e); e.Hash is ignored.
func Hash(e Entry) string {
	sum := sha256.Sum256(Canonical(e))
	return hex.EncodeToString(sum[:])
}

// appendString writes s as an RFC 8785 JSON string.
func appendString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			b = utf8.AppendRune(b, utf8.RuneError)
		case r == '"' || r == '\\':
			b = append(b, '\\', byte(r))
		case r == '\b':
			b = append(b, '\\', 'b')
		case r == '\t':
			b = append(b, '\\', 't')
		case r == '\n':
			b = append(b, '\\', 'n')
		case r == '\f':
			b = append(b, '\\', 'f')
		case r == '\r':
			b = append(b, '\\', 'r')
		case r < 0x20:
			b = append(b, '\\', 'u', '0', '0', hexDigits[r>>4], hexDigits[r&0xf])
		default:
			b = append(b, s[i:i+n]...)
		}
		i += n
	}
	return append(b, '"')
}

// compareUTF16 orders strings by their UTF-16 code units (RFC 8785 §3.2.3).
func compareUTF16(a, b string) int {
	return slices.Compare(utf16.Encode([]rune(a)), utf16.Encode([]rune(b)))
}
