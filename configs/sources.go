package configs

import (
	"fmt"
	"net"
	"strconv"

	"go.yaml.in/yaml/v3"

	"github.com/postwarden/postwarden/mta"
	"github.com/postwarden/postwarden/mta/warmup"
)

// sourceFields decodes delivery.sources, delivery.pools and delivery.warmup
// (issue 12) into dl.
func (dl *Delivery) sourceFields(d *decoder) map[string]func(string, *yaml.Node) {
	return map[string]func(string, *yaml.Node){
		"sources": d.sources(&dl.Sources),
		"pools":   d.pools(&dl.Pools),
		"warmup":  d.warmup(&dl.Warmup),
	}
}

// sources decodes a list of {name, address, ehlo}.
func (d *decoder) sources(dst *[]mta.Source) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) {
			return
		}
		if v.Kind != yaml.SequenceNode {
			d.typeErr(path, v, "a list of {name, address, ehlo}")
			return
		}
		for i, e := range v.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			e = resolve(e)
			d.lines[p] = e.Line
			if !d.mapping(p, e) {
				continue
			}
			var s mta.Source
			d.fields(e, p+".", map[string]func(string, *yaml.Node){
				"name": d.str(&s.Name), "address": d.str(&s.Address), "ehlo": d.str(&s.EHLO)}, "name", "address")
			*dst = append(*dst, s)
		}
	}
}

// pools decodes a mapping of pool name → list of source names or of
// {source, weight}.
func (d *decoder) pools(dst *map[string][]mta.PoolMember) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) || !d.mapping(path, v) {
			return
		}
		out := map[string][]mta.PoolMember{}
		for i := 0; i+1 < len(v.Content); i += 2 {
			k, e := resolve(v.Content[i]), resolve(v.Content[i+1])
			p := path + "." + k.Value
			d.lines[p] = k.Line
			if e.Kind != yaml.SequenceNode {
				d.typeErr(p, e, "a list of source names or of {source, weight}")
				continue
			}
			members := []mta.PoolMember{}
			for j, m := range e.Content {
				mp := fmt.Sprintf("%s[%d]", p, j)
				m = resolve(m)
				d.lines[mp] = m.Line
				var pm mta.PoolMember
				switch m.Kind {
				case yaml.ScalarNode:
					pm = mta.PoolMember{Source: m.Value, Weight: 1}
				case yaml.MappingNode:
					d.fields(m, mp+".", map[string]func(string, *yaml.Node){
						"source": d.str(&pm.Source), "weight": d.integer(&pm.Weight)}, "source")
					if _, set := d.lines[mp+".weight"]; !set {
						pm.Weight = 1
					}
				default:
					d.typeErr(mp, m, "a source name or {source, weight}")
					continue
				}
				members = append(members, pm)
			}
			out[k.Value] = members
		}
		*dst = out
	}
}

// warmup decodes a mapping of source name → messages per provider per day.
func (d *decoder) warmup(dst *warmup.Schedule) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) || !d.mapping(path, v) {
			return
		}
		out := warmup.Schedule{}
		for i := 0; i+1 < len(v.Content); i += 2 {
			k, e := resolve(v.Content[i]), resolve(v.Content[i+1])
			p := path + "." + k.Value
			d.lines[p] = k.Line
			if e.Kind != yaml.SequenceNode {
				d.typeErr(p, e, "a list of messages per provider per day, such as [50, 100, 500]")
				continue
			}
			caps := []int{}
			for j, c := range e.Content {
				c = resolve(c)
				n, err := strconv.Atoi(c.Value)
				if c.Kind != yaml.ScalarNode || c.ShortTag() != "!!int" || err != nil {
					d.typeErr(fmt.Sprintf("%s[%d]", p, j), c, "a whole number of messages")
					continue
				}
				caps = append(caps, n)
			}
			out[k.Value] = caps
		}
		*dst = out
	}
}

// checkSources checks sources, pools and warm-up against each other.
func (dl Delivery) checkSources(d *decoder) {
	names := map[string]bool{}
	for i, s := range dl.Sources {
		p := fmt.Sprintf("delivery.sources[%d]", i)
		switch {
		case s.Name == "":
		case names[s.Name]:
			d.fieldErr(p+".name", "source %s is named twice", Quote(s.Name))
		default:
			names[s.Name] = true
		}
		if s.Address != "" && net.ParseIP(s.Address) == nil {
			d.fieldErr(p+".address", "%s is not an IP address", Quote(s.Address))
		}
		if s.EHLO != "" && !isHostname(s.EHLO) {
			d.fieldErr(p+".ehlo", "%s is not a host name", Quote(s.EHLO))
		}
	}
	if len(dl.Pools) > 0 && len(dl.Sources) == 0 {
		d.fieldErr("delivery.pools", "pools need delivery.sources")
	}
	for pool, members := range dl.Pools {
		p := "delivery.pools." + pool
		if len(members) == 0 {
			d.fieldErr(p, "names no source")
		}
		for j, m := range members {
			mp := fmt.Sprintf("%s[%d]", p, j)
			if len(dl.Sources) > 0 && !names[m.Source] {
				d.fieldErr(mp, "no source named %s in delivery.sources", Quote(m.Source))
			}
			if m.Weight < 1 || m.Weight > 1000 {
				d.fieldErr(mp+".weight", "%d must be between 1 and 1000", m.Weight)
			}
		}
	}
	for src, caps := range dl.Warmup {
		p := "delivery.warmup." + src
		if !names[src] {
			d.fieldErr(p, "no source named %s in delivery.sources", Quote(src))
		}
		if err := (warmup.Schedule{src: caps}).Validate(); err != nil {
			d.fieldErr(p, "%v", err)
		}
	}
}

// HasPool reports whether a campaign may name pool: any pool when no
// pools are configured (one default address), else a configured one or the
// default pool (every source).
func (dl Delivery) HasPool(pool string) bool {
	if pool == "" || pool == mta.DefaultPool || len(dl.Sources) == 0 {
		return true
	}
	_, ok := dl.Pools[pool]
	return ok
}
