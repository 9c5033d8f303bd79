// Package natsnode is a postwarden node's link to NATS JetStream (issue 13):
// it runs an embedded nats-server in-process when configured (JetStream on,
// cluster "postwarden", the server named after the node) and connects to
// NATS with nats.go, retrying forever with backoff.
//
// What the rest of the binary may rely on: Start returns a Node whose
// connection reconnects by itself for as long as the Node is open, to the
// configured servers only (never to ones advertised by gossip), with the
// state readable at any time (State); JetStream calls made while
// disconnected fail rather than block past their context. Start waits a
// bounded time for JetStream to be usable (a meta leader elected) and says so
// in the log; it does not fail when that wait runs out, because the cluster
// may still be forming (WaitReady waits again), and does not wait at all
// when no server answers (a node started while cut off serves at once). Credentials and passwords in
// URLs are never logged. Close drains the connection, then stops the embedded
// server.
package natsnode

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/postwarden/postwarden/configs"
)

// ClusterName is the NATS cluster name of every embedded server.
const ClusterName = "postwarden"

// DefaultReadyTimeout bounds Start's wait for JetStream.
const DefaultReadyTimeout = 30 * time.Second

// Config is what a node needs to reach NATS.
type Config struct {
	// Node is this node's name: the embedded server's name and the client
	// connection's.
	Node string
	// URLs are the NATS servers to connect to (nats://, tls://, user and
	// password in the URL if any); empty with Embedded set connects to the
	// embedded server.
	URLs []string
	// Credentials is a NATS .creds file (user JWT and nkey seed) or a file
	// holding only an nkey seed; "" for none.
	Credentials string
	// Embedded runs a nats-server in this process; nil for none.
	Embedded *Embedded
	// ReadyTimeout bounds the wait for JetStream at Start (default
	// DefaultReadyTimeout; negative: do not wait).
	ReadyTimeout time.Duration
	// FailFast makes the first connection attempt decide (for a CLI): Start
	// returns its error instead of retrying in the background.
	FailFast bool
}

// Embedded configures the in-process nats-server.
type Embedded struct {
	Listen        string   // host:port of clients; port 0 or -1 picks a free one
	ClusterListen string   // host:port of routes; "" runs a lone server
	Routes        []string // nats://host:port of the other servers' cluster listeners
	StoreDir      string   // JetStream store directory
}

// State is the connection's state.
type State struct {
	Connected bool      `json:"connected"`
	Since     time.Time `json:"since"`            // when it last changed
	Server    string    `json:"server,omitempty"` // connected server, user info masked
	LastError string    `json:"last_error,omitempty"`
}

// Node is an open link to NATS, and the embedded server if any.
type Node struct {
	log zerolog.Logger
	srv *server.Server // nil without Embedded
	nc  *nats.Conn
	js  jetstream.JetStream

	closed    chan struct{} // closed by nats.go once the connection is closed
	closeOnce sync.Once

	mu    sync.Mutex
	state State
}

// Start starts the embedded server when configured, connects, and waits up
// to ReadyTimeout for JetStream; without FailFast it does not wait when no
// server could be reached at all.
func Start(ctx context.Context, cfg Config, log zerolog.Logger) (*Node, error) {
	n := &Node{log: log, closed: make(chan struct{})}
	urls := cfg.URLs
	if cfg.Embedded != nil {
		srv, err := startServer(cfg.Node, *cfg.Embedded, log.With().Str("component", "nats-server").Logger())
		if err != nil {
			return nil, err
		}
		n.srv = srv
		if len(urls) == 0 {
			urls = []string{clientURL(srv)}
		}
	}
	if len(urls) == 0 {
		n.shutdownServer()
		return nil, errors.New("natsnode: no NATS URL and no embedded server")
	}
	if err := n.connect(cfg, urls); err != nil {
		n.shutdownServer()
		return nil, err
	}
	wait := cfg.ReadyTimeout
	if wait == 0 {
		wait = DefaultReadyTimeout
	}
	switch {
	case wait > 0 && !cfg.FailFast && !n.nc.IsConnected():
		// No server reachable at all (a node started while cut off):
		// waiting for JetStream only delays what works without it (the
		// node's pages, its unsubscribes kept locally); everything that
		// needs NATS retries in the background.
		log.Warn().Msg("jetstream not reachable; continuing, it is retried")
	case wait > 0:
		wctx, cancel := context.WithTimeout(ctx, wait)
		err := n.WaitReady(wctx)
		cancel()
		switch {
		case err != nil && cfg.FailFast:
			_ = n.Close()
			return nil, err
		case err != nil:
			log.Warn().Err(err).Dur("waited_ms", wait).Msg("jetstream not ready yet; continuing, it is retried")
		}
	}
	return n, nil
}

// startServer starts the embedded nats-server and waits until it takes
// clients.
func startServer(node string, e Embedded, log zerolog.Logger) (*server.Server, error) {
	host, port, err := splitHostPort(e.Listen)
	if err != nil {
		return nil, fmt.Errorf("natsnode: embedded listen %s: %w", e.Listen, err)
	}
	opts := &server.Options{
		ServerName: node,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   e.StoreDir,
		NoSigs:     true, // serve owns the signals
	}
	if e.ClusterListen != "" {
		ch, cp, err := splitHostPort(e.ClusterListen)
		if err != nil {
			return nil, fmt.Errorf("natsnode: embedded cluster_listen %s: %w", e.ClusterListen, err)
		}
		opts.Cluster.Name = ClusterName
		opts.Cluster.Host = ch
		opts.Cluster.Port = cp
		if len(e.Routes) > 0 {
			opts.Routes = server.RoutesFromStr(strings.Join(e.Routes, ","))
		}
	}
	if e.StoreDir != "" {
		if err := os.MkdirAll(e.StoreDir, 0o700); err != nil {
			return nil, fmt.Errorf("natsnode: store_dir: %w", err)
		}
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsnode: embedded server: %w", err)
	}
	srv.SetLoggerV2(serverLogger{log}, false, false, false)
	srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("natsnode: embedded server on %s did not start", e.Listen)
	}
	log.Info().Str("node", node).Str("listen", srv.Addr().String()).Str("cluster_listen", e.ClusterListen).Int("routes", len(e.Routes)).Str("store_dir", e.StoreDir).Msg("embedded nats-server started")
	return srv, nil
}

// splitHostPort reads host:port; an empty host listens everywhere.
func splitHostPort(hp string) (string, int, error) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	port, err := net.LookupPort("tcp", p)
	if err != nil {
		return "", 0, err
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if h == "" {
		h = "0.0.0.0"
	}
	return h, port, nil
}

// clientURL is the embedded server's client URL, a wildcard host reached on
// loopback.
func clientURL(srv *server.Server) string {
	addr, ok := srv.Addr().(*net.TCPAddr)
	if !ok {
		return srv.ClientURL()
	}
	host := addr.IP.String()
	if addr.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "nats://" + net.JoinHostPort(host, fmt.Sprint(addr.Port))
}

// Reconnect backoff: 250ms after the first failed attempt, doubling to 8s,
// then every 8s for as long as the Node is open; each wait gets up to 25%
// random jitter so restarted nodes do not stampede a recovering server.
const (
	backoffFirst = 250 * time.Millisecond
	backoffMax   = 8 * time.Second
)

// reconnectDelay is the wait before reconnect attempt n (1-based over a
// pass through the server list).
func reconnectDelay(n int) time.Duration {
	d := backoffMax
	if n < 6 {
		d = backoffFirst << max(n-1, 0)
	}
	return d + time.Duration(rand.Int64N(int64(d)/4+1))
}

// connect opens the client connection with the options every node uses.
func (n *Node) connect(cfg Config, urls []string) error {
	opts := []nats.Option{
		nats.Name("postwarden " + cfg.Node),
		// Only the configured servers: the client URLs other servers
		// advertise may not be reachable from here (loopback, NAT), and a
		// node cut off from its configured servers must stay cut off
		// (fail closed, issue 13) rather than slip onto a server found by
		// gossip. List every server in cluster.nats.
		nats.IgnoreDiscoveredServers(),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(reconnectDelay),
		nats.Timeout(5 * time.Second),
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.DrainTimeout(10 * time.Second),
		nats.ConnectHandler(func(c *nats.Conn) { n.setState(true, c, nil) }),
		nats.ReconnectHandler(func(c *nats.Conn) { n.setState(true, c, nil) }),
		nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
			if c.IsClosed() || c.IsDraining() { // Close: not a loss of the link
				n.setState(false, nil, nil)
				return
			}
			n.setState(false, c, err)
		}),
		nats.ClosedHandler(func(*nats.Conn) {
			n.setState(false, nil, nil)
			n.closeOnce.Do(func() { close(n.closed) })
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			ev := n.log.Warn().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("nats async error")
		}),
	}
	if !cfg.FailFast {
		opts = append(opts, nats.RetryOnFailedConnect(true))
	}
	if cfg.Credentials != "" {
		o, err := credentialsOption(cfg.Credentials)
		if err != nil {
			return err
		}
		opts = append(opts, o)
	}
	masked := make([]string, len(urls))
	for i, u := range urls {
		masked[i] = MaskURL(u)
	}
	nc, err := nats.Connect(strings.Join(urls, ","), opts...)
	if err != nil {
		// nats.go's errors do not carry the URL's user information.
		return fmt.Errorf("natsnode: connect to %s: %w", strings.Join(masked, ","), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return fmt.Errorf("natsnode: jetstream: %w", err)
	}
	n.nc, n.js = nc, js
	if nc.IsConnected() {
		n.setState(true, nc, nil)
	} else {
		n.log.Warn().Strs("nats", masked).Msg("nats not reachable yet; retrying in the background")
	}
	return nil
}

// credentialsOption reads a .creds file (user JWT and seed) or a bare nkey
// seed file.
func credentialsOption(path string) (nats.Option, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("natsnode: credentials: %w", err)
	}
	s := string(b)
	defer func() { clear(b) }()
	switch {
	case strings.Contains(s, "BEGIN NATS USER JWT"):
		return nats.UserCredentials(path), nil
	case strings.HasPrefix(strings.TrimSpace(s), "SU"):
		o, err := nats.NkeyOptionFromSeed(path)
		if err != nil {
			return nil, fmt.Errorf("natsnode: nkey seed %s: not a valid user seed", path)
		}
		return o, nil
	}
	return nil, fmt.Errorf("natsnode: credentials %s: neither a .creds file nor a user nkey seed", path)
}

// setState records a connection change and logs it.
func (n *Node) setState(up bool, c *nats.Conn, err error) {
	n.mu.Lock()
	changed := n.state.Connected != up || n.state.Since.IsZero()
	n.state.Connected = up
	if changed {
		n.state.Since = time.Now()
	}
	if c != nil && up {
		n.state.Server = MaskURL(c.ConnectedUrl())
	}
	if err != nil {
		n.state.LastError = err.Error()
	}
	srvURL := n.state.Server
	n.mu.Unlock()
	switch {
	case up && changed:
		n.log.Info().Str("server", srvURL).Msg("nats connected")
	case !up && c != nil && changed:
		ev := n.log.Warn().Str("server", srvURL)
		if err != nil {
			ev = ev.Err(err)
		}
		ev.Msg("nats disconnected; reconnecting")
	}
}

// WaitReady waits until JetStream answers (a meta leader is elected),
// logging progress, or ctx ends.
func (n *Node) WaitReady(ctx context.Context) error {
	start := time.Now()
	lastLog := start
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := n.js.AccountInfo(actx)
		cancel()
		if err == nil {
			n.log.Info().Dur("after_ms", time.Since(start).Round(time.Millisecond)).Msg("jetstream ready")
			return nil
		}
		if time.Since(lastLog) >= 5*time.Second {
			lastLog = time.Now()
			n.log.Info().Err(err).Dur("waited_ms", time.Since(start).Round(time.Second)).Msg("waiting for jetstream")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("natsnode: jetstream not ready after %s: %w", time.Since(start).Round(time.Second), err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Conn is the NATS connection.
func (n *Node) Conn() *nats.Conn { return n.nc }

// JetStream is the JetStream context over the connection.
func (n *Node) JetStream() jetstream.JetStream { return n.js }

// Connected reports whether the connection is up now.
func (n *Node) Connected() bool { return n.nc.IsConnected() }

// State is the connection's state and when it last changed.
func (n *Node) State() State {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.state
	s.Connected = n.nc.IsConnected()
	return s
}

// ClientURL is the embedded server's client URL, "" without one.
func (n *Node) ClientURL() string {
	if n.srv == nil {
		return ""
	}
	return clientURL(n.srv)
}

// Close drains the connection (pending publishes and subscriptions finish,
// bounded by the drain timeout), then shuts the embedded server down.
func (n *Node) Close() error {
	if n.nc != nil && !n.nc.IsClosed() {
		if err := n.nc.Drain(); err != nil {
			n.nc.Close()
		}
		select {
		case <-n.closed:
		case <-time.After(15 * time.Second):
			n.nc.Close()
		}
	}
	n.shutdownServer()
	return nil
}

// shutdownServer stops the embedded server, if any, and waits for it.
func (n *Node) shutdownServer() {
	if n.srv == nil {
		return
	}
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
	n.log.Info().Msg("embedded nats-server stopped")
}

// MaskURL returns a NATS URL with its user information replaced by "***",
// for logs: configs.MaskURL, the one rule.
func MaskURL(raw string) string { return configs.MaskURL(raw) }

// serverLogger hands nats-server's log lines to zerolog; its notices are
// debug lines (there are many at start-up), its warnings and errors stay.
type serverLogger struct{ log zerolog.Logger }

func (l serverLogger) Noticef(format string, v ...any) { l.log.Debug().Msgf(format, v...) }
func (l serverLogger) Warnf(format string, v ...any)   { l.log.Warn().Msgf(format, v...) }
func (l serverLogger) Fatalf(format string, v ...any)  { l.log.Error().Msgf(format, v...) }
func (l serverLogger) Errorf(format string, v ...any)  { l.log.Error().Msgf(format, v...) }
func (l serverLogger) Debugf(format string, v ...any)  { l.log.Debug().Msgf(format, v...) }
func (l serverLogger) Tracef(format string, v ...any)  { l.log.Trace().Msgf(format, v...) }
