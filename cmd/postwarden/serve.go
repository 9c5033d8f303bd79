package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/queue"
	"github.com/postwarden/postwarden/suppression/retention"
)

func (c *cli) serveCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Run the daemon: delivery workers, the unsubscribe HTTP server, the admin socket",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := c.loadConfig()
			if err != nil {
				return err
			}
			log, err := c.logger(zerolog.InfoLevel)
			if err != nil {
				return err
			}
			return serve(cmd.Context(), cfg, log)
		},
	}
}

// retentionEvery is how often the daemon applies the retention periods.
const retentionEvery = time.Hour

// enforceRetention prunes what the retention periods say is due, at start
// and then every period, until ctx ends.
func (e *env) enforceRetention(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		r, err := retention.Prune(ctx, e.retentionDeps(), retention.Request{Who: "system:retention", SkipEmpty: true})
		if err != nil {
			e.log.Error().Err(err).Msg("retention prune failed")
		}
		if r != (retention.Result{}) {
			e.log.Info().Int("finished_messages", r.FinishedMessages).Int("cluster_campaigns", r.ClusterCampaigns).
				Int("pending_optins", r.PendingOptins).Int("audit_entries", r.AuditEntries).Msg("retention pruned")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// shutdownGrace bounds how long serve waits for HTTP requests to finish.
const shutdownGrace = 10 * time.Second

// serve runs until ctx is cancelled (SIGTERM), then stops taking work, lets
// in-flight deliveries finish and record their outcome, and closes the stores.
func serve(ctx context.Context, cfg *configs.Server, log zerolog.Logger) error {
	e, err := openEnv(cfg, log, true)
	if err != nil {
		return err
	}
	defer e.Close()
	e.daemon = true
	// With a cluster section: the embedded NATS server (if configured), the
	// connection and the heartbeat; stopped after the runner, before the stores.
	cn, err := startCluster(ctx, cfg, log.With().Str("component", "cluster").Logger())
	if err != nil {
		return err
	}
	defer cn.Close()
	e.cluster = cn
	if err := cn.publishAudit(e.audit, e.box, cfg.Cluster); err != nil {
		return err
	}
	if err := e.joinReplica(ctx); err != nil { // before anything that writes suppressions is built
		return err
	}
	defer e.stopWorkers() // the replica stops before the cluster link closes

	sender, created, err := e.newSender()
	if err != nil {
		return err
	}
	defer sender.Close()
	if err := e.announceCreatedKeys(created); err != nil {
		return err
	}

	if w := publicURLWarning(cfg); w != "" {
		log.Warn().Str("public_url", cfg.PublicURL).Msg("public_url is not https: one-click unsubscribe (RFC 8058) needs https")
	}
	// The pages and the inbound listener open before the admin socket: a
	// daemon that answers on its socket also serves them.
	srv, addr, httpDone, err := e.startHTTP(log.With().Str("component", "http").Logger())
	if err != nil {
		return err
	}
	inb, err := startInbound(cfg, e, log.With().Str("component", "inbound").Logger())
	if err != nil {
		_ = srv.Close()
		return err
	}
	if inb != nil {
		defer inb.Close() // before the stores close: it waits for reports being recorded
	}
	admin, err := listenAdmin(cfg.AdminSocket, e, log.With().Str("component", "admin").Logger())
	if err != nil {
		_ = srv.Close()
		return err
	}

	observer, stopMetrics, err := startMetrics(cfg.MetricsListen, e.queue, log.With().Str("component", "metrics").Logger(), e.collectors()...)
	if err != nil {
		_ = admin.Close(context.Background())
		_ = srv.Close()
		return err
	}
	defer stopMetrics(context.Background())
	sw, err := e.startShares(ctx)
	if err != nil {
		return err
	}
	rcfg := queue.RunnerConfig{Workers: cfg.Delivery.Workers, Observer: observer,
		DrainTimeout: cfg.Delivery.DrainTimeout, Halt: e.halt}
	if sw != nil {
		rcfg.OnFinal, rcfg.Unpublished = sw.final, sw.Unpublished
	}
	runner := e.queue.NewRunner(sender, e.deliveryGate(), rcfg)
	runCtx, stopRunner := context.WithCancel(ctx)
	defer stopRunner()
	runDone := make(chan error, 1)
	go func() { runDone <- runner.Run(runCtx) }()
	retentionDone := make(chan struct{})
	go func() { defer close(retentionDone); e.enforceRetention(runCtx, retentionEvery) }()

	log.Info().Str("http", addr.String()).Str("admin_socket", cfg.AdminSocket).Str("mode", cfg.Delivery.Mode).Msg("postwarden serving")

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-httpDone:
		runErr = fmt.Errorf("http server: %w", err)
	}
	log.Info().Dur("drain_timeout_ms", cfg.Delivery.DrainTimeout).Msg("shutting down: no new work; waiting for in-flight deliveries")
	stopRunner()
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	_ = srv.Shutdown(sctx)
	_ = admin.Close(sctx)
	<-retentionDone
	if err := <-runDone; err != nil && !errors.Is(err, context.Canceled) {
		runErr = errors.Join(runErr, err)
	}
	log.Info().Msg("stopped")
	return runErr
}

// announceCreatedKeys logs and audits each DKIM key generated because its
// configured key file was missing: its record must be published.
func (e *env) announceCreatedKeys(created []createdKey) error {
	for _, k := range created {
		e.log.Warn().Str("key_file", k.Path).Str("dns_record", k.DNSRecord).Msg("generated DKIM key; publish its record")
		if err := e.record(request{Who: "system:serve"}, "dkim.generated", k.Path, "configured key file was missing", map[string]string{"dns_record": k.DNSRecord}); err != nil {
			return err
		}
	}
	return nil
}

// startHTTP serves the recipient pages and /healthz on http_listen; what
// ends Serve arrives on done.
func (e *env) startHTTP(log zerolog.Logger) (srv *http.Server, addr net.Addr, done <-chan error, err error) {
	mux := http.NewServeMux()
	if err := e.mountPages(mux, log); err != nil {
		return nil, nil, nil, err
	}
	mux.HandleFunc("GET /healthz", healthz)
	ln, err := net.Listen("tcp", e.cfg.HTTPListen)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("http_listen %s: %w", e.cfg.HTTPListen, err)
	}
	srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	return srv, ln.Addr(), served, nil
}

// healthz answers "ok" while the daemon serves.
func healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}
