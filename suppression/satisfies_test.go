package suppression_test

import (
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/optin"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// The store is what the recipient pages consult and write.
var (
	_ unsubscribe.Suppressor = (*suppression.Store)(nil)
	_ optin.Suppressions     = (*suppression.Store)(nil)
)
