package cloud

import (
	"context"
	"strings"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
)

// Topics of the store's notifier, between the nodes that share a store.
const (
	// topicStanding carries the ID of a device whose standing changed,
	// so that every node closes its sessions.
	topicStanding = "device.standing"
	// topicChanges carries "<resource path> <device ID>" for a change to
	// what a device observes (see changed).
	topicChanges = "device.changes"
	// topicConsent carries a subject whose consent records changed, for
	// the /v1/consent observers of all its devices (consentChanged).
	topicConsent = "subject.consent"
)

// startBackground starts the node's own goroutines, which Close stops: the
// listener for standing changes made on other nodes, and the sweeper.
func (n *Node) startBackground(ctx context.Context) error {
	sub, err := n.store.Notifier().Listen(ctx, topicStanding, topicChanges, topicConsent)
	if err != nil {
		return err
	}
	bg, cancel := context.WithCancel(context.Background())
	n.bgCancel = cancel
	n.bg.Go(func() {
		defer sub.Close()
		n.follow(bg, sub)
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

// follow acts on what the nodes sharing the store announce: it closes the
// sessions of every device whose standing changed, and notifies this
// node's observers of every change to what a device observes. After a
// resync (the notifier lost messages) nothing is replayed: a device no
// longer active is refused at its next request by every resource, and an
// observer gets the current value when it registers again (at its next
// keep-alive or reconnect).
func (n *Node) follow(ctx context.Context, sub *store.Subscription) {
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			return
		}
		switch {
		case msg.Resync:
			n.log.Warn("change notifications were lost; devices catch up at their next request or registration")
		case msg.Topic == topicStanding:
			id, err := identity.ParseID(string(msg.Payload))
			if err != nil {
				n.log.Warn("bad standing notification", "err", err)
				continue
			}
			d, err := n.store.Device(ctx, id)
			if err == nil && d.Standing != store.Active {
				n.srv.Revoke(id)
			}
		case msg.Topic == topicConsent:
			n.notifySubject(ctx, string(msg.Payload))
		case msg.Topic == topicChanges:
			path, dev, ok := strings.Cut(string(msg.Payload), " ")
			id, err := identity.ParseID(dev)
			if !ok || err != nil {
				n.log.Warn("bad change notification", "payload", string(msg.Payload))
				continue
			}
			n.notify(ctx, path, id)
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
