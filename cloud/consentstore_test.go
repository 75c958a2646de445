package cloud_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud"
	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// refusedForConsent checks that a batch is refused with 4.03 for want of
// consent, with the reason given, and stores nothing.
func refusedForConsent(t *testing.T, f *fixture, c *transport.Client, d *device, b protocol.Batch, reason string) {
	t.Helper()
	before, incidents := f.total(d), len(f.incidents(d))
	_, err := post(t, c, b)
	if codeOf(err) != transport.Forbidden || !strings.Contains(diagnosticOf(err), reason) {
		t.Fatalf("got %v, want 4.03 saying %q", err, reason)
	}
	if n := f.total(d); n != before {
		t.Fatalf("%d readings stored", n-before)
	}
	if got := f.incidents(d); len(got) != incidents+1 || got[incidents].Kind != cloud.IncidentConsent {
		t.Fatalf("incidents %+v, want one more of kind %s", got, cloud.IncidentConsent)
	}
}

// storedUnder checks that a batch is stored, every reading under the
// consent record id.
func storedUnder(t *testing.T, f *fixture, c *transport.Client, d *device, b protocol.Batch, id consent.ID) {
	t.Helper()
	ack, err := post(t, c, b)
	if err != nil || ack.Stored != uint64(len(b.Readings)) || ack.Duplicate {
		t.Fatalf("ack %+v, %v", ack, err)
	}
	rs, err := f.st.ListReadings(context.Background(), store.ReadingQuery{Device: d.id, Stream: b.Stream})
	must(t, err)
	n := 0
	for _, r := range rs {
		p, err := f.st.ReadingProvenance(context.Background(), r.ID)
		must(t, err)
		if p.Key == b.Key {
			n++
			if r.Consent != id {
				t.Fatalf("reading stored under %s, want %s", r.Consent, id)
			}
		}
	}
	if n != len(b.Readings) {
		t.Fatalf("%d readings of the batch stored, want %d", n, len(b.Readings))
	}
}

// TestConsentDecides: a batch that needs consent is stored only under a
// consent of the device's owner valid when its readings were taken;
// consent given, withdrawn and expiring through one node counts at once
// on another node of the same store.
func TestConsentDecides(t *testing.T) {
	for _, kind := range []string{"sqlite", "postgres"} {
		t.Run(kind, func(t *testing.T) {
			f := newFixture(t, kind, cloud.Config{MaxIncidents: -1})
			g := f.another(cloud.Config{MaxIncidents: -1}) // the node the owner's app talks to
			ac := f.importDevice(aircon)
			c := f.dial(ac, "coaps")
			now := f.clock.now()
			seq := uint64(0)
			next := func() uint64 { seq++; return seq }

			refusedForConsent(t, f, c, ac, f.power(ac, next(), 2), "no consent")

			// Power readings are coarsened to the hour, and consent is
			// decided at the time a reading carries: the times below keep
			// clear of the hour's edges.
			temporary := consent.Grant(consent.GrantParams{Subject: owner, Controller: "acme", Notice: notice, At: now.Add(-24 * time.Hour),
				Expires: now.Add(time.Hour), Actor: "subject:app", Processes: powerGrant(now).Processes})
			g.give(temporary)
			storedUnder(t, f, c, ac, f.power(ac, next(), 2), temporary.ID)
			f.clock.add(3 * time.Hour)
			now = f.clock.now()
			refusedForConsent(t, f, c, ac, f.power(ac, next(), 1), "expired")

			given := powerGrant(now.Add(-6 * time.Hour))
			f.give(given)
			storedUnder(t, f, c, ac, f.power(ac, next(), 2), given.ID)

			// Withdrawn two hours ago: readings since are refused, readings
			// from before are still taken.
			g.give(consent.Withdraw(given, now.Add(-2*time.Hour), "subject:app"))
			refusedForConsent(t, f, c, ac, f.power(ac, next(), 1), "withdrawn")
			storedUnder(t, f, c, ac, f.powerAt(ac, next(), 2, now.Add(-3*time.Hour)), given.ID)

			// A device without an owner sends only what needs no consent.
			orphan := f.importDevice(aircon)
			must(t, f.st.SetOwner(context.Background(), orphan.id, ""))
			oc := f.dial(orphan, "coaps")
			refusedForConsent(t, f, oc, orphan, f.power(orphan, 1, 1), "no owner")
		})
	}
}

// TestConsentPartner: a batch for a partner needs the partner's consent
// as well as the stream's.
func TestConsentPartner(t *testing.T) {
	f := newFixture(t, "sqlite", cloud.Config{MaxIncidents: -1})
	vac := f.importDevice(vacuum)
	c := f.dial(vac, "coaps")
	cloudOnly := grant(f.clock.now().Add(-3*time.Hour), "pest-alerts", []string{"device.sensor.camera.pest", "device.map.position"})
	f.give(cloudOnly)
	storedUnder(t, f, c, vac, f.pests(vac, 1, "ant", ""), cloudOnly.ID)
	refusedForConsent(t, f, c, vac, f.pests(vac, 2, "ant", "pestco"), `to "pestco"`)
	shared := pestGrant(f.clock.now().Add(-2 * time.Hour))
	f.give(shared)
	storedUnder(t, f, c, vac, f.pests(vac, 3, "ant", "pestco"), shared.ID)
}

// TestAddConsent: AddConsent keeps a record only if its signature checks
// out and its signer may record it.
func TestAddConsent(t *testing.T) {
	f := newFixture(t, "sqlite", cloud.Config{MaxIncidents: -1})
	ctx := context.Background()
	now := f.clock.now()
	records := func() int {
		rs, err := f.st.ConsentRecords(ctx, owner)
		must(t, err)
		return len(rs)
	}

	given := powerGrant(now.Truncate(time.Hour).Add(-2 * time.Hour))
	signed := f.give(given)
	first, err := f.node.AddConsent(ctx, signed) // the same record again
	must(t, err)
	again, err := f.node.AddConsent(ctx, signed)
	must(t, err)
	if first.Index != again.Index {
		t.Fatalf("the same record logged at %d and %d", first.Index, again.Index)
	}
	must(t, consent.VerifyReceipt(again, signed, f.node.ConsentLogKey()))
	if n := records(); n != 1 {
		t.Fatalf("%d records kept, want 1", n)
	}
	changed := *given
	changed.Event.Actor = "subject:web"
	resigned, err := consent.Sign(&changed, f.app, []byte("app-1"))
	must(t, err)
	if err := addConsent(f.node, ctx, resigned); !errors.Is(err, consent.ErrRecordConflict) {
		t.Fatalf("another record under a taken ID: %v", err)
	}

	stranger := newEd25519(t)
	forged, err := consent.Sign(powerGrant(now), stranger, []byte("app-1"))
	must(t, err)
	if err := addConsent(f.node, ctx, forged); !errors.Is(err, consent.ErrBadSignature) {
		t.Fatalf("a record signed by another key: %v", err)
	}
	unknown, err := consent.Sign(powerGrant(now), stranger, []byte("app-9"))
	must(t, err)
	if err := addConsent(f.node, ctx, unknown); !errors.Is(err, consent.ErrUnknownKey) {
		t.Fatalf("a record signed by an unknown key: %v", err)
	}
	if err := addConsent(f.node, ctx, []byte("'; DROP TABLE consent_records; --")); !errors.Is(err, consent.ErrMalformed) {
		t.Fatalf("not a record: %v", err)
	}
	// Only the subject withdraws.
	byMaker, err := consent.Sign(consent.Withdraw(given, now, "controller"), f.maker, []byte("maker-1"))
	must(t, err)
	if err := addConsent(f.node, ctx, byMaker); !errors.Is(err, consent.ErrNotAllowed) {
		t.Fatalf("a withdrawal signed by the controller: %v", err)
	}
	// A record ends only one the history holds.
	orphan, err := consent.Sign(consent.Withdraw(powerGrant(now), now, "subject:app"), f.app, []byte("app-1"))
	must(t, err)
	if err := addConsent(f.node, ctx, orphan); !errors.Is(err, consent.ErrUnknownRecord) {
		t.Fatalf("a withdrawal of an unknown record: %v", err)
	}
	// The app speaks for its own subject only.
	other := powerGrant(now)
	other.Subject = "someone-else"
	mine, err := consent.Sign(other, f.app, []byte("app-1"))
	must(t, err)
	if err := addConsent(f.node, ctx, mine); !errors.Is(err, consent.ErrNotAllowed) {
		t.Fatalf("a record of another subject: %v", err)
	}
	if n := records(); n != 1 {
		t.Fatalf("%d records kept after the refusals, want 1", n)
	}

	// A device of the owner records consent given on its own screen,
	// signed with its key; the controller may revoke it. Readings of the
	// hour are decided at its start.
	hour := now.Truncate(time.Hour)
	ac := f.importDevice(aircon)
	onDevice := powerGrant(hour.Add(-30 * time.Minute))
	onDevice.Event.Actor = "device"
	bySelf, err := consent.Sign(onDevice, ac.key, []byte(ac.id.String()))
	must(t, err)
	_, err = f.node.AddConsent(ctx, bySelf)
	must(t, err)
	c := f.dial(ac, "coaps")
	storedUnder(t, f, c, ac, f.powerAt(ac, 1, 1, hour.Add(2*time.Minute)), onDevice.ID)
	revoked, err := consent.Sign(consent.Revoke(onDevice, hour.Add(-10*time.Minute), "controller"), f.maker, []byte("maker-1"))
	must(t, err)
	_, err = f.node.AddConsent(ctx, revoked)
	must(t, err)
	refusedForConsent(t, f, c, ac, f.powerAt(ac, 2, 1, hour.Add(2*time.Minute)), "revoked")
}
