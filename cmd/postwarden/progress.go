package main

import (
	"fmt"
	"io"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progressBar draws a bar on a terminal; elsewhere (not with --json) a
// plain line of the delivery now and then.
type progressBar struct {
	bar       *progressbar.ProgressBar
	delivery  bool // bar is the delivery's
	on, plain bool
	last      time.Time
	w         io.Writer
}

// plainEvery is how often a delivery line is printed when not on a terminal.
const plainEvery = 10 * time.Second

func newProgressBar(w io.Writer, jsonOut bool) *progressBar {
	f, ok := fileOf(w)
	on := ok && !jsonOut && term.IsTerminal(int(f.Fd()))
	return &progressBar{on: on, plain: !on && !jsonOut, w: w}
}

// deliveryLine says how the delivery goes, in recipients.
func deliveryLine(p progress) string {
	s := fmt.Sprintf("delivered %d, deferred %d, bounced %d, pending %d", p.Delivered, p.Deferred, p.Bounced, p.Pending)
	if p.Rate > 0 {
		s += fmt.Sprintf(", %.0f/s, ETA %s", p.Rate, (time.Duration(p.ETA) * time.Second).String())
	}
	return s
}

// Update moves the bar to p.
func (b *progressBar) Update(p progress) {
	if p.Phase == "deliver" {
		b.updateDelivery(p)
		return
	}
	if !b.on {
		return
	}
	if b.bar == nil {
		b.bar = progressbar.NewOptions64(p.Total,
			progressbar.OptionSetWriter(b.w),
			progressbar.OptionSetDescription("recipients"),
			progressbar.OptionShowBytes(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	_ = b.bar.Set64(p.Bytes)
	b.bar.Describe(fmt.Sprintf("%d recipients", p.Rows))
}

// updateDelivery shows delivery progress: a bar of finished messages on a
// terminal, a plain line every plainEvery elsewhere.
func (b *progressBar) updateDelivery(p progress) {
	total := int64(p.Delivered + p.Bounced + p.Pending)
	if !b.on {
		if b.plain && time.Since(b.last) >= plainEvery {
			b.last = time.Now()
			fmt.Fprintf(b.w, "delivery: %s\n", deliveryLine(p))
		}
		return
	}
	if b.bar == nil || !b.delivery {
		if b.bar != nil {
			_ = b.bar.Finish()
		}
		b.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(b.w),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionShowCount(),
			progressbar.OptionClearOnFinish(),
		)
		b.delivery = true
	}
	b.bar.ChangeMax64(max(total, 1))
	_ = b.bar.Set64(total - int64(p.Pending))
	b.bar.Describe(deliveryLine(p))
}

// Clear wipes the bar so a line can be printed.
func (b *progressBar) Clear() {
	if b.bar != nil {
		_ = b.bar.Clear()
	}
}

// Finish removes the bar.
func (b *progressBar) Finish() {
	if b.bar != nil {
		_ = b.bar.Finish()
	}
}
