// Package adaptive learns from delivery replies which sending source (IP or
// virtual MTA) must slow down or stop with which mailbox provider (issue 12,
// adaptive throttling).
//
// A table of Rules (provider, reply code, RFC 3463 enhanced code prefix, text
// pattern → Action) is read in order and the first match wins: DefaultRules
// ships the providers' own replies (Gmail 421 4.7.28, Microsoft 451 4.7.650
// and 550 5.7.1 S3150, Yahoo 421 4.7.0 [TSS04] and 553 5.7.2 [TSS09], …)
// before generic ones; configs/providers.yaml ships the same table as its
// rules: list (a test keeps them equal), and an operator's rules (ParseRule,
// from delivery.providers) go before them.
//
// State machine of a (source, provider) pair, all times from Config.Now:
//
//	normal (factors 1) --Throttle--> throttled: rate and/or connections factor ×Factor
//	                                 (never below MinFactor), held for max(For, RecoverAfter)
//	throttled --matching reply within Cooldown--> throttled, hold restarts, factor unchanged
//	throttled --matching reply after Cooldown--> lowered again, hold restarts
//	throttled --RecoverAfter with no matching reply--> factors ×RecoverStep (capped at 1),
//	                                 one step per clean period, back to normal at 1
//	any --SuspendPair--> pair suspended until now+For (Limits returns a Hold; messages
//	                     wait, attempts are not spent, max_age still applies); it ends at its time
//	any --SuspendSource--> the source suspended for every provider until now+For
//
// Only matching failures count against a pair; a clean period is one without
// them, so an idle pair recovers as well as a busy one. A burst of replies to
// deliveries in flight together counts once (Cooldown). A suspension of one
// source leaves the pool's others usable (Pool.Choose); a whole pool held for a
// provider gives ok=false and its messages for that provider wait.
//
// Every change (Change) is logged with the rule's note and the reply that
// caused it, addresses masked (warn for a suspension, info otherwise), counted
// (Changes) and handed to Config.OnChange; State gives the rows of
// `providers ls`. Recovery steps and ends of suspensions are settled when the
// pair is next looked at (Limits, Observe, State): each is then logged with the
// time it fell due and the cause it undoes. The package keeps no durable state and imports no metrics
// library: the caller exports Changes and State as Prometheus series.
package adaptive
