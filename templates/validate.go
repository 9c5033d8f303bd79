package templates

import (
	"bytes"
	"errors"
	"fmt"
	"html"
	htmltemplate "html/template"
	"sort"
	"text/template/parse"
)

// Sentinel links used by Validate; the privacy one carries "&" so that an
// html-escaped rendering (&amp;) is exercised too.
const (
	SentinelUnsubscribeURL = "https://unsubscribe.sentinel.invalid/u/SENTINEL"
	SentinelPrivacyURL     = "https://privacy.sentinel.invalid/policy?x=1&y=2"
)

// Validate renders the HTML body, text body and subject with sentinel data (all
// fields empty, all filled, Fields empty and filled) and reports every problem:
// exec errors, a missing unsubscribe or privacy link in either body, a subject
// that renders empty or carries CR/LF.
func (s *Set) Validate() error {
	var errs []error
	seen := map[string]bool{}
	add := func(key string, err error) {
		if !seen[key] {
			seen[key] = true
			errs = append(errs, err)
		}
	}
	for _, v := range s.sentinels() {
		if _, err := s.Subject(v.data); err != nil {
			add("subject"+err.Error(), fmt.Errorf("%w (with %s)", err, v.name))
		}
		var tb, hb bytes.Buffer
		if err := s.bodies(v.data, &tb, &hb); err != nil {
			add("exec"+err.Error(), fmt.Errorf("%w (with %s)", err, v.name))
			continue
		}
		text, htm := tb.Bytes(), hb.Bytes()
		for _, l := range []struct{ name, field, url string }{
			{"unsubscribe", "{{.UnsubscribeURL}}", SentinelUnsubscribeURL},
			{"privacy", "{{.PrivacyURL}}", SentinelPrivacyURL},
		} {
			if !bytes.Contains(text, []byte(l.url)) {
				add(s.textPath+l.name, fmt.Errorf("templates: %s: rendered text lacks the %s link (%s) (with %s)",
					s.textPath, l.name, l.field, v.name))
			}
			if !htmlContains(htm, l.url) {
				add(s.htmlPath+l.name, fmt.Errorf("templates: %s: rendered HTML lacks the %s link (%s) (with %s)",
					s.htmlPath, l.name, l.field, v.name))
			}
		}
	}
	return errors.Join(errs...)
}

// sentinel is one Data value Validate renders with.
type sentinel struct {
	name string
	data Data
}

// sentinels returns the Data variants Validate renders, so that a conditional on
// any field, empty or not, cannot hide a link.
func (s *Set) sentinels() []sentinel {
	filled := Data{
		FirstName: "Sentinel-First", LastName: "Sentinel-Last", Company: "Sentinel Company",
		JobTitle: "Sentinel Title", Country: "Sentinel Country", Email: "sentinel@sentinel.invalid",
	}
	fields := map[string]string{"sentinel": "Sentinel-Field"}
	for _, k := range s.fieldKeys {
		fields[k] = "Sentinel-" + k
	}
	vs := []sentinel{
		{"all fields empty", Data{}},
		{"all fields empty and Fields filled", Data{Fields: fields}},
		{"all fields filled and Fields empty", withFields(filled, map[string]string{})},
		{"all fields filled", withFields(filled, fields)},
	}
	for i := range vs {
		vs[i].data.UnsubscribeURL = SentinelUnsubscribeURL
		vs[i].data.PrivacyURL = SentinelPrivacyURL
	}
	return vs
}

func withFields(d Data, f map[string]string) Data {
	d.Fields = f
	return d
}

// htmlContains reports whether rendered HTML holds url as is or html-escaped
// (html/template writes "&" as "&amp;", "+" as "&#43;").
func htmlContains(body []byte, url string) bool {
	if bytes.Contains(body, []byte(url)) {
		return true
	}
	if e := htmltemplate.HTMLEscapeString(url); e != url && bytes.Contains(body, []byte(e)) {
		return true
	}
	if e := html.EscapeString(url); e != url && bytes.Contains(body, []byte(e)) {
		return true
	}
	return bytes.Contains([]byte(html.UnescapeString(string(body))), []byte(url))
}

// collectFieldKeys lists the keys the templates read from .Fields
// (.Fields.key, $.Fields.key, index .Fields "key"), sorted.
func (s *Set) collectFieldKeys() []string {
	keys := map[string]bool{}
	for _, t := range s.html.Templates() {
		if t.Tree != nil {
			walk(t.Tree.Root, keys)
		}
	}
	for _, t := range append(s.text.Templates(), s.subject.Templates()...) {
		if t.Tree != nil {
			walk(t.Tree.Root, keys)
		}
	}
	out := make([]string, 0, len(keys))
	for k := range keys {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func walk(n parse.Node, keys map[string]bool) {
	switch n := n.(type) {
	case *parse.ListNode:
		if n != nil {
			for _, c := range n.Nodes {
				walk(c, keys)
			}
		}
	case *parse.ActionNode:
		walk(n.Pipe, keys)
	case *parse.IfNode:
		walkBranch(&n.BranchNode, keys)
	case *parse.RangeNode:
		walkBranch(&n.BranchNode, keys)
	case *parse.WithNode:
		walkBranch(&n.BranchNode, keys)
	case *parse.TemplateNode:
		walk(n.Pipe, keys)
	case *parse.PipeNode:
		if n != nil {
			for _, c := range n.Cmds {
				walk(c, keys)
			}
		}
	case *parse.CommandNode:
		if len(n.Args) == 3 {
			fn, ok1 := n.Args[0].(*parse.IdentifierNode)
			k, ok2 := n.Args[2].(*parse.StringNode)
			if ok1 && ok2 && fn.Ident == "index" && isFields(n.Args[1]) {
				keys[k.Text] = true
			}
		}
		for _, a := range n.Args {
			walk(a, keys)
		}
	case *parse.FieldNode:
		if len(n.Ident) >= 2 && n.Ident[0] == "Fields" {
			keys[n.Ident[1]] = true
		}
	case *parse.VariableNode:
		if len(n.Ident) >= 3 && n.Ident[0] == "$" && n.Ident[1] == "Fields" {
			keys[n.Ident[2]] = true
		}
	case *parse.ChainNode:
		walk(n.Node, keys)
	}
}

// isFields reports whether n is .Fields or $.Fields.
func isFields(n parse.Node) bool {
	switch n := n.(type) {
	case *parse.FieldNode:
		return len(n.Ident) == 1 && n.Ident[0] == "Fields"
	case *parse.VariableNode:
		return len(n.Ident) == 2 && n.Ident[0] == "$" && n.Ident[1] == "Fields"
	}
	return false
}

func walkBranch(b *parse.BranchNode, keys map[string]bool) {
	walk(b.Pipe, keys)
	walk(b.List, keys)
	walk(b.ElseList, keys)
}
