package configs

import (
	"github.com/postwarden/postwarden/campaign/brakes"

	"go.yaml.in/yaml/v3"
)

// DefaultPool is a campaign's sending pool when its file names none.
const DefaultPool = "default"

// Brakes is a brakes: block (campaign file, or delivery.brakes) as written;
// a nil field was not given.
type Brakes struct {
	ComplaintRate  *float64 // fraction: "0.3%" is 0.003
	HardBounceRate *float64
	MinSample      *int
}

// Over returns base with b's given fields laid over it.
func (b Brakes) Over(base brakes.Thresholds) brakes.Thresholds {
	if b.ComplaintRate != nil {
		base.ComplaintRate = *b.ComplaintRate
	}
	if b.HardBounceRate != nil {
		base.HardBounceRate = *b.HardBounceRate
	}
	if b.MinSample != nil {
		base.MinSample = *b.MinSample
	}
	return base
}

// rawBrakes is a brakes: block before its values are checked.
type rawBrakes struct {
	complaint, hardBounce string
	minSample             int
	given                 map[string]bool
}

// rawBrakes decodes a brakes: mapping {complaint_rate, hard_bounce_rate, min_sample}.
func (d *decoder) rawBrakes(dst *rawBrakes) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) || !d.mapping(path, v) {
			return
		}
		dst.given = map[string]bool{}
		d.fields(v, path+".", map[string]func(string, *yaml.Node){
			"complaint_rate":   d.scalarStr(&dst.complaint),
			"hard_bounce_rate": d.scalarStr(&dst.hardBounce),
			"min_sample":       d.integer(&dst.minSample),
		})
		for _, k := range []string{"complaint_rate", "hard_bounce_rate", "min_sample"} {
			if d.lines[path+"."+k] != 0 {
				dst.given[k] = true
			}
		}
	}
}

// brakes checks a decoded brakes: block at path, recording each bad value
// (rates are percentages "0.3%" from 0% to 100%; min_sample at least 1).
func (d *decoder) brakes(path string, raw rawBrakes) Brakes {
	var b Brakes
	for _, r := range []struct {
		key string
		v   string
		dst **float64
	}{{"complaint_rate", raw.complaint, &b.ComplaintRate}, {"hard_bounce_rate", raw.hardBounce, &b.HardBounceRate}} {
		if !raw.given[r.key] || r.v == "" {
			continue
		}
		f, err := brakes.ParsePercent(r.v)
		if err != nil {
			d.fieldErr(path+"."+r.key, "%v", err)
			continue
		}
		*r.dst = &f
	}
	if raw.given["min_sample"] && !d.failed[path+".min_sample"] {
		if raw.minSample < 1 {
			d.fieldErr(path+".min_sample", "%d: want at least 1", raw.minSample)
		} else {
			n := raw.minSample
			b.MinSample = &n
		}
	}
	return b
}
