package device_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/protocol"
)

// power is a reading of the power stream, which needs the owner's
// consent to analytics.
func power() policy.Reading {
	return policy.Reading{"ts": time.Now(), "watts": 1234.5, "serial": "SN-0042"}
}

// waitFor polls cond every few milliseconds until it holds, failing t
// after d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestConsentObserved: a started agent observes /v1/consent. Consent
// the owner gives in the cloud reaches it within a second, verified with
// the app key the cloud's list carries (the device's firmware does not
// know it), and Record decides with it; the outbox keeps it, so it counts
// after a restart without the cloud too.
func TestConsentObserved(t *testing.T) {
	k := newKeys(t)
	c := startCloud(t, k, t.TempDir(), "coaps://127.0.0.1:0")
	m := c.importMeter()
	cfg := k.config(t, m, t.TempDir(), c.url)
	cfg.ConsentKeys = nil // the app's key comes with the list
	a := newAgent(t, cfg)
	ctx := context.Background()
	if err := a.Record(ctx, "power", power()); !errors.Is(err, device.ErrNoConsent) {
		t.Fatalf("power before consent: %v", err)
	}
	must(t, a.Start())
	waitFor(t, 10*time.Second, "the first consent list", func() bool { return !a.Health().ConsentList.IsZero() })

	_, err := c.node.AddConsent(ctx, k.sign(t, analytics()))
	must(t, err)
	start := time.Now()
	for {
		err := a.Record(ctx, "power", power())
		if err == nil {
			break
		}
		if !errors.Is(err, device.ErrNoConsent) {
			t.Fatal(err)
		}
		if time.Since(start) > time.Second {
			t.Fatalf("consent given in the cloud did not reach the device within a second: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("consent reached the device in %v", time.Since(start))
	drain(t, a, 20*time.Second)
	if got := c.stored(m, "power"); len(got) != 1 {
		t.Fatalf("the cloud holds %d power readings", len(got))
	}
	must(t, a.Close())

	cfg.URL = ""
	b := newAgent(t, cfg)
	must(t, b.Record(ctx, "power", power()))
}

// TestConsentListVerified: every record of a consent list must verify
// against a key the device trusts: its own, its firmware's, or an app key
// of its owner that the list carries. Forged records, records signed by
// keys it does not trust, and records of other subjects are refused, each
// with consent's sentinel, and never decide.
func TestConsentListVerified(t *testing.T) {
	k := newKeys(t)
	m := newMeter(t)
	cfg := k.config(t, m, t.TempDir(), "")
	cfg.ConsentKeys = nil
	a := newAgent(t, cfg)
	ctx := context.Background()

	signerKey := func(priv ed25519.PrivateKey, kid string, role consent.Role, subject string) protocol.SignerKey {
		der, err := x509.MarshalPKIXPublicKey(priv.Public())
		must(t, err)
		return protocol.SignerKey{KID: []byte(kid), Role: role, Subject: subject, Key: der}
	}
	newKey := func() ed25519.PrivateKey {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		must(t, err)
		return priv
	}
	sign := func(r *consent.Record, priv ed25519.PrivateKey, kid string) []byte {
		signed, err := consent.Sign(r, priv, []byte(kid))
		must(t, err)
		return signed
	}
	stranger, controller := newKey(), newKey()
	forged := k.sign(t, analytics())
	forged[len(forged)-1] ^= 1
	other := analytics()
	other.Subject = "subj-someone-else"
	byController := analytics()
	byController.Event.Actor = "controller"

	list := protocol.Consents{
		Version: 5,
		Records: [][]byte{
			forged,                                  // a bad signature
			sign(analytics(), newKey(), "app-2"),    // a key the list does not carry
			k.sign(t, other),                        // another subject's, by the owner's app
			sign(analytics(), stranger, "app-3"),    // by an app of another subject
			sign(byController, controller, "ctl-1"), // a controller key the firmware does not hold
			sign(analytics(), k.maker, "maker-1"),   // the maker may not grant for the owner
			[]byte("not a record"),                  // garbage
		},
		Keys: []protocol.SignerKey{
			signerKey(k.app, "app-1", consent.SubjectKey, owner),
			signerKey(stranger, "app-3", consent.SubjectKey, "subj-someone-else"),
			signerKey(controller, "ctl-1", consent.ControllerKey, ""),
		},
	}
	err := a.AddConsents(ctx, list)
	for _, want := range []error{consent.ErrBadSignature, consent.ErrUnknownKey, consent.ErrNotAllowed, consent.ErrMalformed} {
		if !errors.Is(err, want) {
			t.Errorf("the forged list: %v, want a refusal matching %v", err, want)
		}
	}
	if err == nil || len(err.(interface{ Unwrap() []error }).Unwrap()) != len(list.Records) {
		t.Fatalf("the forged list: %v, want every record refused", err)
	}
	if err := a.Record(ctx, "power", power()); !errors.Is(err, device.ErrNoConsent) {
		t.Fatalf("power after a forged list: %v", err)
	}

	// The owner's app's grant, and one captured on the device, signed by
	// its own key.
	mine := grant(time.Now().Add(-2*time.Hour), "grid-balancing", []string{"device.usage", "device.sensor.power", "device.identifier"}, "gridco")
	mine.Event.Actor = "device"
	mine.Devices = []identity.ID{a.ID()}
	signed, err := consent.Sign(mine, m.key, []byte(a.ID().String()))
	must(t, err)
	list = protocol.Consents{Version: 6, Records: [][]byte{k.sign(t, analytics()), signed}, Keys: list.Keys[:1]}
	must(t, a.AddConsents(ctx, list))
	must(t, a.AddConsents(ctx, list)) // the same list again: no change
	must(t, a.Record(ctx, "power", power()))
	if h := a.Health(); h.Queued != 2 || len(h.Drops) != 0 {
		t.Fatalf("after the owner's records: %+v", h)
	}
	if err := a.AddConsents(ctx, protocol.Consents{Version: 7, Fetch: true}); err == nil {
		t.Fatal("a list left out of its notification was taken")
	}
}

// TestWithdrawnOffline: a withdrawal takes effect at once, offline too.
// Ten thousand readings wait for a cloud that does not answer yet, some
// in a batch already formed and on its way (its handshake unanswered);
// the owner withdraws their consent on the device; every one of them
// leaves the outbox, counted, before anything else is sent, and once the
// cloud answers none of them ever reaches it (the cloud, which was never
// told of the withdrawal, would store them), while the readings of
// another purpose do.
func TestWithdrawnOffline(t *testing.T) {
	const readings, others, callers = 10_000, 100, 8
	k := newKeys(t)
	cloudDir := t.TempDir()
	c := startCloud(t, k, cloudDir, "coaps://127.0.0.1:0")
	m := c.importMeter()
	ctx := context.Background()
	give := analytics()
	signed := k.sign(t, give)
	_, err := c.node.AddConsent(ctx, signed)
	must(t, err)
	must(t, c.node.Close())
	// Until the cloud is back, its port swallows every datagram.
	hole, err := net.ListenPacket("udp", "127.0.0.1:"+c.port())
	must(t, err)
	var heard atomic.Int64
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := hole.ReadFrom(buf); err != nil {
				return
			}
			heard.Add(1)
		}
	}()

	cfg := k.config(t, m, t.TempDir(), c.url)
	a := newAgent(t, cfg)
	must(t, a.AddConsent(ctx, signed))
	// The power queue is the oldest, so delivery forms its first batch
	// from it.
	must(t, a.Record(ctx, "power", power()))
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for g := range callers {
		wg.Go(func() {
			for i := range readings / callers {
				if g+i > 0 { // the first was recorded above
					if err := a.Record(ctx, "power", power()); err != nil {
						errs <- err
						return
					}
				}
				if n := g*(readings/callers) + i; n%(readings/others) == 0 {
					if err := a.Record(ctx, "count", tick(int64(n/(readings/others)))); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	must(t, a.Start())
	waitFor(t, 10*time.Second, "a batch formed and on its way", func() bool { return a.Health().Batches > 0 && heard.Load() > 0 })
	// The partner, to which the owner gave no consent, gets none of them.
	if h := a.Health(); h.Queued != readings+others || h.Drops[device.DropNoConsent] != readings || len(h.Drops) != 1 {
		t.Fatalf("before the withdrawal: %+v", h)
	}

	must(t, a.AddConsent(ctx, k.sign(t, consent.Withdraw(give, time.Now(), "subject:app"))))
	h := a.Health()
	if h.Drops[device.DropWithdrawn] != readings || h.Queued != others {
		t.Fatalf("after the withdrawal: %+v", h)
	}
	if err := a.Record(ctx, "power", power()); !errors.Is(err, device.ErrNoConsent) {
		t.Fatalf("power after the withdrawal: %v", err)
	}

	hole.Close()
	c = startCloud(t, k, cloudDir, "coaps://127.0.0.1:"+c.port())
	drain(t, a, 60*time.Second)
	if got := c.stored(m, "power"); len(got) != 0 {
		t.Fatalf("the cloud holds %d power readings recorded before the withdrawal", len(got))
	}
	got := counts(t, c.stored(m, "count"))
	if len(got) != others {
		t.Fatalf("the cloud holds %d count readings, want %d", len(got), others)
	}
	if h := a.Health(); h.Delivered != others || h.Drops[device.DropWithdrawn] != readings || len(h.Drops) != 2 {
		t.Fatalf("health: %+v", h)
	}
}

// onDevice returns consent to analytics the owner gave on the device
// with ID id, two hours ago.
func onDevice(id identity.ID) *consent.Record {
	r := analytics()
	r.Event.Actor = "device"
	r.Devices = []identity.ID{id}
	return r
}

// TestGiveConsent: consent given on the device is signed by its key,
// counts at once, and is posted to the cloud, which logs it: the receipt
// proves it with the log's key. Given offline, it waits, through a
// restart, and reaches the cloud before the readings that need it.
func TestGiveConsent(t *testing.T) {
	k := newKeys(t)
	cloudDir := t.TempDir()
	c := startCloud(t, k, cloudDir, "coaps://127.0.0.1:0")
	m := c.importMeter()
	ctx := context.Background()
	logged := func(id consent.ID) []byte {
		t.Helper()
		recs, err := c.node.Store().ConsentRecords(ctx, owner)
		must(t, err)
		for _, r := range recs {
			if r.ID == id {
				return r.Signed
			}
		}
		return nil
	}

	t.Run("online", func(t *testing.T) {
		cfg := k.config(t, m, t.TempDir(), c.url)
		cfg.ConsentKeys = nil
		a := newAgent(t, cfg)
		must(t, a.Start())
		r := onDevice(a.ID())
		receipt, err := a.GiveConsent(ctx, r)
		must(t, err)
		signed := logged(r.ID)
		if receipt == nil || signed == nil {
			t.Fatalf("receipt %v; the cloud logged %x", receipt, signed)
		}
		must(t, consent.VerifyReceipt(receipt, signed, c.node.ConsentLogKey()))
		if kept := a.Receipt(r.ID); kept == nil || kept.Index != receipt.Index {
			t.Fatalf("the receipt kept: %+v, want %+v", kept, receipt)
		}
		must(t, a.Record(ctx, "power", power()))
		drain(t, a, 20*time.Second)
		if got := c.stored(m, "power"); len(got) != 1 {
			t.Fatalf("the cloud holds %d power readings", len(got))
		}
		if h := a.Health(); h.ConsentUnposted != 0 || h.Drops[device.DropForbidden] != 0 {
			t.Fatalf("health: %+v", h)
		}

		// Withdrawn on the device: at once there, and in the cloud.
		w := consent.Withdraw(r, time.Now(), "device")
		_, err = a.GiveConsent(ctx, w)
		must(t, err)
		if err := a.Record(ctx, "power", power()); !errors.Is(err, device.ErrNoConsent) {
			t.Fatalf("power after a withdrawal on the device: %v", err)
		}
		if logged(w.ID) == nil {
			t.Fatal("the cloud did not log the withdrawal")
		}

		for _, bad := range []*consent.Record{analytics(), onDevice(m.id)} {
			bad.Devices = append(bad.Devices, identity.ID{1})
			if _, err := a.GiveConsent(ctx, bad); !errors.Is(err, consent.ErrNotAllowed) {
				t.Errorf("a record for devices %v: %v", bad.Devices, err)
			}
		}
		other := onDevice(a.ID())
		other.Subject = "subj-someone-else"
		if _, err := a.GiveConsent(ctx, other); !errors.Is(err, consent.ErrNotAllowed) {
			t.Errorf("a record of another subject: %v", err)
		}
	})

	t.Run("offline", func(t *testing.T) {
		m := c.importMeter()
		must(t, c.node.Close())
		cfg := k.config(t, m, t.TempDir(), c.url)
		a := newAgent(t, cfg)
		r := onDevice(a.ID())
		receipt, err := a.GiveConsent(ctx, r)
		if err != nil || receipt != nil {
			t.Fatalf("consent given before the agent started: %v, %v", receipt, err)
		}
		for n := range 3 {
			must(t, a.Record(ctx, "power", policy.Reading{"ts": time.Now(), "watts": float64(n)}))
		}
		must(t, a.Start())
		receipt, err = a.GiveConsent(ctx, onDevice(a.ID()))
		if err != nil || receipt != nil {
			t.Fatalf("consent given with the cloud unreachable: %v, %v", receipt, err)
		}
		if h := a.Health(); h.ConsentUnposted != 2 || h.Queued != 3 {
			t.Fatalf("health: %+v", h)
		}
		must(t, a.Close())

		c = startCloud(t, k, cloudDir, "coaps://127.0.0.1:"+c.port())
		a = newAgent(t, cfg)
		if h := a.Health(); h.ConsentUnposted != 2 {
			t.Fatalf("after a restart: %+v", h)
		}
		must(t, a.Start())
		drain(t, a, 20*time.Second)
		if got := c.stored(m, "power"); len(got) != 3 {
			t.Fatalf("the cloud holds %d power readings; health %+v", len(got), a.Health())
		}
		if h := a.Health(); h.ConsentUnposted != 0 {
			t.Fatalf("health: %+v", h)
		}
		receipt = a.Receipt(r.ID)
		if receipt == nil {
			t.Fatal("no receipt kept")
		}
		must(t, consent.VerifyReceipt(receipt, logged(r.ID), c.node.ConsentLogKey()))
	})
}
