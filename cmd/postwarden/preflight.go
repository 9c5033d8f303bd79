package main

// Preflight: `campaign validate` and `campaign send` run mta/preflight's
// checks; `check-dns` runs its DNS checks of one domain. This file wires the
// config into it and prints what it finds.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/campaign"
	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/mta/preflight"
)

// preflightTimeout bounds all the checks of one preflight.
const preflightTimeout = 30 * time.Second

// newPreflight builds the checker of cfg: its resolver, its sending
// addresses, its keys (those whose file exists; the others are pending).
// For a campaign, capture mode skips the DNS checks as offline does;
// check-dns asks the DNS whatever the mode.
func (c *cli) newPreflight(cfg *configs.Server, offline, forCampaign bool) (*preflight.Checker, error) {
	pc := preflight.Config{
		Resolver:     cfg.Delivery.Resolver,
		Offline:      offline,
		Capture:      forCampaign && cfg.Delivery.Mode == configs.ModeCapture,
		Hostname:     cfg.Hostname,
		BounceDomain: cfg.BounceDomain,
		PublicURL:    cfg.PublicURL,
	}
	pc.Sources, pc.Relay = spfSenders(cfg)
	for _, k := range cfg.DKIM {
		if _, err := os.Stat(k.KeyFile); errors.Is(err, fs.ErrNotExist) {
			pc.PendingKeys = append(pc.PendingKeys, preflight.KeyName{Domain: k.Domain, Selector: k.Selector})
			continue
		}
		key, _, err := dkim.LoadOrCreate(k.KeyFile, k.Domain, k.Selector, k.Type)
		if err != nil {
			return nil, fmt.Errorf("dkim %s/%s: %w", k.Domain, k.Selector, err)
		}
		pc.Keys = append(pc.Keys, key)
	}
	log, err := c.logger(zerolog.WarnLevel)
	if err != nil {
		return nil, err
	}
	return preflight.New(pc, log.With().Str("component", "preflight").Logger())
}

// campaignPreflight runs the checks of a loaded campaign.
func (c *cli) campaignPreflight(ctx context.Context, cfg *configs.Server, spec campaign.Spec, offline bool) ([]preflight.Check, error) {
	chk, err := c.newPreflight(cfg, offline, true)
	if err != nil {
		return nil, fmt.Errorf("preflight: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, preflightTimeout)
	defer cancel()
	return chk.Campaign(ctx, preflight.Message{
		Templates: spec.Templates, From: spec.From, ReplyTo: spec.ReplyTo, PrivacyURL: spec.PrivacyURL,
		ListID: spec.List + "." + cfg.Hostname,
	}), nil
}

// printPreflight writes checks as lines (status, check, subject, what was
// found, then what to publish or change), or as JSON objects with --json;
// problemsOnly leaves the OK ones out.
func (c *cli) printPreflight(w io.Writer, checks []preflight.Check, problemsOnly bool) {
	for _, ch := range checks {
		if problemsOnly && ch.Status == preflight.OK {
			continue
		}
		if c.jsonOut {
			b, _ := json.Marshal(ch)
			fmt.Fprintf(w, "%s\n", b)
			continue
		}
		fmt.Fprintf(w, "%-4s %-10s %s: %s\n", ch.Status, ch.Check, oneLine(ch.Subject, 100), ch.Detail)
		if ch.Fix != "" {
			fmt.Fprintf(w, "     %-10s %s\n", "fix:", ch.Fix)
		}
	}
}

// countFailed is the number of FAIL checks.
func countFailed(checks []preflight.Check) int {
	n := 0
	for _, ch := range checks {
		if ch.Status == preflight.Fail {
			n++
		}
	}
	return n
}

// sendPreflight runs the checks before a send, in this process (beside a
// daemon too): their WARN and FAIL lines go to stderr, and a FAIL refuses the
// send (exit 2) unless force. A campaign that does not load is left to the
// send itself to report; ran says whether the checks ran.
func (c *cli) sendPreflight(ctx context.Context, file string, offline, force bool) (ran bool, err error) {
	cfg, err := c.loadConfig()
	if err != nil {
		return false, nil
	}
	spec, _, err := loadSpec(&env{cfg: cfg, msgIDKey: []byte("preflight")}, file)
	if err != nil || spec.Templates == nil || spec.Templates.Validate() != nil {
		return false, nil // the send reports it
	}
	checks, err := c.campaignPreflight(ctx, cfg, spec, offline)
	if err != nil {
		return false, err
	}
	c.printPreflight(c.stderr, checks, true)
	n := countFailed(checks)
	switch {
	case n == 0:
		return true, nil
	case force:
		fmt.Fprintf(c.stderr, "note: sending despite %d preflight failure(s) (--force)\n", n)
		return true, nil
	}
	return true, &exitError{code: 2, msg: fmt.Sprintf("campaign send %s: refused: %d preflight check(s) failed (above: what to publish or change); `campaign validate` shows them all; --force sends anyway", file, n)}
}
