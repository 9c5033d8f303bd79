package configs

import (
	"fmt"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"
)

// DKIM is one signing key.
type DKIM struct {
	Domain   string
	Selector string
	KeyFile  string // absolute; default <data_dir>/dkim/<domain>.<selector>.key
	Type     string // rsa | ed25519
	// BodyCanonicalization is the c= body algorithm (RFC 6376 §3.4.3/§3.4.4):
	// simple (default) or relaxed. Bodies are quoted-printable with short
	// lines and no trailing white space, so both survive the same transit;
	// simple costs next to nothing, relaxed ~15 % of a campaign's CPU.
	BodyCanonicalization string
	// RSASigner computes an RSA key's signatures: auto (default: OpenSSL's
	// libcrypto when it loads, else Go), go, or openssl (an error without
	// libcrypto). The signatures are the same bytes; OpenSSL is ~4x faster.
	RSASigner string
}

// dkimList decodes the dkim sequence.
func (d *decoder) dkimList(dst *[]DKIM) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) {
			return
		}
		if v.Kind != yaml.SequenceNode {
			d.typeErr(path, v, "a list of {domain, selector, key_file, type}")
			return
		}
		out := make([]DKIM, len(v.Content))
		for i, e := range v.Content {
			e = resolve(e)
			p := fmt.Sprintf("%s[%d]", path, i)
			d.lines[p] = e.Line
			if !d.mapping(p, e) {
				continue
			}
			k := &out[i]
			d.fields(e, p+".", map[string]func(string, *yaml.Node){
				"domain":                d.str(&k.Domain),
				"selector":              d.str(&k.Selector),
				"key_file":              d.str(&k.KeyFile),
				"type":                  d.str(&k.Type),
				"body_canonicalization": d.str(&k.BodyCanonicalization),
				"rsa_signer":            d.str(&k.RSASigner),
			}, "domain", "selector")
		}
		*dst = out
	}
}

// defaultDKIM fills each DKIM key's unset fields.
func (s *Server) defaultDKIM() {
	for i := range s.DKIM {
		k := &s.DKIM[i]
		orDefault(&k.KeyFile, filepath.Join(s.DataDir, "dkim", k.Domain+"."+k.Selector+".key"))
		orDefault(&k.Type, "rsa")
		orDefault(&k.BodyCanonicalization, "simple")
		orDefault(&k.RSASigner, "auto")
	}
}

// checkDKIM checks each DKIM key and that no domain/selector pair repeats.
func (s *Server) checkDKIM(d *decoder) {
	seen := map[string]int{}
	for i, k := range s.DKIM {
		p := fmt.Sprintf("dkim[%d]", i)
		if !isHostname(k.Domain) {
			d.fieldErr(p+".domain", "%s is not a domain name", Quote(k.Domain))
		}
		if !isHostname(k.Selector) {
			d.fieldErr(p+".selector", "%s is not a selector (letters, digits, '-' and '.')", Quote(k.Selector))
		}
		if k.Type != "rsa" && k.Type != "ed25519" {
			d.fieldErr(p+".type", "%s must be rsa or ed25519", Quote(k.Type))
		}
		if k.BodyCanonicalization != "simple" && k.BodyCanonicalization != "relaxed" {
			d.fieldErr(p+".body_canonicalization", "%s must be simple or relaxed", Quote(k.BodyCanonicalization))
		}
		if k.RSASigner != "auto" && k.RSASigner != "go" && k.RSASigner != "openssl" {
			d.fieldErr(p+".rsa_signer", "%s must be auto, go or openssl", Quote(k.RSASigner))
		}
		pair := strings.ToLower(k.Domain + "/" + k.Selector)
		if j, dup := seen[pair]; dup {
			d.fieldErr(p, "domain %s selector %s repeats dkim[%d]", k.Domain, k.Selector, j)
		}
		seen[pair] = i
	}
}
