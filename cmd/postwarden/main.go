// Command postwarden is a self-hosted MTA and B2B campaign sender: one binary
// whose subcommands send campaigns, run the daemon, and administer the queue
// and the suppression store.
//
// Exit status: 0 on success, 1 for a "no" or "not found" answer, 2 for errors.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/postwarden/postwarden/configs"
)

func main() {
	ctx, stop := signalContext()
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// signalContext is cancelled by the first SIGINT or SIGTERM, so work stops
// cleanly (everything acknowledged is already durable); a second signal exits
// at once.
func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-ch
		cancel()
		<-ch
		fmt.Fprintln(os.Stderr, "postwarden: second signal, exiting now")
		os.Exit(130)
	}()
	return ctx, func() { signal.Stop(ch); cancel() }
}

// cli holds the global flags and the streams of one invocation.
type cli struct {
	configPath string
	jsonOut    bool
	reveal     bool
	logLevel   string
	stdin      io.Reader
	stdout     io.Writer
	stderr     io.Writer
	code       int
}

// run executes one command line and returns the exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	stderr = &lockedWriter{w: stderr} // the logger's goroutines and the CLI's own lines share it
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr}
	root := c.rootCommand()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		return reportError(stderr, err, c.jsonOut || jsonRequested(args))
	}
	return c.code
}

func (c *cli) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "postwarden",
		Short:         "Self-hosted MTA and B2B campaign sender with suppression, DKIM and one-click unsubscribe",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVarP(&c.configPath, "config", "c", "", "server config file (default $POSTWARDEN_CONFIG or configs/postwarden.yaml)")
	pf.BoolVar(&c.jsonOut, "json", false, "print one JSON object per line")
	pf.BoolVar(&c.reveal, "reveal", false, "show addresses in clear (masked by default)")
	pf.StringVar(&c.logLevel, "log-level", "", "log level: debug, info, warn, error (default info for serve, warn otherwise)")
	root.AddCommand(c.subjectCommand(), c.auditCommand(), c.dbCommand())
	root.AddCommand(c.campaignCommand(), c.queueCommand(), c.suppressCommand(), c.serveCommand(), c.dkimCommand(), c.dnsCommand())
	root.AddCommand(c.checkDNSCommand())
	root.AddCommand(c.bounceCommand())
	root.AddCommand(c.subscribersCommand())
	root.AddCommand(c.providersCommand())
	root.AddCommand(c.clusterCommand())
	strictUsage(root)
	return root
}

// loadConfig finds and loads the server config: -c, then
// $POSTWARDEN_CONFIG, then configs/postwarden.yaml, then the embedded default.
func (c *cli) loadConfig() (*configs.Server, error) {
	path := c.configPath
	if path == "" {
		path = os.Getenv("POSTWARDEN_CONFIG")
	}
	if path == "" {
		if _, err := os.Stat(configs.DefaultPath); errors.Is(err, os.ErrNotExist) {
			return configs.DefaultServer()
		}
		path = configs.DefaultPath
	}
	return configs.LoadServer(path)
}

// logger builds the zerolog logger: JSON lines on stderr, or a console form
// when stderr is a terminal.
func (c *cli) logger(def zerolog.Level) (zerolog.Logger, error) {
	level := def
	if c.logLevel != "" {
		l, err := zerolog.ParseLevel(c.logLevel)
		if err != nil {
			return zerolog.Nop(), fmt.Errorf("--log-level: %w", err)
		}
		level = l
	}
	var w io.Writer = c.stderr
	if f, ok := fileOf(c.stderr); ok && term.IsTerminal(int(f.Fd())) {
		w = zerolog.ConsoleWriter{Out: c.stderr, TimeFormat: "15:04:05"}
	}
	// Delivery workers log at once; run's stderr may be any writer (a buffer
	// in tests), so writes are serialised (lockedWriter) rather than trusted to it.
	return zerolog.New(w).Level(level).With().Timestamp().Logger(), nil
}

// lockedWriter serialises the writes to one stream: log lines from the
// delivery workers and the CLI's progress and notes from the op's goroutine.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// fileOf is the *os.File behind w, for terminal checks.
func fileOf(w io.Writer) (*os.File, bool) {
	if l, ok := w.(*lockedWriter); ok {
		w = l.w
	}
	f, ok := w.(*os.File)
	return f, ok
}

// call runs an op: in the daemon when one answers on the admin socket,
// otherwise in this process with the stores opened here. It prints the
// op's records with print (or as JSON lines with --json) and sets the exit
// status.
func (c *cli) call(ctx context.Context, name string, args any, print func(json.RawMessage) error) error {
	cfg, err := c.loadConfig()
	if err != nil {
		return err
	}
	raw, err := json.Marshal(args)
	if err != nil {
		return err
	}
	req := request{Args: raw, Reveal: c.reveal}
	bar := newProgressBar(c.stderr, c.jsonOut)
	defer bar.Finish()
	sink := func(l line) error {
		switch {
		case l.Record != nil:
			bar.Clear()
			if c.jsonOut {
				_, err := fmt.Fprintf(c.stdout, "%s\n", l.Record)
				return err
			}
			return print(l.Record)
		case l.Progress != nil:
			bar.Update(*l.Progress)
		case l.Note != "":
			bar.Clear()
			fmt.Fprintln(c.stderr, l.Note)
		case l.Exit != nil && l.Error != "":
			bar.Clear()
			if c.jsonOut {
				b, _ := json.Marshal(cliError{Error: l.Error, Exit: *l.Exit})
				fmt.Fprintf(c.stderr, "%s\n", b)
			} else {
				fmt.Fprintf(c.stderr, "postwarden: %s\n", l.Error)
			}
		}
		return nil
	}
	if hc := daemonClient(cfg.AdminSocket); hc != nil {
		code, err := callDaemon(ctx, hc, name, req, sink)
		if err != nil {
			return err
		}
		c.code = code
		return nil
	}
	log, err := c.logger(zerolog.WarnLevel)
	if err != nil {
		return err
	}
	e, err := openEnv(cfg, log, ops[name].creates)
	if err != nil {
		return err
	}
	defer e.Close()
	req.Who = localUser()
	c.code = runOp(ctx, name, e, req, sink)
	return nil
}

// printFields prints a record as "key: value" lines, for records with no
// table of their own.
func (c *cli) printFields(raw json.RawMessage) error {
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return err
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sortStrings(keys)
	for _, k := range keys {
		v := m[k]
		switch x := v.(type) {
		case string:
			fmt.Fprintf(c.stdout, "%s: %s\n", k, x)
		default:
			b, _ := json.Marshal(x)
			fmt.Fprintf(c.stdout, "%s: %s\n", k, b)
		}
	}
	return nil
}

// readIDs expands "-" into IDs read from standard input, one per line.
func (c *cli) readIDs(args []string) ([]string, error) {
	var ids []string
	for _, a := range args {
		if a != "-" {
			ids = append(ids, a)
			continue
		}
		sc := bufio.NewScanner(c.stdin)
		for sc.Scan() {
			if s := strings.TrimSpace(sc.Text()); s != "" {
				ids = append(ids, strings.Fields(s)[0])
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("read IDs from standard input: %w", err)
		}
	}
	return ids, nil
}

// absPath makes a file argument absolute, so the daemon can open it too.
func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
