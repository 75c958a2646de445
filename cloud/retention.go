package cloud

import (
	"context"
	"errors"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
)

// Sweep deletes the readings the cloud may no longer keep at the time
// Config.Now gives, and returns how many it deleted: every reading of a
// stream taken longer ago than the cloud retention its manifest gives
// the stream (a stream without one keeps its readings), and every
// reading stored under a consent record taken longer ago than the
// record's retention (the shortest of its processes'), whichever comes
// first. Batches stay, so that a batch sent again is still known as
// one.
//
// A node sweeps every Config.SweepInterval by itself, and Sweep may be
// called any time; several nodes may sweep one store at once. A manifest that
// cannot be checked any more is skipped, and its error returned with
// the others once the rest is swept.
func (n *Node) Sweep(ctx context.Context) (int64, error) {
	now := n.now()
	models, err := n.store.ListModels(ctx)
	if err != nil {
		return 0, err
	}
	var deleted int64
	var errs []error
	for _, model := range models {
		ms, err := n.store.ListManifests(ctx, model.ID)
		if err != nil {
			return deleted, err
		}
		for _, sm := range ms {
			m, err := openManifest(ctx, n.keys, sm)
			if err != nil {
				n.log.Error("retention: manifest skipped", "manifest", sm.Hash, "err", err)
				errs = append(errs, err)
				continue
			}
			for _, s := range m.Streams {
				if s.CloudRetention <= 0 {
					continue
				}
				cut, err := n.store.DeleteReadings(ctx, store.Retention{Manifest: sm.Hash, Stream: s.Name, Before: now.Add(-time.Duration(s.CloudRetention))})
				if err != nil {
					return deleted, err
				}
				deleted += cut
			}
		}
	}
	cut, err := n.store.DeleteConsentedReadings(ctx, now)
	if err != nil {
		return deleted, err
	}
	deleted += cut
	if deleted > 0 {
		n.log.Info("retention: readings deleted", "readings", deleted)
	}
	return deleted, errors.Join(errs...)
}
