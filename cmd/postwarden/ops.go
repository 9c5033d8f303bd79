package main

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/postwarden/postwarden/suppression/address"
)

// ops is the table of admin operations, by name: every op is here, so
// none depends on the order in which files' init functions run.
var ops = map[string]opSpec{
	"campaign.send":    {fn: opCampaignSend, creates: true},
	"campaign.pause":   {fn: opCampaignPause},
	"campaign.resume":  {fn: opCampaignResume},
	"campaign.status":  {fn: opCampaignStatus},
	"campaign.ls":      {fn: opCampaignList},
	"campaign.report":  {fn: opCampaignReport},
	"campaign.preview": {fn: opCampaignPreview, creates: true},

	"queue.ls":        {fn: opQueueList},
	"queue.show":      {fn: opQueueShow},
	"queue.cat":       {fn: opQueueCat},
	"queue.retry":     {fn: opQueueAct("retry")},
	"queue.hold":      {fn: opQueueAct("hold")},
	"queue.release":   {fn: opQueueAct("release")},
	"queue.delete":    {fn: opQueueAct("delete")},
	"queue.bounce":    {fn: opQueueAct("bounce")},
	"queue.stats":     {fn: opQueueStats},
	"queue.suspend":   {fn: opQueueSuspend, creates: true},
	"queue.suspended": {fn: opQueueSuspensions},
	"queue.resume":    {fn: opQueueResume},

	"suppress.add":    {fn: opSuppressAdd, creates: true},
	"suppress.remove": {fn: opSuppressRemove},
	"suppress.check":  {fn: opSuppressCheck},
	"suppress.ls":     {fn: opSuppressList},
	"suppress.import": {fn: opSuppressImport, creates: true},

	"subscribers.import": {fn: opSubscribersImport, creates: true},
	"subscribers.ls":     {fn: opSubscribersList},

	"subject.export":     {fn: opSubjectExport},
	"subject.erase":      {fn: opSubjectErase},
	"subject.restrict":   {fn: opSubjectRestrict(true)},
	"subject.unrestrict": {fn: opSubjectRestrict(false)},

	"audit.ls":     {fn: opAuditList},
	"audit.verify": {fn: opAuditVerify},

	"db.prune":    {fn: opDBPrune},
	"db.compact":  {fn: opDBCompact},
	"dkim.keygen": {fn: opDKIMKeygen, creates: true},

	"providers-live": {fn: opProvidersLive},

	"cluster.local": {fn: opClusterLocal},
}

// decodeArgs reads an op's arguments, refusing unknown fields.
func decodeArgs(req request, v any) error {
	if len(req.Args) == 0 {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(req.Args)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad arguments: %w", err)
	}
	return nil
}

// maskIf masks an address unless the caller asked to reveal it.
func maskIf(reveal bool, addr string) string {
	if reveal || addr == "" {
		return addr
	}
	return address.Mask(addr)
}

// maskTextIf masks every address in free text (SMTP replies quote them, in
// any case) unless the caller asked to reveal them.
func maskTextIf(reveal bool, text string) string {
	if reveal {
		return text
	}
	return address.MaskText(text)
}
