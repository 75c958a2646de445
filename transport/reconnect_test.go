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
			must(t, f.srv.Close())
			u, _ := url.Parse(f.url)
			listen := scheme + "://" + u.Host
			if scheme == "coaps+cert" {
				listen = "coaps://" + u.Host + "?auth=cert"
			}
			srv2 := NewServer(f.srv.cfg)
			t.Cleanup(func() { srv2.Close() })
			var got string
			deadline := time.Now().Add(3 * time.Second)
			for {
				if got, err = srv2.Listen(listen); err == nil || time.Now().After(deadline) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			must(t, err)
			if !strings.HasSuffix(got, u.Host) {
				t.Fatalf("restarted on %s, want %s", got, u.Host)
			}
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
