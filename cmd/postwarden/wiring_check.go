package main

// Compile-time checks that what main wires satisfies the interface each
// consumer declares, for every pair whose implementation may not import its
// consumer (layering) or lives here. A change to either side fails the
// build here, next to the wiring, instead of at the call that passes it.
// Pairs inside the library layer are checked in the implementation's tests
// (suppression, suppression/subscribers, mta/verp).

import (
	"github.com/postwarden/postwarden/campaign"
	"github.com/postwarden/postwarden/campaign/brakes"
	"github.com/postwarden/postwarden/campaign/confirm"
	"github.com/postwarden/postwarden/campaign/report"
	"github.com/postwarden/postwarden/campaign/shares"
	"github.com/postwarden/postwarden/mta"
	"github.com/postwarden/postwarden/mta/inbound"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/gate"
	"github.com/postwarden/postwarden/suppression/optin"
	"github.com/postwarden/postwarden/suppression/retention"
	"github.com/postwarden/postwarden/suppression/sealed"
	"github.com/postwarden/postwarden/suppression/subject"
	"github.com/postwarden/postwarden/suppression/subscribers"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// queue's collaborators.
var (
	_ queue.Deliverer    = (*mta.Sender)(nil)
	_ queue.Suppressions = deliveryGate{}
	_ queue.Observer     = (*metrics)(nil)
)

// campaign/report's collaborators (campaign report).
var (
	_ report.Queue  = reportQueue{}
	_ report.Audit  = (*audit.Log)(nil)
	_ report.Brakes = (*brakes.Brake)(nil)
)

// campaign's collaborators (campaign send).
var (
	_ campaign.Suppressions = (*gate.Gate)(nil)
	_ campaign.Links        = links{}
	_ campaign.MailtoLinks  = links{}
	_ campaign.Dictionaries = (*queue.Store)(nil)
	_ campaign.Backlog      = (*queue.Store)(nil)
	_ campaign.Records      = (*queue.Store)(nil)
)

// campaign/brakes' collaborators (brakes, campaign pause and resume).
var (
	_ brakes.Counter = brakeQueue{}
	_ brakes.Pauser  = brakeQueue{}
	_ brakes.Store   = brakeQueue{}
	_ brakes.Auditor = brakeAuditor{}
)

// mta/inbound's collaborators (smtp_listen).
var (
	_ inbound.MailtoDecoder = (*unsubscribe.Tokens)(nil)
	_ inbound.BounceSink    = queueBounces{}
	_ inbound.Suppressor    = auditedSuppressor{}
	_ inbound.Unsubscriber  = mailUnsubscriber{}
	_ inbound.Events        = (*queue.Store)(nil)
)

// suppression/unsubscribe's collaborators (/u/ and mailto unsubscribes).
var (
	_ unsubscribe.Events         = (*queue.Store)(nil)
	_ unsubscribe.Timings        = (*queue.Store)(nil)
	_ unsubscribe.Lists          = listsAdapter{}
	_ unsubscribe.ConsentHistory = listsAdapter{}
	_ unsubscribe.Auditor        = httpAuditor{}
)

// suppression/optin's collaborators (/subscribe, /c/).
var (
	_ optin.Mailer       = (*confirm.Mailer)(nil)
	_ optin.Suppressions = (*gate.Gate)(nil)
	_ optin.Lifter       = (*gate.Gate)(nil)
	_ optin.Auditor      = httpAuditor{}
)

// campaign/confirm's collaborators (the double opt-in confirmation).
var (
	_ confirm.Queue = confirmQueue{}
	_ confirm.Links = links{}
)

// suppression/subject's and suppression/retention's collaborators
// (subject export|erase|restrict, db prune|compact).
var (
	_ subject.Queue         = subjectQueue{}
	_ subject.Suppression   = (*suppression.Store)(nil)
	_ subject.Subscribers   = (*subscribers.Store)(nil)
	_ subject.Audit         = (*audit.Log)(nil)
	_ subject.Outbox        = mta.Outbox{}
	_ subject.Indexer       = (*sealed.Box)(nil)
	_ retention.Queue       = (*queue.Store)(nil)
	_ retention.Campaigns   = (*shares.Coordinator)(nil)
	_ retention.Outbox      = mta.Outbox{}
	_ retention.Subscribers = (*subscribers.Store)(nil)
	_ retention.Audit       = (*audit.Log)(nil)
	_ retention.Compacter   = (*queue.Store)(nil)
	_ retention.Compacter   = (*suppression.Store)(nil)
	_ retention.Compacter   = (*subscribers.Store)(nil)
)

// suppression's collaborator (suppress import).
var _ suppression.ImportAuditor = importAuditor{}
