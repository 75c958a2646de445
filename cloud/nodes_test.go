package cloud_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"

	"github.com/sensible-iot/sensible/cloud"
	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/cloud/store/postgres"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
	"github.com/sensible-iot/sensible/internal/pgtest"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// twoNodes starts two nodes on one PostgreSQL database, each with its own
// store (its own connections and change listener), as two machines
// behind a load balancer have them.
func twoNodes(t *testing.T) (a, b *fixture) {
	t.Helper()
	url := pgtest.NewDatabase(t)
	open := func() store.Store {
		st, err := postgres.Open(context.Background(), url, postgres.Config{})
		must(t, err)
		t.Cleanup(func() { st.Close() })
		return st
	}
	a = newFixture(t, "postgres", cloud.Config{Store: open()})
	g := *a
	g.st = open()
	g.start(cloud.Config{})
	return a, &g
}

// TestTwoNodes: two nodes on one PostgreSQL act as one cloud. The same
// batch sent to both is stored once; a token accepted by one is refused
// by the other; a desired change made through one reaches a device
// observing on the other within a second; a device suspended through one
// loses its session on the other at once.
func TestTwoNodes(t *testing.T) {
	ctx := context.Background()
	a, b := twoNodes(t)
	d := a.importDevice(aircon)
	a.give(powerGrant(a.clock.now().Add(-24 * time.Hour)))

	// Consent given through either node goes into one consent log.
	withdrawnLater := powerGrant(a.clock.now().Add(-time.Hour))
	signed, err := consent.Sign(withdrawnLater, a.app, []byte("app-1"))
	must(t, err)
	ra, err := a.node.AddConsent(ctx, signed)
	must(t, err)
	rb, err := b.node.AddConsent(ctx, signed)
	must(t, err)
	if ra.Index != rb.Index || a.node.ConsentLogKey() != b.node.ConsentLogKey() {
		t.Fatalf("one record logged at %d through A and %d through B", ra.Index, rb.Index)
	}
	must(t, consent.VerifyReceipt(rb, signed, a.node.ConsentLogKey()))

	// The same batch to both nodes: stored once.
	batch := a.power(d, 1, 5)
	ackA, err := post(t, a.dial(d, "coaps"), batch)
	must(t, err)
	ackB, err := post(t, b.dial(d, "coaps"), batch)
	must(t, err)
	if ackA.Duplicate || !ackB.Duplicate || ackA.Stored != 5 || ackB.Stored != 5 {
		t.Fatalf("acks %+v and %+v, want the second a duplicate of the first", ackA, ackB)
	}
	if got := len(a.readings(d, "power")); got != 5 {
		t.Fatalf("%d readings stored, want 5", got)
	}

	// One token, presented to both nodes: the second refuses it.
	token, err := identity.SignToken(d.key, identity.TokenParams{Audience: cloud.DefaultTokenAudience, IssuedAt: a.clock.now()})
	must(t, err)
	body, err := codec.Marshal(token)
	must(t, err)
	present := func(f *fixture) byte {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		co := f.rawConnNoAuth(rctx, "coap+tcp")
		resp, err := co.Post(rctx, protocol.AuthPath, message.AppCBOR, bytes.NewReader(body))
		must(t, err)
		return byte(resp.Code())
	}
	if c := present(a); c != 0x44 {
		t.Fatalf("node A: token answered %#x, want 2.04", c)
	}
	if c := present(b); c != 0x81 {
		t.Fatalf("node B: the same token answered %#x, want 4.01", c)
	}

	// A desired change made through node A reaches the device observing
	// on node B within a second.
	obs := b.dial(d, "coaps")
	versions := make(chan uint64, 16)
	_, err = obs.Observe(ctx, protocol.StatePath, func(n transport.Notification) {
		var des protocol.Desired
		if n.Err == nil && n.Decode(&des) == nil {
			versions <- des.Version
		}
	})
	must(t, err)
	if v := <-versions; v != 0 {
		t.Fatalf("first desired state at version %d, want 0", v)
	}
	start := time.Now()
	v, err := a.node.SetDesired(ctx, d.id, protocol.Settings{"target_c": 21.5}, 0)
	must(t, err)
	select {
	case got := <-versions:
		if got != v {
			t.Fatalf("node B notified version %d, node A set %d", got, v)
		}
		t.Logf("a change through node A reached node B's observer in %v", time.Since(start))
	case <-time.After(time.Second):
		t.Fatal("a desired change through node A did not reach the observer on node B within 1 s")
	}

	// Suspended through node A: the session on node B closes.
	onB := b.dial(d, "coaps")
	if _, _, err := onB.GetRaw(ctx, protocol.ManifestPath); err != nil {
		t.Fatal(err)
	}
	must(t, a.node.SetStanding(ctx, d.id, store.Suspended, "test"))
	deadline := time.Now().Add(time.Second)
	for {
		qctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		// A public resource: only a closed session refuses it.
		_, _, err := onB.GetRaw(qctx, "/.well-known/core")
		cancel()
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the device suspended through node A is still served by node B after 1 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := b.tryDial(d, "coaps"); err == nil {
		t.Fatal("node B let the suspended device in again")
	}
}

// TestIngestMetrics: the node counts stored batches and readings,
// refusals and incidents by kind, and device authentications, in the
// Prometheus text format.
func TestIngestMetrics(t *testing.T) {
	f := newFixture(t, "sqlite", cloud.Config{PublicMetrics: true})
	d := f.importDevice(aircon)
	f.give(powerGrant(f.clock.now().Add(-24 * time.Hour)))
	c := f.dial(d, "coaps")
	_, err := post(t, c, f.power(d, 1, 5))
	must(t, err)
	_, err = post(t, c, f.power(d, 1, 5)) // the same batch again
	must(t, err)
	bad := f.power(d, 2, 1)
	bad.Readings[0]["no-such-field"] = int64(1)
	if _, err := post(t, c, bad); err == nil {
		t.Fatal("a batch with an undeclared field was taken")
	}
	u, err := f.node.Listen("http://127.0.0.1:0")
	must(t, err)
	resp, err := http.Get(u + "/metrics")
	must(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`sensible_cloud_telemetry_batches_total{result="stored"} 1`,
		`sensible_cloud_telemetry_batches_total{result="duplicate"} 1`,
		`sensible_cloud_telemetry_readings_total 5`,
		`sensible_cloud_refusals_total{reason="manifest-violation"} 1`,
		`sensible_cloud_incidents_total{kind="manifest-violation"} 1`,
		`sensible_cloud_device_sessions_total{method="psk",result="admitted"}`,
		`sensible_cloud_store_duration_seconds_count{op="store_batch"} 2`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestIngestClockSkew: a batch with a reading further ahead of the cloud's
// clock than MaxFutureSkew, or older than MaxReadingAge, is refused with
// 4.00 naming the clock, stores nothing and is no incident (a device with
// a wrong clock is not misbehaving); one within both is stored.
func TestIngestClockSkew(t *testing.T) {
	f := newFixture(t, "sqlite", cloud.Config{MaxReadingAge: 48 * time.Hour})
	d := f.importDevice(aircon)
	f.give(powerGrant(f.clock.now().Add(-72 * time.Hour)))
	c := f.dial(d, "coaps")
	now := f.clock.now()
	for name, end := range map[string]time.Time{
		"two hours ahead": now.Add(2 * time.Hour),
		"three days old":  now.Add(-72 * time.Hour),
	} {
		_, err := post(t, c, f.powerAt(d, 1, 3, end))
		if codeOf(err) != transport.BadRequest || !strings.Contains(diagnosticOf(err), "ahead of the cloud's clock") && !strings.Contains(diagnosticOf(err), "older than") {
			t.Errorf("%s: %v, want 4.00 about the clock", name, err)
		}
	}
	if n := len(f.readings(d, "power")); n != 0 {
		t.Fatalf("%d readings stored from refused batches", n)
	}
	if n := len(f.incidents(d)); n != 0 {
		t.Fatalf("%d incidents for a device with a wrong clock", n)
	}
	if _, err := post(t, c, f.powerAt(d, 1, 3, now.Add(-time.Hour))); err != nil {
		t.Fatalf("a batch within the skew: %v", err)
	}
}

// TestForgedChain: a device whose certificate chain leads to a root the
// cloud does not trust (a rogue factory), or that presents the real
// factory's intermediate with a leaf the factory did not sign, is refused
// by the handshake over TLS and DTLS: it cannot enroll, and nothing is
// registered.
func TestForgedChain(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "sqlite", cloud.Config{})
	rogueRoot, err := identity.NewRootCA(newKey(t), "Rogue Root", nil)
	must(t, err)
	rogue, err := rogueRoot.NewIntermediate(newKey(t), "Test Factory", nil)
	must(t, err)
	for name, chainOf := range map[string]func(leaf []byte) [][]byte{
		"rogue root":                  func(leaf []byte) [][]byte { return [][]byte{leaf, rogue.Cert.Raw} },
		"leaf under the real factory": func(leaf []byte) [][]byte { return [][]byte{leaf, f.factory.Cert.Raw} },
	} {
		d := &device{key: newKey(t), model: aircon}
		d.id, err = identity.IDOf(d.key)
		must(t, err)
		csr, err := identity.NewCSR(d.key)
		must(t, err)
		cert, err := rogue.IssueDevice(csr, nil)
		must(t, err)
		d.cert = &tls.Certificate{Certificate: chainOf(cert.Raw), PrivateKey: d.key, Leaf: cert}
		for _, scheme := range []string{"coaps+tcp", "coaps+cert"} {
			// Over TLS 1.3 the client's side of the handshake ends
			// before the server has checked its certificate: the
			// refusal then comes with the first request.
			if c, err := f.tryDial(d, scheme); err == nil {
				if _, err := enroll(c, aircon); err == nil {
					t.Errorf("%s over %s: enrolled", name, scheme)
				}
			}
		}
		if _, err := f.st.Device(ctx, d.id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s: the device is registered (%v)", name, err)
		}
	}
}
