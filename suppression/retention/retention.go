// Package retention applies the retention periods (prune) and rewrites the
// store files so that deleted bytes leave them (compact).
//
// Prune removes finished queue records and capture files older than the
// finished-messages period, on a cluster node the cluster's records of the
// campaigns finished longer ago than that, unconfirmed sign-ups older than the pending
// opt-in period and audit entries older than the audit period, then records
// what it removed in the audit log (the counts are only known afterwards).
// Compact rewrites each store file: bbolt reuses freed pages without wiping
// them, so until a store is compacted its file still holds what was deleted.
//
// The package reaches the queue, the capture outbox, the consent store, the
// cluster's campaigns and the audit log through the small interfaces below: under suppression/ it
// may not import queue or mta (docs/architecture.md, layering rule 6).
package retention

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/postwarden/postwarden/suppression/audit"
)

// Queue is what pruning needs of the queue store (queue.Store).
type Queue interface {
	PruneFinished(olderThan time.Duration) (int, error)
}

// Campaigns is what pruning needs of a cluster node's campaign shares
// (campaign/shares.Coordinator): the same rule as Queue's for the records a
// campaign leaves in the cluster.
type Campaigns interface {
	PruneFinished(ctx context.Context, olderThan time.Duration) (int, error)
}

// Outbox is what pruning needs of the capture folder (mta.Outbox).
type Outbox interface {
	Prune(cut time.Time) (int, error)
}

// Subscribers is what pruning needs of the consent store.
type Subscribers interface {
	PrunePending(olderThan time.Duration) (int, error)
}

// Audit is what pruning needs of the audit log: its own retention, and the
// record of each prune.
type Audit interface {
	Prune(before time.Time) (int, error)
	Append(e audit.Entry) (audit.Entry, error)
}

// Periods are how long records are kept.
type Periods struct {
	FinishedMessages time.Duration // delivered, bounced, expired records and their capture files
	PendingOptin     time.Duration // unconfirmed sign-ups
	Audit            time.Duration // audit entries
}

// Deps are the stores a prune works on.
type Deps struct {
	Queue       Queue
	Campaigns   Campaigns // nil on a single node
	Outbox      Outbox
	Subscribers Subscribers
	Audit       Audit
	Periods     Periods
	Now         func() time.Time // nil: time.Now
}

// Request says who prunes.
type Request struct {
	Who string // "local:alice", "system:retention"
	// SkipEmpty leaves a prune that removed nothing out of the audit log
	// (the daemon's hourly run).
	SkipEmpty bool
}

// Result is what a prune removed.
type Result struct {
	FinishedMessages int `json:"finished_messages"`
	ClusterCampaigns int `json:"cluster_campaigns"` // finished campaigns whose cluster records went
	CaptureFiles     int `json:"capture_files"`
	PendingOptins    int `json:"pending_optins"`
	AuditEntries     int `json:"audit_entries"`
}

// Prune applies the retention periods, then appends a "db.prune" entry
// with the counts (unless r.SkipEmpty and nothing was removed). On an
// error of the audit the result still says what was removed.
func Prune(ctx context.Context, d Deps, r Request) (Result, error) {
	res, err := prune(ctx, d)
	if err != nil {
		return res, err
	}
	if r.SkipEmpty && res == (Result{}) {
		return res, nil
	}
	if d.Audit == nil {
		return res, errors.New("audit db.prune: audit log is not open")
	}
	_, err = d.Audit.Append(audit.Entry{Who: r.Who, Action: "db.prune", Reason: "retention", Details: map[string]string{
		"finished_messages": fmt.Sprint(res.FinishedMessages), "cluster_campaigns": fmt.Sprint(res.ClusterCampaigns),
		"capture_files": fmt.Sprint(res.CaptureFiles), "pending_optins": fmt.Sprint(res.PendingOptins),
		"audit_entries": fmt.Sprint(res.AuditEntries)}})
	if err != nil {
		return res, fmt.Errorf("audit db.prune: %w", err)
	}
	return res, nil
}

// prune removes what the periods say is due, store by store.
func prune(ctx context.Context, d Deps) (Result, error) {
	var r Result
	var err error
	now := time.Now
	if d.Now != nil {
		now = d.Now
	}
	p := d.Periods
	if r.FinishedMessages, err = d.Queue.PruneFinished(p.FinishedMessages); err != nil {
		return r, fmt.Errorf("prune finished messages: %w", err)
	}
	if d.Campaigns != nil {
		if r.ClusterCampaigns, err = d.Campaigns.PruneFinished(ctx, p.FinishedMessages); err != nil {
			return r, fmt.Errorf("prune finished campaigns in the cluster: %w", err)
		}
	}
	if r.CaptureFiles, err = d.Outbox.Prune(now().Add(-p.FinishedMessages)); err != nil {
		return r, fmt.Errorf("prune capture files: %w", err)
	}
	if r.PendingOptins, err = d.Subscribers.PrunePending(p.PendingOptin); err != nil {
		return r, fmt.Errorf("prune pending opt-ins: %w", err)
	}
	if r.AuditEntries, err = d.Audit.Prune(now().Add(-p.Audit)); err != nil {
		return r, fmt.Errorf("prune audit log: %w", err)
	}
	return r, nil
}

// Compacter is a store that can rewrite its file (queue, suppression and
// subscriber stores).
type Compacter interface {
	Compact() error
}

// Store is one store file to compact.
type Store struct {
	Name string // as errors name it: "queue"
	Path string // its file, whose size is reported
	DB   Compacter
}

// Size is a store file's size before and after a compaction.
type Size struct {
	File        string `json:"file"`
	BytesBefore int64  `json:"bytes_before"`
	BytesAfter  int64  `json:"bytes_after"`
}

// Compact rewrites every store, in order, and reports the sizes of the
// files that existed before, sorted by file name.
func Compact(stores []Store) ([]Size, error) {
	var sizes []Size
	for _, s := range stores {
		if fi, err := os.Stat(s.Path); err == nil {
			sizes = append(sizes, Size{File: fileName(s), BytesBefore: fi.Size()})
		}
	}
	if err := CompactAll(stores); err != nil {
		return nil, err
	}
	byName := map[string]string{}
	for _, s := range stores {
		byName[fileName(s)] = s.Path
	}
	for i := range sizes {
		if fi, err := os.Stat(byName[sizes[i].File]); err == nil {
			sizes[i].BytesAfter = fi.Size()
		}
	}
	sort.Slice(sizes, func(i, j int) bool { return sizes[i].File < sizes[j].File })
	return sizes, nil
}

// CompactAll rewrites every store, in order, stopping at the first error.
func CompactAll(stores []Store) error {
	for _, s := range stores {
		if err := s.DB.Compact(); err != nil {
			return fmt.Errorf("compact %s: %w", s.Name, err)
		}
	}
	return nil
}

// fileName is the base name a size is reported under ("queue.db").
func fileName(s Store) string { return filepath.Base(s.Path) }
