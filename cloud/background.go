package cloud

import (
	"context"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
)

// topicStanding carries, between the nodes that share a store, the ID of a
// device whose standing changed, so that every node closes its sessions.
const topicStanding = "device.standing"

// startBackground starts the node's own goroutines, which Close stops: the
// listener for standing changes made on other nodes, and the sweeper.
func (n *Node) startBackground(ctx context.Context) error {
	sub, err := n.store.Notifier().Listen(ctx, topicStanding)
	if err != nil {
		return err
	}
	bg, cancel := context.WithCancel(context.Background())
	n.bgCancel = cancel
	n.bg.Go(func() {
		defer sub.Close()
		n.followStanding(bg, sub)
	})
	interval := n.cfg.SweepInterval
	if interval == 0 {
		interval = DefaultSweepInterval
	}
	if interval > 0 {
		n.bg.Go(func() { n.sweepEvery(bg, interval) })
	}
	return nil
}

// followStanding closes the sessions of every device whose standing
// another node (or this one) changed. After a resync (the notifier lost
// messages) sessions are not checked again here: each request of a device
// that is no longer active is refused by the resources anyway.
func (n *Node) followStanding(ctx context.Context, sub *store.Subscription) {
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			return
		}
		if msg.Resync {
			n.log.Warn("standing notifications were lost; refused devices are refused at their next request")
			continue
		}
		id, err := identity.ParseID(string(msg.Payload))
		if err != nil {
			n.log.Warn("bad standing notification", "err", err)
			continue
		}
		d, err := n.store.Device(ctx, id)
		if err == nil && d.Standing != store.Active {
			n.srv.Revoke(id)
		}
	}
}

// announceStanding tells every node sharing the store that a device's
// standing changed.
func (n *Node) announceStanding(ctx context.Context, id identity.ID) {
	if err := n.store.Notifier().Notify(ctx, topicStanding, []byte(id.String())); err != nil {
		n.log.Warn("announcing a standing change", "device", id, "err", err)
	}
}

// sweepEvery sweeps until ctx ends.
func (n *Node) sweepEvery(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := n.Sweep(ctx); err != nil && ctx.Err() == nil {
			n.log.Warn("sweep failed", "err", err)
		}
		if _, err := n.store.PurgeReplays(ctx, n.now()); err != nil && ctx.Err() == nil {
			n.log.Warn("purging the replay cache failed", "err", err)
		}
	}
}
