package main

// Sign-up, double opt-in and the consent store's admin verbs: the wiring of
// suppression/optin and the preference page into serve, of the confirmation
// mailer (campaign/confirm: built-in templates → queue → DKIM → MTA, like
// every message), and `postwarden subscribers import|ls`
// (suppression/subscribers/importer, the consent store).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/postwarden/postwarden/campaign/confirm"
	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression/httplimit"
	"github.com/postwarden/postwarden/suppression/optin"
	"github.com/postwarden/postwarden/suppression/pages"
	"github.com/postwarden/postwarden/suppression/subscribers"
	"github.com/postwarden/postwarden/suppression/subscribers/importer"
	"github.com/postwarden/postwarden/suppression/unsubscribe"
)

// mountPages puts the recipient pages on mux: /u/ (unsubscribe and
// preferences), /subscribe and /c/ (sign-up and double opt-in).
func (e *env) mountPages(mux *http.ServeMux, log zerolog.Logger) error {
	cfg := e.cfg
	pg, err := pages.New(pages.Branding{
		Name: cfg.Branding.Name, LogoURL: cfg.Branding.LogoURL, Color: cfg.Branding.Color, Background: cfg.Branding.Background,
	}, cfg.PrivacyURL)
	if err != nil {
		return fmt.Errorf("branding: %w", err)
	}
	senderName := cfg.SenderName
	if senderName == "" {
		senderName = cfg.Hostname
	}
	proxies := httplimit.Proxies(cfg.HTTPTrustedProxies)
	lim := func(l configs.Limit) httplimit.Rate { return httplimit.PerSecond(l.Rate, l.Burst) }
	ul, sl := cfg.UnsubscribeLimits, cfg.SubscribeLimits
	listLangs := map[string]string{}
	for id, l := range cfg.Lists {
		if l.Language != "" {
			listLangs[id] = l.Language
		}
	}
	mux.Handle("/u/", unsubscribe.NewHandler(unsubscribe.Config{
		Tokens: e.tokens, Suppressor: e.suppressions(), PrivacyURL: cfg.PrivacyURL, SenderName: senderName, Events: e.queue, Timings: e.queue,
		ListLanguages: listLangs,
		Pages:         pg, Lists: listsAdapter{subs: e.subs, lists: cfg.Lists}, History: listsAdapter{subs: e.subs, w: e.consent()}, Audit: httpAuditor{e},
		Limits: unsubscribe.Limits{PerIP: lim(ul.PerIP), PerToken: lim(ul.PerToken)}, Proxies: proxies,
	}, log))

	key, err := unsubscribe.LoadOrCreateKey(cfg.TokenKeyFile)
	if err != nil {
		return err
	}
	tk, err := optin.NewTokens(key, cfg.OptinTTL)
	if err != nil {
		return err
	}
	// The From domain is the first DKIM domain, so the signer signs it.
	fromDomain := ""
	if len(cfg.DKIM) > 0 {
		fromDomain = cfg.DKIM[0].Domain
	}
	mailer, err := confirm.New(confirm.Config{Queue: confirmQueue{e.queue}, Links: links{e.tokens, e.cfg.MailtoDomain(), ""},
		HTML: configs.ConfirmHTML, Text: configs.ConfirmText, Subject: configs.ConfirmSubject, SenderName: pg.Name(),
		FromDomain: fromDomain, Hostname: cfg.Hostname, PrivacyURL: cfg.PrivacyURL, ValidFor: cfg.OptinTTL})
	if err != nil {
		return err
	}
	lists := make(map[string]optin.List, len(cfg.Lists))
	for id, l := range cfg.Lists {
		name := l.Name
		if name == "" {
			name = id
		}
		lists[id] = optin.List{Name: name, DoubleOptIn: l.DoubleOptIn, Language: l.Language}
	}
	h := optin.NewHandler(optin.Config{
		Lists: lists, Store: e.consent(), Mailer: mailer, Suppressions: e.gate(), Lifter: e.gate(), Pages: pg, Tokens: tk,
		PublicURL: cfg.PublicURL, PrivacyURL: cfg.PrivacyURL, Audit: httpAuditor{e}, Proxies: proxies,
		Limits: optin.Limits{RequestsPerIP: lim(sl.RequestsPerIP), SignupsPerMailbox: lim(sl.SignupsPerMailbox),
			ConfirmationsPerMailbox: lim(sl.ConfirmationsPerMailbox), ConfirmationsPerIP: lim(sl.ConfirmationsPerIP),
			ConfirmationsPerNetwork: lim(sl.ConfirmationsPerNetwork), ConfirmationsTotal: lim(sl.ConfirmationsTotal)},
	}, log.With().Str("component", "optin").Logger())
	mux.Handle("/subscribe", h)
	mux.Handle("/c/", h)
	return nil
}

// listsAdapter shows the preference page the configured lists a person is
// on, from the consent store, and records unsubscribes there too.
type listsAdapter struct {
	subs  *subscribers.Store
	w     consentWriter // where Unsubscribed writes (a cluster node: the stream); nil: subs
	lists map[string]configs.List
}

// ListsFor satisfies unsubscribe.Lists: confirmed and legitimate-interest
// memberships count as subscribed, unsubscribed ones as left; lists the
// person never joined (or only signed up to, unconfirmed) are not shown.
func (a listsAdapter) ListsFor(addr string) ([]unsubscribe.ListStatus, error) {
	ids := make([]string, 0, len(a.lists))
	for id := range a.lists {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []unsubscribe.ListStatus
	for _, id := range ids {
		st, err := a.subs.Status(addr, id)
		if err != nil {
			return nil, err
		}
		name := a.lists[id].Name
		if name == "" {
			name = id
		}
		if shown, subscribed := subscribers.OnPreferencePage(st.State); shown {
			out = append(out, unsubscribe.ListStatus{ID: id, Name: name, Subscribed: subscribed})
		}
	}
	return out, nil
}

// Unsubscribed appends the consent store's "unsubscribed" event; an address
// it holds nothing for is not an error (the suppression entry is what counts).
func (a listsAdapter) Unsubscribed(addr, list, source string) error {
	var w consentWriter = a.subs
	if a.w != nil {
		w = a.w
	}
	if err := w.Unsubscribe(addr, list, source); err != nil && !errors.Is(err, subscribers.ErrNotFound) {
		return err
	}
	return nil
}

// confirmQueue lets the confirmation mailer enqueue into the queue store.
type confirmQueue struct{ q *queue.Store }

// Enqueue satisfies confirm.Queue.
func (a confirmQueue) Enqueue(m confirm.Message) error {
	_, err := a.q.Enqueue([]queue.NewMessage{{Campaign: m.Campaign, List: m.List, Key: m.Key, From: m.From, To: m.To, Body: m.Body}})
	return err
}

// Kick satisfies confirm.Queue.
func (a confirmQueue) Kick() { a.q.Kick() }

// --- subscribers import / ls ---

type subscribersArgs struct {
	Path   string `json:"path,omitempty"`
	List   string `json:"list,omitempty"`
	Source string `json:"source,omitempty"`
}

func opSubscribersImport(ctx context.Context, e *env, req request, o *out) error {
	var a subscribersArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	if _, ok := e.cfg.Lists[a.List]; !ok {
		return fmt.Errorf("subscribers import: list %q is not configured (lists: in the server config)", a.List)
	}
	if err := e.joinReplica(ctx); err != nil { // a cluster node imports through the stream
		return err
	}
	sum, err := importer.Import(ctx, importer.Config{Store: e.consent(), Gate: e.gate(), Reveal: req.Reveal,
		Progress: func(rows int) { _ = o.Progress(progress{Rows: rows}) }}, a.Path, a.List, a.Source)
	if err != nil {
		return err
	}
	e.log.Info().Str("who", req.Who).Str("file", a.Path).Str("list", a.List).Int("rows", sum.Rows).Int("consent", sum.Consent).
		Int("legitimate_interest", sum.LegitimateInterest).Int("suppressed", sum.Suppressed).Int("errors", len(sum.Errors)).Msg("subscribers imported")
	if err := e.record(req, "subscribers.import", "file:"+filepath.Base(a.Path), a.Source, map[string]string{"list": a.List,
		"rows": fmt.Sprint(sum.Rows), "consent": fmt.Sprint(sum.Consent), "legitimate_interest": fmt.Sprint(sum.LegitimateInterest),
		"suppressed": fmt.Sprint(sum.Suppressed), "errors": fmt.Sprint(len(sum.Errors))}); err != nil {
		return err
	}
	if err := o.Record(sum); err != nil {
		return err
	}
	if len(sum.Errors) > 0 {
		return fmt.Errorf("subscribers import: %d invalid rows in %s", len(sum.Errors), a.Path)
	}
	return nil
}

// subscriberView is one row of `subscribers ls`.
type subscriberView struct {
	Address      string    `json:"address"`
	Name         string    `json:"name,omitempty"`
	Company      string    `json:"company,omitempty"`
	List         string    `json:"list"`
	State        string    `json:"state"`
	Since        time.Time `json:"since"`
	SubscriberID string    `json:"subscriber_id"`
}

func opSubscribersList(ctx context.Context, e *env, req request, o *out) error {
	var a subscribersArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	return e.subs.List(a.List, func(s subscribers.Subscriber) error {
		v := subscriberView{Address: maskIf(req.Reveal, s.Address), List: s.List, State: s.Status.State,
			Since: s.Status.Since, SubscriberID: s.SubscriberID}
		if req.Reveal {
			v.Name, v.Company = s.Name, s.Company
		}
		return o.Record(v)
	})
}

func (c *cli) subscribersCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "subscribers", Short: "The consent store: who subscribed to which list, with evidence"}
	var ia subscribersArgs
	imp := &cobra.Command{
		Use:   "import CSV",
		Short: "Import contacts (email, name, company, consented_at, ip, source); rows without consented_at are legitimate-interest candidates, never consent",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ia.Path = absPath(args[0])
			return c.call(cmd.Context(), "subscribers.import", ia, func(raw json.RawMessage) error {
				var s importer.Summary
				if err := json.Unmarshal(raw, &s); err != nil {
					return err
				}
				w := c.stdout
				fmt.Fprintf(w, "import %s into list %s\n", s.File, s.List)
				fmt.Fprintf(w, "  rows read                     %d\n", s.Rows)
				fmt.Fprintf(w, "  imported with consent         %d\n", s.Consent)
				fmt.Fprintf(w, "  legitimate-interest candidates %d\n", s.LegitimateInterest)
				fmt.Fprintf(w, "  already on the list           %d\n", s.Existing)
				fmt.Fprintf(w, "  suppressed                    %s\n", countsLine(s.SuppressedBy))
				fmt.Fprintf(w, "  invalid rows                  %d\n", len(s.Errors))
				for _, e := range s.Errors {
					fmt.Fprintf(c.stderr, "%s\n", e)
				}
				return nil
			})
		},
	}
	imp.Flags().StringVar(&ia.List, "list", "", "the list to import into (must be configured)")
	imp.Flags().StringVar(&ia.Source, "source", "", "where the contacts come from (default: the file name)")
	_ = imp.MarkFlagRequired("list")
	var la subscribersArgs
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List subscribers and their state (addresses masked unless --reveal)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			t := c.table("ADDRESS", "LIST", "STATE", "SINCE")
			defer t.Flush()
			return c.call(cmd.Context(), "subscribers.ls", la, func(raw json.RawMessage) error {
				var v subscriberView
				if err := json.Unmarshal(raw, &v); err != nil {
					return err
				}
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\n", v.Address, v.List, v.State, v.Since.Local().Format(time.DateTime))
				return nil
			})
		},
	}
	ls.Flags().StringVar(&la.List, "list", "", "only this list")
	cmd.AddCommand(imp, ls)
	return cmd
}
