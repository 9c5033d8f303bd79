package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/queue"
)

type suspendArgs struct {
	Domain   string `json:"domain,omitempty"`
	Campaign string `json:"campaign,omitempty"`
	Duration string `json:"duration,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

func (a suspendArgs) selector() (queue.Selector, error) {
	if a.Domain == "" && a.Campaign == "" {
		return queue.Selector{}, errors.New("--domain or --campaign is required")
	}
	return queue.Selector{Domain: a.Domain, Campaign: a.Campaign}.Normalize()
}

func opQueueSuspend(ctx context.Context, e *env, req request, o *out) error {
	var a suspendArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	sel, err := a.selector()
	if err != nil {
		return fmt.Errorf("queue suspend: %w", err)
	}
	if strings.TrimSpace(a.Reason) == "" {
		return errors.New("queue suspend: --reason is required")
	}
	d, err := configs.ParseDuration(a.Duration)
	if err != nil || d <= 0 {
		return fmt.Errorf("queue suspend: --duration %q: want a positive duration such as 30m, 2h, 1d", a.Duration)
	}
	until := time.Now().Add(d)
	if err := e.record(req, "queue.suspend", sel.String(), a.Reason, map[string]string{"duration": a.Duration, "until": until.UTC().Format(time.RFC3339)}); err != nil {
		return err
	}
	if err := e.queue.Suspend(sel, until, a.Reason); err != nil {
		return err
	}
	e.log.Info().Str("who", req.Who).Str("action", "suspend").Str("domain", a.Domain).Str("campaign", a.Campaign).
		Dur("duration", d).Str("reason", a.Reason).Msg("queue admin action")
	sus, err := e.queue.Suspensions()
	if err != nil {
		return err
	}
	if len(sus) == 0 {
		return nil
	}
	newest := sus[0]
	for _, sp := range sus[1:] {
		if sp.Created.After(newest.Created) {
			newest = sp
		}
	}
	return o.Record(newest)
}

func opQueueSuspensions(ctx context.Context, e *env, req request, o *out) error {
	sus, err := e.queue.Suspensions()
	if err != nil {
		return err
	}
	for _, sp := range sus {
		if err := o.Record(sp); err != nil {
			return err
		}
	}
	return nil
}

func opQueueResume(ctx context.Context, e *env, req request, o *out) error {
	var a suspendArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	sel, err := a.selector()
	if err != nil {
		return fmt.Errorf("queue resume: %w", err)
	}
	sus, err := e.queue.Suspensions()
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(sus, func(sp queue.Suspension) bool { return sp.Selector == sel }) {
		return no("%s was not suspended", sel)
	}
	if err := e.record(req, "queue.resume", sel.String(), a.Reason, nil); err != nil {
		return err
	}
	ok, err := e.queue.Resume(sel)
	if err != nil {
		return err
	}
	e.log.Info().Str("who", req.Who).Str("action", "resume").Str("domain", a.Domain).Str("campaign", a.Campaign).
		Bool("was_suspended", ok).Msg("queue admin action")
	if !ok {
		return no("%s was not suspended", sel)
	}
	return o.Record(map[string]any{"resumed": sel.String()})
}
