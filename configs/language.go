package configs

import (
	"strings"

	"github.com/postwarden/postwarden/suppression/pages/locale"
)

// checkLanguage records a language (a list's or a campaign's `language:`)
// that the recipient pages have no catalog for; "" (the browser's choice)
// is always fine.
func checkLanguage(d *decoder, key, code string) {
	if code != "" && !locale.Supported(code) {
		d.fieldErr(key, "%s is not a page language; want one of %s", Quote(code), strings.Join(locale.Languages, ", "))
	}
}
