package configs

import _ "embed"

// The built-in double opt-in confirmation message (configs/templates/confirm.*):
// templates.Data with .Fields ConfirmURL, ListName, SenderName and ValidFor,
// the language's Lang, Dir and sentences (campaign/confirm fills them from the
// catalogs of suppression/pages/locale), and the usual UnsubscribeURL and
// PrivacyURL. The templates hold layout only; every word is in the catalogs.
var (
	//go:embed templates/confirm.html
	ConfirmHTML []byte
	//go:embed templates/confirm.txt
	ConfirmText []byte
)

// ConfirmSubject is the subject of the confirmation message, in the
// message's language. The English words only satisfy the templates' check
// that no subject renders empty; campaign/confirm always sets Subject.
const ConfirmSubject = `{{or .Fields.Subject "Please confirm your subscription"}}`
