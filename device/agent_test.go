package device_test

import (
	"context"
	"errors"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device"
	"github.com/sensible-iot/sensible/transport"
)

// TestDelivered records readings over a real DTLS-PSK session to a real
// cloud: each is stored exactly once, in order, and the outbox empties.
func TestDelivered(t *testing.T) {
	before := runtime.NumGoroutine()
	k := newKeys(t)
	c := startCloud(t, k, t.TempDir(), "coaps://127.0.0.1:0")
	m := c.importMeter()
	a, err := device.New(context.Background(), k.config(t, m, t.TempDir(), c.url))
	must(t, err)
	ctx := context.Background()
	for n := range int64(100) {
		must(t, a.Record(ctx, "count", tick(n)))
	}
	if h := a.Health(); h.Queued != 100 || h.Oldest.IsZero() || h.Delivered != 0 {
		t.Fatalf("before Start: %+v", h)
	}
	must(t, a.Start())
	for n := int64(100); n < 300; n++ {
		must(t, a.Record(ctx, "count", tick(n)))
	}
	drain(t, a, 20*time.Second)
	h := a.Health()
	if h.Queued != 0 || h.Batches != 0 || h.Delivered != 300 || h.LastDelivery.IsZero() || len(h.Drops) != 0 || h.Epoch == 0 {
		t.Fatalf("health after drain: %+v", h)
	}
	got := counts(t, c.stored(m, "count"))
	want := make([]int64, 300)
	for i := range want {
		want[i] = int64(i)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("cloud holds %d readings %v, want 0..299 in order", len(got), got)
	}
	must(t, a.Close())
	must(t, a.Close())
	if err := a.Record(ctx, "count", tick(1)); !errors.Is(err, device.ErrClosed) {
		t.Fatalf("Record after Close: %v", err)
	}
	c.node.Close()
	checkGoroutines(t, before)
}

// TestRefused: what the manifest or consent refuses is a typed error,
// and nothing of it enters the outbox.
func TestRefused(t *testing.T) {
	k := newKeys(t)
	m := unregisteredMeter(t)
	a := newAgent(t, k.config(t, m, t.TempDir(), ""))
	ctx := context.Background()
	power := policy.Reading{"ts": time.Now(), "watts": 1234.5, "serial": "SN-1", "raw": "0xdeadbeef"}

	t.Run("manifest", func(t *testing.T) {
		for _, tc := range []struct {
			stream  string
			reading policy.Reading
			kind    error
		}{
			{"nonsense", policy.Reading{"x": 1.0}, policy.ErrUndeclaredStream},
			{"count", policy.Reading{"ts": time.Now(), "n": "three"}, policy.ErrValue},
			{"power", policy.Reading{"watts": "a lot"}, policy.ErrValue},
		} {
			err := a.Record(ctx, tc.stream, tc.reading)
			var re *device.RefusedError
			var v *policy.Violation
			if !errors.Is(err, device.ErrManifest) || !errors.As(err, &re) || !errors.As(err, &v) || !errors.Is(err, tc.kind) || re.Stream != tc.stream {
				t.Errorf("%s %v: %v, want a refusal by the manifest matching %v", tc.stream, tc.reading, err, tc.kind)
			}
		}
	})
	t.Run("device-only", func(t *testing.T) {
		must(t, a.Record(ctx, "waveform", policy.Reading{"samples": "0102030405"}))
		must(t, a.Record(ctx, "count", policy.Reading{"undeclared": 1.0})) // nothing declared: nothing leaves
		if h := a.Health(); h.LocalOnly != 2 || h.Queued != 0 {
			t.Fatalf("health: %+v", h)
		}
	})
	t.Run("aggregated", func(t *testing.T) {
		if err := a.Record(ctx, "occupancy", policy.Reading{"ts": time.Now(), "people": int64(2)}); !errors.Is(err, policy.ErrAggregated) {
			t.Fatalf("an aggregated stream: %v", err)
		}
	})
	t.Run("no consent", func(t *testing.T) {
		err := a.Record(ctx, "power", power)
		var re *device.RefusedError
		if !errors.Is(err, device.ErrNoConsent) || !errors.As(err, &re) || re.Decision.Allowed || re.Decision.Reason != consent.ReasonNoConsent {
			t.Fatalf("power without consent: %v", err)
		}
		if re.Query.Purpose == "" || re.Query.Category == "" || re.Query.Device != a.ID() {
			t.Fatalf("the refused query: %+v", re.Query)
		}
	})
	give := analytics()
	t.Run("consent given", func(t *testing.T) {
		must(t, a.AddConsent(ctx, k.sign(t, give)))
		must(t, a.AddConsent(ctx, k.sign(t, give))) // the same record again: no change
		must(t, a.Record(ctx, "power", power))
		h := a.Health()
		// Queued for the cloud; the partner needs consent of its own.
		if h.Queued != 1 || h.Drops[device.DropNoConsent] != 1 {
			t.Fatalf("health: %+v", h)
		}
	})
	t.Run("partner", func(t *testing.T) {
		must(t, a.AddConsent(ctx, k.sign(t, grant(time.Now().Add(-2*time.Hour), "grid-balancing",
			[]string{"device.usage", "device.sensor.power", "device.identifier"}, "gridco"))))
		must(t, a.Record(ctx, "power", power))
		if h := a.Health(); h.Queued != 3 || h.Drops[device.DropNoConsent] != 1 {
			t.Fatalf("health: %+v", h)
		}
	})
	t.Run("withdrawn", func(t *testing.T) {
		must(t, a.AddConsent(ctx, k.sign(t, consent.Withdraw(give, time.Now().Add(-time.Hour), "subject:app"))))
		// What waited in the outbox under the consent is gone at once:
		// both readings for the cloud, and the one for the partner,
		// which needed analytics too.
		if h := a.Health(); h.Queued != 0 || h.Drops[device.DropWithdrawn] != 3 {
			t.Fatalf("health after the withdrawal: %+v", h)
		}
		// Nothing more is taken, not even a reading whose hour began
		// before the withdrawal.
		hour := time.Now().Add(-time.Hour - time.Second).Truncate(time.Hour)
		for _, r := range []policy.Reading{{"ts": hour, "watts": 5.0}, power} {
			err := a.Record(ctx, "power", r)
			var re *device.RefusedError
			if !errors.As(err, &re) || re.Decision.Reason != consent.ReasonWithdrawn || re.Decision.Record.IsZero() {
				t.Fatalf("power after withdrawal: %v", err)
			}
		}
	})
	t.Run("bad records", func(t *testing.T) {
		signed := k.sign(t, analytics())
		signed[len(signed)-1] ^= 1
		if err := a.AddConsent(ctx, signed); !errors.Is(err, consent.ErrBadSignature) {
			t.Errorf("a record with a bad signature: %v", err)
		}
		other := analytics()
		other.Subject = "subj-someone-else"
		if err := a.AddConsent(ctx, k.sign(t, other)); err == nil {
			t.Errorf("another subject's record was added")
		}
		if err := a.AddConsent(ctx, []byte("not a record")); !errors.Is(err, consent.ErrMalformed) {
			t.Errorf("garbage: %v", err)
		}
	})
	t.Run("consent kept", func(t *testing.T) {
		// After a restart, the records added count still: the withdrawal
		// too.
		cfg := k.config(t, m, t.TempDir(), "")
		b := newAgent(t, cfg)
		must(t, b.AddConsent(ctx, k.sign(t, give)))
		must(t, b.Record(ctx, "power", power))
		must(t, b.Close())
		b = newAgent(t, cfg)
		must(t, b.Record(ctx, "power", power))
		if h := b.Health(); h.Queued != 2 {
			t.Fatalf("health: %+v", h)
		}
	})
}

// TestCloudRefuses: a batch the cloud refuses for good is dropped,
// counted by reason, and the rest is delivered.
func TestCloudRefuses(t *testing.T) {
	k := newKeys(t)
	c := startCloud(t, k, t.TempDir(), "coaps://127.0.0.1:0")
	m := c.importMeter()
	ctx := context.Background()

	t.Run("forbidden", func(t *testing.T) {
		// The device holds consent the cloud never received.
		a := newAgent(t, k.config(t, m, t.TempDir(), c.url))
		must(t, a.AddConsent(ctx, k.sign(t, analytics())))
		must(t, a.Record(ctx, "power", policy.Reading{"ts": time.Now(), "watts": 10.0}))
		must(t, a.Record(ctx, "count", tick(7)))
		must(t, a.Start())
		drain(t, a, 20*time.Second)
		h := a.Health()
		if h.Drops[device.DropForbidden] != 1 || h.Delivered != 1 {
			t.Fatalf("health: %+v", h)
		}
		if got := counts(t, c.stored(m, "count")); !slices.Equal(got, []int64{7}) {
			t.Fatalf("cloud holds %v", got)
		}
	})
	t.Run("unknown manifest", func(t *testing.T) {
		other := *k.manifest
		other.Version = "2027.1.1"
		signed, err := other.Sign(k.maker, []byte("maker-1"))
		must(t, err)
		cfg := k.config(t, m, t.TempDir(), c.url)
		cfg.Manifest = signed
		a := newAgent(t, cfg)
		for n := range int64(3) {
			must(t, a.Record(ctx, "count", tick(100+n)))
		}
		must(t, a.Start())
		drain(t, a, 20*time.Second)
		if h := a.Health(); h.Drops[device.DropUnknownManifest] != 3 || h.Delivered != 0 {
			t.Fatalf("health: %+v", h)
		}
		// The agent runs the cloud's manifest now.
		waitFor(t, 10*time.Second, "the switch to the cloud's manifest", func() bool { return a.ManifestHash() == k.hash })
		must(t, a.Record(ctx, "count", tick(103)))
		drain(t, a, 20*time.Second)
		if h := a.Health(); h.Delivered != 1 {
			t.Fatalf("health: %+v", h)
		}
	})
}

// TestRecordOffline: Record does not touch the network: it returns as
// fast with no cloud at all, and delivery keeps trying without losing
// anything.
func TestRecordOffline(t *testing.T) {
	k := newKeys(t)
	m := unregisteredMeter(t)
	// A port nobody listens on.
	a := newAgent(t, k.config(t, m, t.TempDir(), "coaps://127.0.0.1:9"))
	must(t, a.Start())
	start := time.Now()
	for n := range int64(50) {
		must(t, a.Record(context.Background(), "count", tick(n)))
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("50 readings took %v", d)
	}
	deadline := time.Now().Add(10 * time.Second)
	for a.Health().LastError == "" && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	h := a.Health()
	if h.LastError == "" || h.Queued != 50 || len(h.Drops) != 0 {
		t.Fatalf("health: %+v", h)
	}
}

// TestConcurrentRecords: concurrent calls share commits, and each
// returns only once its reading is durable.
func TestConcurrentRecords(t *testing.T) {
	k := newKeys(t)
	m := unregisteredMeter(t)
	cfg := k.config(t, m, t.TempDir(), "")
	a := newAgent(t, cfg)
	const callers, each = 8, 100
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for c := range callers {
		wg.Go(func() {
			for i := range each {
				if err := a.Record(context.Background(), "count", tick(int64(c*each+i))); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	h := a.Health()
	if h.Queued != callers*each {
		t.Fatalf("queued %d, want %d", h.Queued, callers*each)
	}
	if h.Commits >= callers*each {
		t.Fatalf("%d commits for %d readings: no group commit", h.Commits, callers*each)
	}
	t.Logf("%d readings in %d commits", callers*each, h.Commits)
	// What Record acknowledged is in the file.
	must(t, a.Close())
	b := newAgent(t, cfg)
	if got := b.Health().Queued; got != callers*each {
		t.Fatalf("after reopening: %d queued", got)
	}
}

// TestTooLarge: a reading that could never travel in a batch is refused.
func TestTooLarge(t *testing.T) {
	k := newKeys(t)
	m := unregisteredMeter(t)
	a := newAgent(t, k.config(t, m, t.TempDir(), ""))
	err := a.Record(context.Background(), "count", policy.Reading{"ts": time.Now(), "n": int64(1), "note": strings.Repeat("x", 70<<10)})
	if !errors.Is(err, device.ErrReadingTooLarge) {
		t.Fatalf("a 70 KiB reading: %v", err)
	}
}

// TestShapedAndShared: a reading leaves as the manifest shaped it, once
// for the cloud and once for the partner its consent names, and the
// cloud, deciding with the same records, stores both.
func TestShapedAndShared(t *testing.T) {
	k := newKeys(t)
	c := startCloud(t, k, t.TempDir(), "coaps://127.0.0.1:0")
	m := c.importMeter()
	a := newAgent(t, k.config(t, m, t.TempDir(), c.url))
	ctx := context.Background()
	for _, r := range []*consent.Record{
		analytics(),
		grant(time.Now().Add(-2*time.Hour), "grid-balancing", []string{"device.usage", "device.sensor.power", "device.identifier"}, "gridco"),
	} {
		signed := k.sign(t, r)
		_, err := c.node.AddConsent(ctx, signed)
		must(t, err)
		must(t, a.AddConsent(ctx, signed))
	}
	must(t, a.Record(ctx, "power", policy.Reading{"ts": time.Now(), "watts": 1234.5, "serial": "SN-0042", "raw": "0xdeadbeef", "extra": 1.0}))
	must(t, a.Start())
	drain(t, a, 20*time.Second)
	if h := a.Health(); h.Delivered != 2 || len(h.Drops) != 0 {
		t.Fatalf("health: %+v", h)
	}
	got := c.stored(m, "power")
	if len(got) != 2 {
		t.Fatalf("the cloud holds %d readings: %v", len(got), got)
	}
	for _, r := range got {
		serial, _ := r["serial"].(string)
		if len(r) != 3 || r["watts"] != 1230.0 || !strings.HasPrefix(serial, "k1:") || serial == "SN-0042" {
			t.Errorf("stored: %v", r)
		}
	}
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLogs: drops are logged as they happen, and a started agent logs
// its health.
func TestLogs(t *testing.T) {
	k := newKeys(t)
	var out syncBuffer
	cfg := k.config(t, newMeter(t), t.TempDir(), "")
	cfg.Logger = slog.New(slog.NewTextHandler(&out, nil))
	cfg.MaxReadings = 2
	cfg.HealthInterval = 10 * time.Millisecond
	a := newAgent(t, cfg)
	if err := a.Start(); err == nil {
		t.Fatal("Start without a URL")
	}
	for n := range int64(4) {
		must(t, a.Record(context.Background(), "count", tick(n)))
	}
	if s := out.String(); !strings.Contains(s, `msg="device: readings dropped" reason=evicted stream=count readings=1`) {
		t.Fatalf("log: %s", s)
	}
	must(t, a.Close())
	cfg.Dir, cfg.URL = t.TempDir(), "coaps://127.0.0.1:9"
	a = newAgent(t, cfg)
	must(t, a.Start())
	if err := a.Start(); err == nil {
		t.Fatal("Start twice")
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "device: health") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if s := out.String(); !strings.Contains(s, `msg="device: health" health.epoch=`) || !strings.Contains(s, "health.queued=0") {
		t.Fatalf("log: %s", s)
	}
	must(t, a.Close())
	if err := a.Start(); !errors.Is(err, device.ErrClosed) {
		t.Fatalf("Start after Close: %v", err)
	}
}

// TestTokenOverTCP: an agent that proves itself with a device token
// over coap+tcp:// delivers as one with a pre-shared key does.
func TestTokenOverTCP(t *testing.T) {
	k := newKeys(t)
	c := startCloud(t, k, t.TempDir(), "coaps://127.0.0.1:0")
	m := c.importMeter()
	url, err := c.node.Listen("coap+tcp://127.0.0.1:0")
	must(t, err)
	cfg := k.config(t, m, t.TempDir(), url)
	cfg.Transport = transport.ClientConfig{Signer: m.key, Audience: cloud.DefaultTokenAudience}
	a := newAgent(t, cfg)
	for n := range int64(20) {
		must(t, a.Record(context.Background(), "count", tick(n)))
	}
	must(t, a.Start())
	drain(t, a, 20*time.Second)
	if got := counts(t, c.stored(m, "count")); len(got) != 20 || got[0] != 0 || got[19] != 19 {
		t.Fatalf("cloud holds %v", got)
	}
}
