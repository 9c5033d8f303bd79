package configs

import _ "embed"

// The built-in double opt-in confirmation message (configs/templates/confirm.*):
// templates.Data with .Fields ConfirmURL, ListName, SenderName and ValidFor,
// and the usual UnsubscribeURL and PrivacyURL.
var (
	//go:embed templates/confirm.html
	ConfirmHTML []byte
	//go:embed templates/confirm.txt
	ConfirmText []byte
)

// ConfirmSubject is the subject of the confirmation message.
const ConfirmSubject = "Please confirm your subscription to {{.Fields.ListName}}"
