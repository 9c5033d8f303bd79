package report

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/go-analyze/charts"
)

//go:embed report.html.tmpl
var pageText string

// page is the report's HTML: no script, no external resource; the CSP
// forbids both, so a page edited later cannot start fetching either.
var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"join": strings.Join,
	"ms":   millis,
	"sum":  sumMap,
}).Parse(pageText))

// Chart is one rendered chart: its SVG and, for readers without images, a
// caption.
type chart struct {
	ID      string
	Title   string
	Caption string
	SVG     template.HTML // the library's own SVG output, inline
	Empty   string        // set instead of SVG when there is nothing to draw
}

// view is what the template renders.
type view struct {
	*Report
	Charts     []chart
	LatencyBin []string
}

// WriteHTML writes the report as one self-contained HTML page.
func (r *Report) WriteHTML(w io.Writer) error {
	cs, err := r.charts()
	if err != nil {
		return err
	}
	v := view{Report: r, Charts: cs, LatencyBin: latencyLabels()}
	var buf bytes.Buffer
	if err := page.Execute(&buf, v); err != nil {
		return fmt.Errorf("report: render page: %w", err)
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("report: write page: %w", err)
	}
	return nil
}

// charts renders the four charts as SVG with go-analyze/charts.
func (r *Report) charts() ([]chart, error) {
	var out []chart
	add := func(c chart, svg []byte, err error) error {
		if err != nil {
			return fmt.Errorf("report: chart %s: %w", c.ID, err)
		}
		if svg != nil {
			// The library's SVG, drawn from numbers and labels kept to a plain charset.
			c.SVG = template.HTML(inlineSVG(svg))
		}
		out = append(out, c)
		return nil
	}

	d := r.Deliveries
	c := chart{ID: "deliveries", Title: "Deliveries over time", Caption: fmt.Sprintf("Delivery attempts per %s (UTC), stacked by outcome.", stepName(d.Step))}
	var svg []byte
	var err error
	if len(d.Labels) == 0 {
		c.Empty = "No delivery attempt is recorded."
	} else {
		svg, err = stackedBars(d.Labels, d.Names, d.Counts, false)
	}
	if err := add(c, svg, err); err != nil {
		return nil, err
	}

	c, svg, err = chart{ID: "bounces", Title: "Bounces by reason", Caption: "Bounced messages by kind and classified reason."}, nil, nil
	if len(r.Bounces) == 0 {
		c.Empty = "No message bounced."
	} else {
		labels := make([]string, len(r.Bounces))
		counts := map[string][]int{"hard": make([]int, len(r.Bounces)), "soft": make([]int, len(r.Bounces)), "unknown": make([]int, len(r.Bounces))}
		for i, b := range r.Bounces {
			labels[i] = b.Reason
			counts[kindSeries(b.Kind)][i] += b.Count
		}
		svg, err = stackedBars(labels, []string{"hard", "soft", "unknown"}, counts, true)
	}
	if err := add(c, svg, err); err != nil {
		return nil, err
	}

	c, svg, err = chart{ID: "providers", Title: "Outcomes by provider", Caption: "The campaign's messages by mailbox provider and state."}, nil, nil
	if len(r.Providers) == 0 {
		c.Empty = "No message is in the queue."
	} else {
		names := []string{"delivered", "pending", "bounced", "other"}
		labels := make([]string, len(r.Providers))
		counts := map[string][]int{}
		for _, n := range names {
			counts[n] = make([]int, len(r.Providers))
		}
		for i, p := range r.Providers {
			labels[i] = p.Provider
			counts["delivered"][i], counts["pending"][i], counts["bounced"][i], counts["other"][i] = p.Delivered, p.Pending, p.Bounced, p.Other
		}
		svg, err = stackedBars(labels, names, counts, true)
	}
	if err := add(c, svg, err); err != nil {
		return nil, err
	}

	u := r.Unsubscribes
	c, svg, err = chart{ID: "unsubscribes", Title: "Unsubscribes over time", Caption: fmt.Sprintf("Unsubscribes recorded per %s (UTC).", stepName(u.Over.Step))}, nil, nil
	if u.Timed == 0 {
		c.Empty = "No unsubscribe is recorded for this campaign."
	} else {
		svg, err = stackedBars(u.Over.Labels, u.Over.Names, u.Over.Counts, false)
	}
	if err := add(c, svg, err); err != nil {
		return nil, err
	}

	c, svg, err = chart{ID: "latency", Title: "Time from request to suppression", Caption: "Unsubscribes by the time between the request and the suppression store holding it."}, nil, nil
	if u.Timed == 0 {
		c.Empty = "No unsubscribe is recorded for this campaign."
	} else {
		svg, err = stackedBars(latencyLabels(), []string{"unsubscribes"}, map[string][]int{"unsubscribes": u.Latency}, false)
	}
	if err := add(c, svg, err); err != nil {
		return nil, err
	}
	return out, nil
}

// kindSeries is the bounce chart's series of a kind.
func kindSeries(kind string) string {
	if kind == "hard" || kind == "soft" {
		return kind
	}
	return "unknown"
}

// stackedBars renders series (in names' order) over labels as a stacked
// bar chart, horizontal when there are categories rather than times.
func stackedBars(labels, names []string, counts map[string][]int, horizontal bool) ([]byte, error) {
	series := make([][]float64, len(names))
	for i, n := range names {
		series[i] = make([]float64, len(labels))
		for j, v := range counts[n] {
			series[i][j] = float64(v)
		}
	}
	safe := make([]string, len(labels))
	for i, l := range labels {
		safe[i] = label(l)
	}
	opt := charts.NewBarChartOptionWithData(series)
	opt.Horizontal = horizontal
	opt.StackSeries = charts.Ptr(true)
	opt.CategoryAxis.Labels = safe
	opt.Legend.SeriesNames = names
	opt.Legend.Offset = charts.OffsetRight
	opt.Padding = charts.NewBox(12, 24, 24, 12)
	height := 360
	if horizontal {
		height = max(200, 90+36*len(labels))
	}
	p := charts.NewPainter(charts.PainterOptions{OutputFormat: charts.ChartOutputSVG, Width: 860, Height: height})
	if err := p.BarChart(opt); err != nil {
		return nil, err
	}
	return p.Bytes()
}

// unsafeLabel is what a chart label may not hold: labels come from
// provider names and reasons, kept to a plain charset before they reach SVG.
var unsafeLabel = regexp.MustCompile(`[^A-Za-z0-9 ._:+/()<>=%-]`)

// label is l fit for a chart axis: plain characters, at most 40 of them.
func label(l string) string {
	l = unsafeLabel.ReplaceAllString(l, "_")
	if len(l) > 40 {
		l = l[:39] + "…"
	}
	return l
}

// inlineSVG drops an XML declaration, which has no place inside HTML.
func inlineSVG(svg []byte) string {
	s := string(svg)
	if strings.HasPrefix(s, "<?xml") {
		if i := strings.Index(s, "?>"); i >= 0 {
			s = strings.TrimSpace(s[i+2:])
		}
	}
	return s
}

// latencyLabels names the latency histogram's bins.
func latencyLabels() []string {
	out := make([]string, 0, len(LatencyBins)+1)
	for _, b := range LatencyBins {
		out = append(out, "<= "+b.String())
	}
	return append(out, "> "+LatencyBins[len(LatencyBins)-1].String())
}

// stepName says a bucket width in words.
func stepName(d time.Duration) string {
	switch {
	case d <= 0:
		return "interval"
	case d%(24*time.Hour) == 0:
		if d == 24*time.Hour {
			return "day"
		}
		return fmt.Sprintf("%d days", d/(24*time.Hour))
	case d == time.Hour:
		return "hour"
	case d == time.Minute:
		return "minute"
	case d == time.Second:
		return "second"
	}
	return d.String()
}

// millis formats a duration in milliseconds, for the latency figures.
func millis(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

// sumMap adds up a map's counts.
func sumMap(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
