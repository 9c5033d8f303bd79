package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/spf13/cobra"

	"github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/suppression/address"
)

// keygenArgs are the arguments of the dkim.keygen op.
type keygenArgs struct {
	Domain   string `json:"domain"`
	Selector string `json:"selector"`
	Type     string `json:"type"`
	Out      string `json:"out,omitempty"`
}

func absIfSet(p string) string {
	if p == "" {
		return ""
	}
	return absPath(p)
}

// opDKIMKeygen writes a new key (never over an existing one) and records it.
func opDKIMKeygen(ctx context.Context, e *env, req request, o *out) error {
	var a keygenArgs
	if err := decodeArgs(req, &a); err != nil {
		return err
	}
	path := a.Out
	if path == "" {
		path = filepath.Join(e.cfg.DataDir, "dkim", a.Domain+"."+a.Selector+".key")
	}
	if err := dkim.WriteNew(path, a.Type); err != nil {
		return err
	}
	k, _, err := dkim.LoadOrCreate(path, a.Domain, a.Selector, a.Type)
	if err != nil {
		return err
	}
	if err := e.record(req, "dkim.keygen", a.Selector+"._domainkey."+a.Domain, "", map[string]string{"type": k.Type(), "path": path}); err != nil {
		return err
	}
	return o.Record(createdKey{Path: path, DNSRecord: k.DNSRecord()})
}

// selectorPattern is a DKIM selector: one or more DNS labels (RFC 6376 §3.1).
var selectorPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

func (c *cli) dkimCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "dkim", Short: "DKIM keys"}
	var domain, selector, keyType, out string
	keygen := &cobra.Command{
		Use:   "keygen --domain D --selector S [--type rsa|ed25519]",
		Short: "Generate a DKIM key (mode 0600) and print the DNS record to publish",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if domain == "" || selector == "" {
				return errors.New("dkim keygen: --domain and --selector are required")
			}
			// Check both before they become part of a file name.
			d, err := address.NormalizeDomain(domain)
			if err != nil {
				return fmt.Errorf("dkim keygen: --domain %q: %w", domain, err)
			}
			sel := strings.ToLower(selector)
			if !selectorPattern.MatchString(sel) {
				return fmt.Errorf("dkim keygen: --selector %q: want DNS labels (letters, digits, '-', '.')", selector)
			}
			domain, selector = d, sel
			// The key is written by whoever holds the stores (the daemon, or
			// this process), so the change is in the audit log.
			return c.call(cmd.Context(), "dkim.keygen", keygenArgs{Domain: domain, Selector: selector, Type: keyType, Out: absIfSet(out)},
				func(raw json.RawMessage) error {
					var k createdKey
					if err := json.Unmarshal(raw, &k); err != nil {
						return err
					}
					fmt.Fprintf(c.stderr, "wrote %s (mode 0600); publish:\n", k.Path)
					fmt.Fprintln(c.stdout, k.DNSRecord)
					return nil
				})
		},
	}
	keygen.Flags().StringVar(&domain, "domain", "", "signing domain (d=)")
	keygen.Flags().StringVar(&selector, "selector", "", "selector (s=)")
	keygen.Flags().StringVar(&keyType, "type", "rsa", "rsa (2048 bits) or ed25519")
	keygen.Flags().StringVar(&out, "out", "", "key file (default <data_dir>/dkim/<domain>.<selector>.key)")
	cmd.AddCommand(keygen)
	return cmd
}
