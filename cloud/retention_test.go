package cloud_test

import (
	"context"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/protocol"
)

// TestSweep: as the node's clock moves on, Sweep deletes each stream's
// readings past the retention of its manifest, and sooner those of a
// consent that keeps them for less; the batches stay known.
func TestSweep(t *testing.T) {
	for _, kind := range []string{"sqlite", "postgres"} {
		t.Run(kind, func(t *testing.T) {
			f := newFixture(t, kind, cloud.Config{})
			ctx := context.Background()
			ac, vac := f.importDevice(aircon), f.importDevice(vacuum)
			start := f.clock.now()
			f.give(powerGrant(start.Add(-24 * time.Hour)))
			pests := pestGrant(start.Add(-24 * time.Hour))
			pests.Processes[0].Retention = 2 * 24 * 3600 // two days, where the manifest says 90
			f.give(pests)

			// power is kept a year, occupancy 30 days, pest sightings 90
			// days by the manifest and 2 by the consent.
			c, vc := f.dial(ac, "coaps"), f.dial(vac, "coaps")
			power := f.power(ac, 1, 3)
			occ := protocol.Batch{Manifest: f.manifests[aircon].hash, Stream: "occupancy", Key: protocol.Key{Epoch: 0x5eed, Seq: 2},
				Readings: []policy.Reading{{"ts": start.Add(-time.Hour).Truncate(15 * time.Minute), "people": 2.0}}}
			for _, b := range []protocol.Batch{power, occ} {
				if _, err := post(t, c, b); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := post(t, vc, f.pests(vac, 1, "moth", "")); err != nil {
				t.Fatal(err)
			}
			left := func() [3]int {
				return [3]int{len(f.readings(ac, "power")), len(f.readings(ac, "occupancy")), len(f.readings(vac, "pest-sighting"))}
			}
			for _, step := range []struct {
				after   time.Duration
				deleted int64
				left    [3]int
			}{
				{0, 0, [3]int{3, 1, 1}},
				{46 * time.Hour, 0, [3]int{3, 1, 1}}, // the sighting was taken up to an hour before start
				{50 * time.Hour, 1, [3]int{3, 1, 0}},
				{31 * 24 * time.Hour, 1, [3]int{3, 0, 0}},
				{364 * 24 * time.Hour, 0, [3]int{3, 0, 0}},
				{367 * 24 * time.Hour, 3, [3]int{0, 0, 0}},
			} {
				f.clock.add(start.Add(step.after).Sub(f.clock.now()))
				n, err := f.node.Sweep(ctx)
				must(t, err)
				if n != step.deleted || left() != step.left {
					t.Fatalf("after %v: %d deleted, %v left; want %d, %v", step.after, n, left(), step.deleted, step.left)
				}
			}
			// The batch is still known: sent again, it is a repeat.
			ack, err := post(t, c, power)
			must(t, err)
			if !ack.Duplicate || ack.Stored != 3 {
				t.Fatalf("ack of a swept batch sent again: %+v", ack)
			}
			if len(f.readings(ac, "power")) != 0 {
				t.Fatal("a swept batch stored again")
			}
			recs, err := f.st.ConsentRecords(ctx, owner)
			must(t, err)
			if len(recs) != 2 || recs[1].ID != pests.ID || recs[1].Retention != 48*time.Hour || recs[0].Retention != 0 {
				t.Fatalf("consent records kept as %+v", recs)
			}
		})
	}
}
