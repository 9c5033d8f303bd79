package adaptive

import (
	"regexp"
	"time"
)

// Patterns of the shipped rules, matched without case.
var (
	tss04      = regexp.MustCompile(`(?i)\[TSS04\]`)
	tss09      = regexp.MustCompile(`(?i)\[TSS09\]`)
	msBlock    = regexp.MustCompile(`(?i)\bS31[0-9]{2}\b|block ?list`)
	unsolicit  = regexp.MustCompile(`(?i)unsolicited`)
	blockList  = regexp.MustCompile(`(?i)spamhaus|spamcop|block ?list|black ?list|blocked using|\bdnsbl\b|\brbl\b|\bS3150\b`)
	tooManyCon = regexp.MustCompile(`(?i)too many (concurrent |simultaneous |open )?(connections|sessions|smtp sessions)|connection (limit|rate limit)|max(imum)? (number of )?connections`)
	rateWords  = regexp.MustCompile(`(?i)\brate\b|rate.?limit|throttl|too many (messages|mails|emails|recipients)|\bvolume\b|slow down`)
)

// DefaultRules returns the shipped reply rules, most specific first (the first
// match wins): the providers' own replies named in issue 12, then generic ones.
// Each call returns a fresh slice, so a caller may put config rules before it.
//
// Not shipped on purpose: Gmail 550 5.7.26/5.7.27 and Yahoo 554 5.7.9 judge a
// message or its From domain (authentication, content), not the sending IP, so
// slowing the source would not help and would hold other campaigns' mail.
func DefaultRules() []Rule {
	return []Rule{
		// Gmail (https://support.google.com/a/answer/3726730).
		{Provider: "google", Code: 421, Enhanced: "4.7.28",
			Action: Action{Kind: Throttle, Factor: 0.5, For: 30 * time.Minute},
			Note:   "Gmail: unusual rate of unsolicited mail from this IP, temporarily rate limited"},
		{Provider: "google", Code: 421, Enhanced: "4.7.0",
			Action: Action{Kind: Throttle, Factor: 0.5, For: 15 * time.Minute},
			Note:   "Gmail: try again later (suspicious or low-reputation traffic)"},
		{Provider: "google", Code: 550, Enhanced: "5.7.1", Pattern: unsolicit,
			Action: Action{Kind: Throttle, Factor: 0.5, For: time.Hour},
			Note:   "Gmail: message likely unsolicited mail"},

		// Microsoft 365 and Outlook.com (https://sendersupport.olc.protection.outlook.com).
		// 4.7.650 says the IP is rate limited for its reputation: more
		// attempts only deepen it, so the pair backs off entirely for a while
		// (PowerMTA's backoff mode), then resumes at full limits.
		{Provider: "microsoft", Code: 451, Enhanced: "4.7.650",
			Action: Action{Kind: SuspendPair, For: 15 * time.Minute},
			Note:   "Microsoft: temporarily rate limited due to IP reputation; backing off"},
		{Provider: "microsoft", Code: 550, Enhanced: "5.7.1", Pattern: msBlock,
			Action: Action{Kind: SuspendPair, For: time.Hour},
			Note:   "Microsoft: sending IP's network on the block list (S3150)"},
		{Provider: "microsoft", Code: 550, Enhanced: "5.7.708",
			Action: Action{Kind: SuspendPair, For: time.Hour},
			Note:   "Microsoft: traffic not accepted from this IP"},

		// Yahoo and AOL (https://senders.yahooinc.com/smtp-error-codes).
		{Provider: "yahoo", Code: 421, Enhanced: "4.7.0", Pattern: tss04,
			Action: Action{Kind: Throttle, Factor: 0.5, For: 30 * time.Minute},
			Note:   "Yahoo: deferred for unexpected volume or user complaints (TSS04)"},
		{Provider: "yahoo", Code: 553, Enhanced: "5.7.2", Pattern: tss09,
			Action: Action{Kind: SuspendPair, For: 4 * time.Hour},
			Note:   "Yahoo: all messages from this IP permanently deferred (TSS09)"},

		// Generic, any provider.
		{Code: 5, Pattern: blockList,
			Action: Action{Kind: SuspendPair, For: time.Hour},
			Note:   "any provider: sending IP on a block list (5yz naming Spamhaus, a blocklist or blacklist)"},
		{Pattern: tooManyCon,
			Action: Action{Kind: Throttle, Target: Connections, Factor: 0.5, For: 15 * time.Minute},
			Note:   "any provider: too many connections"},
		{Code: 4, Pattern: rateWords,
			Action: Action{Kind: Throttle, Factor: 0.5, For: 15 * time.Minute},
			Note:   "any provider: 4yz naming a rate, volume or throttling"},
		{Code: 421,
			Action: Action{Kind: Throttle, Factor: 0.5, For: 15 * time.Minute},
			Note:   "any provider: 421 service not available, closing the channel (most often to slow a sender)"},
	}
}
