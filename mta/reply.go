package mta

import (
	"regexp"
	"strings"
)

// remoteQueueIDs find the id a receiving server gave a message in its 250
// reply to the final dot (RFC 5321 §4.2 leaves the text free; these are the
// forms the common servers write). The first that matches wins.
var remoteQueueIDs = []*regexp.Regexp{
	regexp.MustCompile(`(?i)\bqueued as ([0-9A-Za-z]{5,})\b`),                                                      // Postfix: "Ok: queued as 4Bq1xY2ZzPz1"
	regexp.MustCompile(`(?i)\bInternalId=([0-9]+)`),                                                                // Microsoft: "<msgid> [InternalId=…, Hostname=…] Queued mail for delivery"
	regexp.MustCompile(`(?i)\bOK\s+[0-9]{9,11}\s+(\S+)\s+-\s+gsmtp\b`),                                             // Gmail: "OK  1733512345 d2e1a72f…si123.456 - gsmtp"
	regexp.MustCompile(`(?i)\bid=([0-9A-Za-z]+-[0-9A-Za-z]+-[0-9A-Za-z]+)\b`),                                      // Exim: "OK id=1tJ5xY-000ABC-1Z"
	regexp.MustCompile(`^(?:[245]\.[0-9]{1,3}\.[0-9]{1,3}\s+)?([0-9A-Za-z]{12,16}) Message accepted for delivery`), // Sendmail
}

// RemoteQueueID returns the receiving server's queue id for a message from
// its 250 reply ("" when the reply names none), for `queue show`: the id an
// operator quotes to the remote's postmaster.
func RemoteQueueID(reply string) string {
	reply = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(reply), "250"))
	for _, re := range remoteQueueIDs {
		if m := re.FindStringSubmatch(reply); m != nil {
			return m[1]
		}
	}
	return ""
}
