package brakes

import (
	"fmt"
	"sync"
)

// Plus is f and g added: two nodes' figures of one campaign.
func (f Figures) Plus(g Figures) Figures {
	return Figures{Attempted: f.Attempted + g.Attempted, Delivered: f.Delivered + g.Delivered,
		HardBounces: f.HardBounces + g.HardBounces, Complaints: f.Complaints + g.Complaints}
}

// Cluster is the Counter of a cluster node: a campaign's figures are the
// whole cluster's, this node's own (its Local counter, read at each call)
// plus the figures each other node last published (Observe). A campaign
// spread over n nodes gives each about 1/n of its sample: judged on its own
// figures a node would reach min_sample late, or never, while the rate is
// the cluster's. A node down keeps counting with what it last published.
// Safe for concurrent use.
type Cluster struct {
	local  Counter
	mu     sync.Mutex
	others map[string]map[string]Figures // campaign → node → figures
}

// NewCluster returns a Cluster over this node's own counter.
func NewCluster(local Counter) *Cluster {
	return &Cluster{local: local, others: map[string]map[string]Figures{}}
}

// Observe records node's figures of campaign as it published them (each
// value replaces the node's last: its figures only grow).
func (c *Cluster) Observe(campaign, node string, f Figures) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.others[campaign] == nil {
		c.others[campaign] = map[string]Figures{}
	}
	c.others[campaign][node] = f
}

// Figures is this node's figures of campaign plus every other node's.
func (c *Cluster) Figures(campaign string) (Figures, error) {
	f, err := c.local.Figures(campaign)
	if err != nil {
		return Figures{}, fmt.Errorf("this node's figures: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, g := range c.others[campaign] {
		f = f.Plus(g)
	}
	return f, nil
}
