package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progressBar draws a bar on a terminal and nothing elsewhere.
type progressBar struct {
	bar *progressbar.ProgressBar
	on  bool
	w   io.Writer
}

func newProgressBar(w io.Writer, jsonOut bool) *progressBar {
	f, ok := w.(*os.File)
	return &progressBar{on: ok && !jsonOut && term.IsTerminal(int(f.Fd())), w: w}
}

// Update moves the bar to p.
func (b *progressBar) Update(p progress) {
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
