package transport

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestReconnect restarts the server on the same address: the client's next
// request reconnects (authenticating again), and its observation is
// registered again on the new server.
func TestReconnect(t *testing.T) {
	for _, scheme := range allSchemes {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{})
			observable := Resource{Path: "/v1/state/desired", Observable: true,
				Handler: func(context.Context, *Request) (any, error) { return desired{Temp: 1}, nil }}
			must(t, f.srv.Handle(observable))
			c := f.dial(t, true)
			var last atomic.Int64
			_, err := c.Observe(ctx5(t), "/v1/state/desired", func(n Notification) {
				var d desired
				if n.Decode(&d) == nil {
					last.Store(int64(d.Temp))
				}
			})
			must(t, err)
			must(t, c.Post(ctx5(t), "/v1/telemetry", []reading{{"p", 1}}, nil))

			// The cloud restarts on the same address.
			srv2 := f.restart(t)
			must(t, srv2.Handle(Resource{Path: "/v1/telemetry", Methods: []Method{POST},
				Handler: Typed(func(ctx context.Context, in []reading) (ack, error) {
					dev, _ := DeviceFrom(ctx)
					return ack{Device: dev.String(), Count: len(in)}, nil
				})}))
			must(t, srv2.Handle(observable))

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var a ack
			if err := c.Post(ctx, "/v1/telemetry", []reading{{"p", 2}}, &a); err != nil {
				t.Fatalf("request after the restart: %v", err)
			}
			if a.Device != f.dev.String() {
				t.Fatalf("after reconnect the device is %q, want %s", a.Device, f.dev)
			}
			waitObservers(t, srv2, "/v1/state/desired", 1)
			n, err := srv2.Notify(ctx, "/v1/state/desired", f.dev, desired{Temp: 7})
			if err != nil || n != 1 {
				t.Fatalf("Notify after reconnect = %d, %v", n, err)
			}
			for last.Load() != 7 {
				if ctx.Err() != nil {
					t.Fatal("no notification from the new server")
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

func TestRetryHonoursContext(t *testing.T) {
	f := newFixture(t, "coap+tcp", ServerConfig{})
	c := f.dial(t, true)
	must(t, f.srv.Close())
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.Post(ctx, "/v1/telemetry", []reading{{"p", 1}}, nil)
	if err == nil {
		t.Fatal("request to a stopped server succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("gave up after %v, past the 300 ms context", d)
	}
	if errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v: the client itself is not closed", err)
	}
}

func TestRetryPolicyWait(t *testing.T) {
	p := RetryPolicy{Base: 10 * time.Millisecond, Max: 80 * time.Millisecond}
	for n := 0; n < 10; n++ {
		limit := min(10*time.Millisecond<<n, 80*time.Millisecond)
		for range 50 {
			if d := p.wait(n); d <= 0 || d > limit {
				t.Fatalf("wait(%d) = %v, want in (0, %v]", n, d, limit)
			}
		}
	}
	if (RetryPolicy{}).attempts() != DefaultRetryAttempts || (RetryPolicy{Attempts: 1}).attempts() != 1 {
		t.Fatal("attempts defaults wrong")
	}
}

// restart closes the fixture's server and starts another with the same
// configuration on the same address and port, with no resources.
func (f *fixture) restart(t *testing.T) *Server {
	t.Helper()
	must(t, f.srv.Close())
	u, err := url.Parse(f.url)
	must(t, err)
	listen := f.scheme + "://" + u.Host
	if f.scheme == "coaps+cert" {
		listen = "coaps://" + u.Host + "?auth=cert"
	}
	srv := NewServer(f.srv.cfg)
	t.Cleanup(func() { srv.Close() })
	var got string
	deadline := time.Now().Add(3 * time.Second)
	for {
		// The old listener may hold the port for a moment.
		if got, err = srv.Listen(listen); err == nil || !errors.Is(err, ErrAddressInUse) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	must(t, err)
	if !strings.HasSuffix(got, u.Host) {
		t.Fatalf("restarted on %s, want %s", got, u.Host)
	}
	return srv
}

// TestObserveAfterRestart: the cloud restarts (Close, and Listen again on
// the same address and port), and a device that only observes, and makes
// no request of its own, hears of it (ErrMissedNotifications) and
// receives the next notification within 10 s, on every transport.
func TestObserveAfterRestart(t *testing.T) {
	for _, scheme := range allSchemes {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{})
			const path = "/v1/state/desired"
			observable := Resource{Path: path, Observable: true,
				Handler: func(context.Context, *Request) (any, error) { return desired{Temp: 1}, nil }}
			must(t, f.srv.Handle(observable))
			cfg := f.config(t, true)
			cfg.KeepAlive = 2 * time.Second
			c, err := Dial(ctx5(t), f.url, cfg)
			must(t, err)
			defer c.Close()
			events := make(chan Notification, 64)
			_, err = c.Observe(ctx5(t), path, func(n Notification) { events <- n })
			must(t, err)
			if n := <-events; n.Err != nil {
				t.Fatalf("first notification: %v", n.Err)
			}

			start := time.Now()
			srv2 := f.restart(t)
			must(t, srv2.Handle(observable))
			missed := false
			deadline := time.After(10 * time.Second)
			next := time.NewTicker(100 * time.Millisecond)
			defer next.Stop()
			for done := false; !done; {
				select {
				case n := <-events:
					var d desired
					switch err := n.Decode(&d); {
					case errors.Is(err, ErrMissedNotifications):
						missed = true
					case err != nil:
						t.Fatalf("notification: %v", err)
					case d.Temp == 7:
						done = true
					}
				case <-next.C:
					if _, err := srv2.Notify(context.Background(), path, f.dev, desired{Temp: 7}); err != nil {
						t.Logf("Notify: %v", err)
					}
				case <-deadline:
					t.Fatal("no notification within 10 s of the restart")
				}
			}
			t.Logf("notified %v after the restart", time.Since(start).Round(time.Millisecond))
			if !missed {
				t.Error("the handler was not told that notifications may have been missed")
			}
		})
	}
}
