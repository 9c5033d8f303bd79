package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net/mail"
	"os"
	"sort"
	"strings"

	"github.com/postwarden/postwarden/configs"
	"github.com/postwarden/postwarden/mta/dkim"
	"github.com/postwarden/postwarden/suppression/address"
)

// checkSendable refuses a campaign that would go out wrong: a From domain
// that no configured DKIM key signs (the message would leave unsigned and
// fail DMARC alignment), or a recipients file that cannot be opened. Each
// problem names the campaign file and line.
func checkSendable(cfg *configs.Server, c *configs.Campaign) error {
	var problems []string
	if a, err := mail.ParseAddress(c.From); err == nil {
		if at := strings.LastIndexByte(a.Address, '@'); at > 0 {
			dom, err := address.NormalizeDomain(a.Address[at+1:])
			if err == nil && !signs(cfg.DKIM, dom) {
				var have []string
				for _, k := range cfg.DKIM {
					have = append(have, k.Domain)
				}
				problems = append(problems, fmt.Sprintf("%s:%d: from: no DKIM key signs %s (keys for: %s); add one under dkim: in %s",
					c.Path, c.Line("from"), dom, strings.Join(have, ", "), configName(cfg)))
			}
		}
	}
	if f, err := os.Open(c.Recipients); err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) { // it names all of the path: quote at most ~80 characters
			err = pe.Err
		}
		problems = append(problems, fmt.Sprintf("%s:%d: recipients: open %s: %v", c.Path, c.Line("recipients"), configs.Quote(c.Recipients), err))
	} else {
		f.Close()
	}
	if !cfg.Delivery.HasPool(c.Pool) {
		var have []string
		for p := range cfg.Delivery.Pools {
			have = append(have, p)
		}
		sort.Strings(have)
		problems = append(problems, fmt.Sprintf("%s:%d: pool: no pool named %s under delivery.pools in %s (pools: %s)",
			c.Path, c.Line("pool"), configs.Quote(c.Pool), configName(cfg), strings.Join(have, ", ")))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "\n"))
	}
	return nil
}

// signs reports whether a key's domain equals dom or is a parent of it
// (relaxed DMARC alignment, RFC 7489 §3.1.1).
func signs(keys []configs.DKIM, dom string) bool {
	for _, k := range keys {
		if dkim.Aligned(k.Domain, dom) {
			return true
		}
	}
	return false
}

func configName(cfg *configs.Server) string {
	if cfg.Path == "" {
		return "the server config"
	}
	return cfg.Path
}
