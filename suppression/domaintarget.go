package suppression

import "strings"

// IsDomainTarget reports whether a target names a whole domain
// ("@example.com", a company) rather than one address (a person).
func IsDomainTarget(target string) bool { return strings.HasPrefix(target, "@") }
