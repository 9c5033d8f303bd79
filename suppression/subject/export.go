package subject

import (
	"encoding/csv"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/postwarden/postwarden/suppression"
	"github.com/postwarden/postwarden/suppression/audit"
	"github.com/postwarden/postwarden/suppression/subscribers"
)

// Data is everything held about one person (Art. 15 and 20).
type Data struct {
	Subject     string                    `json:"subject"`
	GeneratedAt time.Time                 `json:"generated_at"`
	Subscriber  []subscribers.ListHistory `json:"subscriber"`
	Suppression []suppression.Entry       `json:"suppression"`
	Messages    []Message                 `json:"messages"`
	// Audit are the audit entries that name the person (by index).
	Audit []audit.Entry `json:"audit"`
	// Captures are the messages as sent, from the capture folder.
	Captures []Capture `json:"capture_files"`
}

// Capture is one capture file that holds the person's address.
type Capture struct {
	Name    string `json:"name"`
	Message string `json:"message"` // the signed bytes as sent
}

// Export gathers everything held about r.Address (consent events,
// suppression entries, queue messages, audit entries naming the person,
// capture files), in the format it will be
// handed over in ("json" or "csv"; "" is json), and records the export
// (format and counts) in the audit log before returning it.
func Export(d Deps, r Request, format string) (Data, error) {
	ref, err := r.check(d, "export")
	if err != nil {
		return Data{}, err
	}
	if format == "" {
		format = "json"
	}
	if format != "json" && format != "csv" {
		return Data{}, fmt.Errorf("subject export: --format %q: want json or csv", format)
	}
	x := Data{Subject: r.Address, GeneratedAt: d.now().UTC()}
	if x.Subscriber, err = d.Subscribers.History(r.Address); err != nil && !errors.Is(err, subscribers.ErrNotFound) {
		return Data{}, fmt.Errorf("subject export: subscribers: %w", err)
	}
	if x.Suppression, err = d.Suppression.EntriesFor(r.Address); err != nil {
		return Data{}, fmt.Errorf("subject export: suppression: %w", err)
	}
	if x.Messages, err = d.Queue.MessagesFor(r.Address); err != nil {
		return Data{}, fmt.Errorf("subject export: queue: %w", err)
	}
	if err := gatherFiles(d, r.Address, ref, &x); err != nil {
		return Data{}, err
	}
	if err := d.record(r, "subject.export", ref, map[string]string{"format": format,
		"messages": fmt.Sprint(len(x.Messages)), "suppression": fmt.Sprint(len(x.Suppression))}); err != nil {
		return Data{}, err
	}
	return x, nil
}

// gatherFiles adds to x the audit entries naming ref and the capture files
// holding addr.
func gatherFiles(d Deps, addr, ref string, x *Data) error {
	if d.Audit == nil {
		return errors.New("subject export: audit log is not open")
	}
	err := d.Audit.List(time.Time{}, func(e audit.Entry) error {
		if e.Target == ref {
			x.Audit = append(x.Audit, e)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("subject export: audit: %w", err)
	}
	err = d.Outbox.Mentioning(addr, func(name string, body []byte) error {
		x.Captures = append(x.Captures, Capture{Name: name, Message: string(body)})
		return nil
	})
	if err != nil {
		return fmt.Errorf("subject export: capture files: %w", err)
	}
	return nil
}

// CSV flattens an export into rows of section, item, time, detail.
func (x Data) CSV() string {
	var sb strings.Builder
	w := csv.NewWriter(&sb)
	_ = w.Write([]string{"section", "item", "time", "detail"})
	for _, lh := range x.Subscriber {
		for _, ev := range lh.Events {
			_ = w.Write([]string{"consent", lh.List + ":" + ev.Kind, ev.Time.Format(time.RFC3339), strings.TrimSpace(ev.Source + " " + ev.IP + " " + ev.ConsentText)})
		}
	}
	for _, en := range x.Suppression {
		list := en.List
		if list == "" {
			list = "*"
		}
		_ = w.Write([]string{"suppression", list + ":" + string(en.Reason), en.Time.Format(time.RFC3339), en.Source})
	}
	for _, m := range x.Messages {
		_ = w.Write([]string{"message", m.Campaign + ":" + m.ID, m.Created.Format(time.RFC3339), m.State + " " + m.Reply})
	}
	for _, e := range x.Audit {
		_ = w.Write([]string{"audit", fmt.Sprintf("%d:%s", e.Seq, e.Action), e.Time.Format(time.RFC3339), strings.TrimSpace(e.Who + " " + e.Reason)})
	}
	for _, c := range x.Captures {
		_ = w.Write([]string{"capture", c.Name, "", fmt.Sprintf("%d bytes", len(c.Message))})
	}
	w.Flush()
	return sb.String()
}
