package cloud_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud"
	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// TestConsentResource: a device observing /v1/consent gets its owner's
// records that cover it, with the app keys that signed them, and hears of
// each new one within a second; it can verify them and decide as the
// cloud does. A record it captured itself, signed with its own key, is
// logged (2.01, then 2.04 with the same receipt); one signed by another
// key, or that is not a record, is refused.
func TestConsentResource(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "sqlite", cloud.Config{})
	d := f.importDevice(aircon)
	other := f.importDevice(aircon)
	c := f.dial(d, "coaps")
	lists := make(chan protocol.Consents, 16)
	_, err := c.Observe(ctx, protocol.ConsentPath, func(n transport.Notification) {
		var l protocol.Consents
		if n.Err == nil && n.Decode(&l) == nil {
			lists <- l
		}
	})
	must(t, err)
	next := func(what string) protocol.Consents {
		t.Helper()
		select {
		case l := <-lists:
			return l
		case <-time.After(time.Second):
			t.Fatalf("%s: no notification within 1 s", what)
		}
		return protocol.Consents{}
	}
	if l := next("registration"); len(l.Records) != 0 {
		t.Fatalf("first list %+v, want none", l)
	}

	at := f.clock.now().Add(-time.Hour)
	g := powerGrant(at)
	f.give(g)
	l := next("a grant")
	if len(l.Records) != 1 || len(l.Keys) != 1 || string(l.Keys[0].KID) != "app-1" {
		t.Fatalf("after a grant: %d records, keys %+v", len(l.Records), l.Keys)
	}
	onlyOther := powerGrant(at)
	onlyOther.Processes[0].Purpose = "diagnostics"
	onlyOther.Devices = []identity.ID{other.id}
	f.give(onlyOther)
	if l = next("a record for another device"); len(l.Records) != 1 {
		t.Fatalf("a record for another device is in this device's list: %d records", len(l.Records))
	}
	f.give(consent.Withdraw(g, at.Add(30*time.Minute), "subject:app"))
	l = next("a withdrawal")
	if len(l.Records) != 2 {
		t.Fatalf("after a withdrawal: %d records, want the grant and its withdrawal", len(l.Records))
	}
	// The device checks the records as protocol.md 4.7 says, and decides.
	keys := &consent.KeySet{}
	for _, k := range l.Keys {
		tk, err := k.TrustedKey()
		must(t, err)
		must(t, keys.Add(tk))
	}
	h := consent.NewHistory(owner)
	for _, rec := range l.Records {
		v, err := consent.Verify(ctx, keys, rec)
		must(t, err)
		must(t, h.Add(v))
	}
	q := consent.Query{Purpose: "analytics", Category: "device.sensor.power", Device: d.id, At: f.clock.now()}
	if dec := h.Decide(q); dec.Allowed || dec.Reason != consent.ReasonWithdrawn {
		t.Fatalf("the device decides %+v, want withdrawn", dec)
	}

	// A record captured on the device's own screen, signed by it.
	mine := powerGrant(f.clock.now())
	mine.Event.Actor = "device"
	mine.Devices = []identity.ID{d.id}
	signed, err := consent.Sign(mine, d.key, []byte(d.id.String()))
	must(t, err)
	code, body := f.rawPost(d, "coap+tcp", protocol.ConsentPath, protocol.FormatCOSESign1, nil, signed)
	if code != transport.Created {
		t.Fatalf("a device-signed record: %v, want 2.01", code)
	}
	var r1, r2 consent.Receipt
	must(t, codec.Unmarshal(body, &r1))
	must(t, consent.VerifyReceipt(&r1, signed, f.node.ConsentLogKey()))
	code, body = f.rawPost(d, "coap+tcp", protocol.ConsentPath, protocol.FormatCOSESign1, nil, signed)
	must(t, codec.Unmarshal(body, &r2))
	if code != transport.Changed || r2.Index != r1.Index {
		t.Fatalf("the same record again: %v at %d, want 2.04 at %d", code, r2.Index, r1.Index)
	}
	if l = next("the device's own record"); len(l.Records) != 1 {
		t.Fatalf("after the device's own grant: %d records, want it alone", len(l.Records))
	}
	// Signed by the device, for all the owner's devices: refused.
	forAll := powerGrant(f.clock.now())
	forAll.Event.Actor = "device"
	wide, err := consent.Sign(forAll, d.key, []byte(d.id.String()))
	must(t, err)
	if code, _ := f.rawPost(d, "coap+tcp", protocol.ConsentPath, protocol.FormatCOSESign1, nil, wide); code != transport.Forbidden {
		t.Fatalf("a device's record for all the owner's devices: %v, want 4.03", code)
	}
	// Signed by the app, posted by the device: not the device's to post.
	byApp, err := consent.Sign(powerGrant(f.clock.now()), f.app, []byte("app-1"))
	must(t, err)
	if code, _ := f.rawPost(d, "coap+tcp", protocol.ConsentPath, protocol.FormatCOSESign1, nil, byApp); code != transport.Forbidden {
		t.Fatalf("an app's record posted by the device: %v, want 4.03", code)
	}
	// Signed by another device of the owner, under this device's ID.
	forged, err := consent.Sign(powerGrant(f.clock.now()), other.key, []byte(d.id.String()))
	must(t, err)
	if code, _ := f.rawPost(d, "coap+tcp", protocol.ConsentPath, protocol.FormatCOSESign1, nil, forged); code != transport.Forbidden {
		t.Fatalf("a record signed by another key under this device's ID: %v, want 4.03", code)
	}
	if code, _ := f.rawPost(d, "coap+tcp", protocol.ConsentPath, protocol.FormatCOSESign1, nil, []byte("'; DROP TABLE consent_records; --")); code != transport.BadRequest {
		t.Fatalf("not a record: %v, want 4.00", code)
	}
	if err := c.Post(ctx, protocol.ConsentPath, "not COSE", nil); codeOf(err) != transport.UnsupportedFormat {
		t.Fatalf("a CBOR body: %v, want 4.15", err)
	}
}

// TestConsentAfterSignerGone: records stand as they were accepted when
// their signer's key is no longer trusted. A grant the device captured
// itself can still be withdrawn by the owner after the device is
// suspended, and a node that builds the owner's history afresh decides
// with both; after the owner's app key is removed, its grant still allows
// what it allowed, on a fresh node too.
func TestConsentAfterSignerGone(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "sqlite", cloud.Config{})
	d := f.importDevice(aircon)
	mine := powerGrant(f.clock.now().Add(-2 * time.Hour))
	mine.Event.Actor = "device"
	mine.Devices = []identity.ID{d.id}
	signed, err := consent.Sign(mine, d.key, []byte(d.id.String()))
	must(t, err)
	if code, _ := f.rawPost(d, "coap+tcp", protocol.ConsentPath, protocol.FormatCOSESign1, nil, signed); code != transport.Created {
		t.Fatalf("the device's own grant: %v", code)
	}
	must(t, f.node.SetStanding(ctx, d.id, store.Suspended, "test"))
	f.give(consent.Withdraw(mine, f.clock.now().Add(-time.Hour), "subject:app"))

	other := f.importDevice(aircon)
	fresh := f.another(cloud.Config{})
	c := fresh.dial(other, "coaps")
	if _, err := post(t, c, fresh.power(other, 1, 2)); codeOf(err) != transport.Forbidden {
		t.Fatalf("a batch without consent, on a node that built the history afresh: %v, want 4.03", err)
	}

	f.give(powerGrant(f.clock.now().Add(-30 * time.Minute)))
	must(t, f.st.RemoveAppKey(ctx, []byte("app-1"), f.clock.now()))
	f.clock.add(2 * time.Hour) // readings after the grant, coarsened to the hour as they are
	fresh2 := f.another(cloud.Config{})
	if _, err := post(t, fresh2.dial(other, "coaps"), fresh2.power(other, 2, 2)); err != nil {
		t.Fatalf("a batch under a grant whose app key was removed since: %v", err)
	}
}

// TestConsentLimit: past Config.MaxConsentRecords a subject's new records
// are refused (ErrConsentLimit; 4.03 to a device), while one it holds
// already is still taken again.
func TestConsentLimit(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "sqlite", cloud.Config{MaxConsentRecords: 3})
	d := f.importDevice(aircon)
	var first []byte
	for i := range 3 {
		s := f.give(powerGrant(f.clock.now().Add(-time.Duration(i+1) * time.Hour)))
		if first == nil {
			first = s
		}
	}
	over, err := consent.Sign(powerGrant(f.clock.now()), f.app, []byte("app-1"))
	must(t, err)
	if err := addConsent(f.node, ctx, over); !errors.Is(err, cloud.ErrConsentLimit) {
		t.Fatalf("a fourth record: %v, want ErrConsentLimit", err)
	}
	must(t, addConsent(f.node, ctx, first))
	mine := powerGrant(f.clock.now())
	mine.Devices = []identity.ID{d.id}
	signed, err := consent.Sign(mine, d.key, []byte(d.id.String()))
	must(t, err)
	if code, _ := f.rawPost(d, "coap+tcp", protocol.ConsentPath, protocol.FormatCOSESign1, nil, signed); code != transport.Forbidden {
		t.Fatalf("a device's record past the limit: %v, want 4.03", code)
	}
}
