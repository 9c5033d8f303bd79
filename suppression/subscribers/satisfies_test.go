package subscribers_test

import (
	"github.com/postwarden/postwarden/suppression/optin"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

// The consent store is what double opt-in writes.
var _ optin.Store = (*subscribers.Store)(nil)
