package cloud_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud"
	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// TestSuspension: a device whose batches break its manifest
// Config.MaxIncidents times within the window is suspended, its session
// closed and its next handshake refused; another device goes on.
func TestSuspension(t *testing.T) {
	for _, scheme := range []string{"coaps", "coap+tcp"} {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, "sqlite", cloud.Config{MaxIncidents: 3, IncidentWindow: time.Hour})
			bad, good := f.importDevice(aircon), f.importDevice(aircon)
			f.give(powerGrant(f.clock.now().Add(-24 * time.Hour)))
			c, gc := f.dial(bad, scheme), f.dial(good, scheme)
			undeclared := func(seq uint64) protocol.Batch {
				return protocol.Batch{Manifest: f.manifests[aircon].hash, Stream: "power", Key: protocol.Key{Epoch: 9, Seq: seq},
					Readings: []policy.Reading{{"ts": f.clock.now().Truncate(time.Hour), "colour": "red"}}}
			}
			// Incidents older than the window do not count.
			_, err := f.st.RecordIncident(context.Background(), store.Incident{Device: bad.id, Time: f.clock.now().Add(-2 * time.Hour), Kind: cloud.IncidentManifest})
			must(t, err)
			for seq := uint64(2); seq <= 3; seq++ {
				if _, err := post(t, c, undeclared(seq)); codeOf(err) != transport.Forbidden {
					t.Fatalf("batch %d: %v", seq, err)
				}
			}
			dev, err := f.st.Device(context.Background(), bad.id)
			must(t, err)
			if dev.Standing != store.Active {
				t.Fatalf("suspended after 2 incidents within the window: %+v", dev)
			}
			// The third within the window: refused, if the answer makes it
			// before the session closes.
			if _, err := post(t, c, undeclared(4)); err == nil {
				t.Fatal("the third violation was taken")
			}
			dev, err = f.st.Device(context.Background(), bad.id)
			must(t, err)
			if dev.Standing != store.Suspended || dev.StandingReason == "" {
				t.Fatalf("after 3 incidents within the window: %+v", dev)
			}
			if got := f.incidents(bad); len(got) != 4 {
				t.Fatalf("%d incidents, want 4", len(got))
			}
			if _, err := post(t, c, f.power(bad, 10, 1)); err == nil {
				t.Fatal("a suspended device's session still works")
			}
			if _, err := f.tryDial(bad, scheme); err == nil {
				t.Fatal("a suspended device connected again")
			}
			if _, err := post(t, gc, f.power(good, 1, 1)); err != nil {
				t.Fatalf("another device: %v", err)
			}
		})
	}
}

// TestRefusedDevices: unknown, suspended and decommissioned devices are
// refused as they connect; a device suspended through another node while
// its session here is open is refused with 4.01.
func TestRefusedDevices(t *testing.T) {
	f := newFixture(t, "sqlite", cloud.Config{})
	ctx := context.Background()
	f.give(powerGrant(f.clock.now().Add(-24 * time.Hour)))
	unknown := f.factoryDevice(aircon)
	unknown.cert = nil // no chain: it must be imported to use PSK or tokens
	suspended, decommissioned := f.importDevice(aircon), f.importDevice(aircon)
	must(t, f.st.SetStanding(ctx, suspended.id, store.Suspended, "test", f.clock.now()))
	must(t, f.st.SetStanding(ctx, decommissioned.id, store.Decommissioned, "test", f.clock.now()))
	for _, d := range []*device{unknown, suspended, decommissioned} {
		for _, scheme := range []string{"coaps", "coap+tcp"} {
			c, err := f.tryDial(d, scheme)
			if err == nil {
				_, err = post(t, c, f.power(d, 1, 1))
			}
			if err == nil {
				t.Fatalf("device %s got in over %s", d.id, scheme)
			}
			if scheme == "coap+tcp" && codeOf(err) != transport.Unauthorized {
				t.Fatalf("token of device %s: %v, want 4.01", d.id, err)
			}
		}
	}

	// Another node suspended it: this one did not close the session, but
	// refuses its requests.
	d := f.importDevice(aircon)
	c := f.dial(d, "coaps")
	if _, err := post(t, c, f.power(d, 1, 1)); err != nil {
		t.Fatal(err)
	}
	must(t, f.st.SetStanding(ctx, d.id, store.Suspended, "suspended elsewhere", f.clock.now()))
	for _, path := range []string{protocol.TelemetryPath, protocol.EnrollPath} {
		var err error
		if path == protocol.TelemetryPath {
			_, err = post(t, c, f.power(d, 2, 1))
		} else {
			_, err = enroll(c, aircon)
		}
		if codeOf(err) != transport.Unauthorized {
			t.Fatalf("%s for a device suspended elsewhere: %v, want 4.01", path, err)
		}
	}
	if _, _, err := c.GetRaw(ctx, protocol.ManifestPath); codeOf(err) != transport.Unauthorized {
		t.Fatalf("manifest for a device suspended elsewhere: %v, want 4.01", err)
	}
	if err := f.node.SetStanding(ctx, d.id, store.Decommissioned, "scrapped"); err != nil {
		t.Fatal(err)
	}
	if err := f.node.SetStanding(ctx, d.id, store.Active, "back"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("reactivating a decommissioned device: %v", err)
	}
}
