package configs

import (
	"bufio"
	"bytes"
	_ "embed"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// freeMailTxt is configs/freemail.txt as built in: the default list of
// consumer mailbox domains.
//
//go:embed freemail.txt
var freeMailTxt []byte

// domainPattern is an ASCII (IDNA) host name with at least one dot.
var domainPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$`)

// FreeMailDomains reads a list of consumer mailbox domains — one a line,
// "#" starts a comment, blank lines ignored — from path, or the embedded
// copy of configs/freemail.txt when path is "". Domains come back lower
// case. Every malformed line is reported at once as Errors, each "file:line:
// problem".
func FreeMailDomains(path string) (map[string]bool, error) {
	name, data := "freemail.txt (embedded)", freeMailTxt
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fileErr("configs: read free-mail list", path, err)
		}
		name, data = path, b
	}
	return parseFreeMail(name, data)
}

// parseFreeMail parses the lines of a free-mail list named name.
func parseFreeMail(name string, data []byte) (map[string]bool, error) {
	out := map[string]bool{}
	var errs Errors
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		s, _, _ := strings.Cut(sc.Text(), "#")
		s = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(s, "\uFEFF")))
		if s == "" {
			continue
		}
		if !domainPattern.MatchString(s) || len(s) > 253 {
			errs = append(errs, fmt.Errorf("%s:%d: %s is not a domain name (one ASCII domain a line, such as gmail.com)", name, line, Quote(s)))
			continue
		}
		out[s] = true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("configs: read %s: %w", name, err)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return out, nil
}
