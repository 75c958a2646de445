package transport

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/device/identity"
)

type desired struct {
	Mode string `cbor:"mode"`
	Temp int    `cbor:"temp"`
}

func TestObserve(t *testing.T) {
	for _, scheme := range allSchemes {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{})
			must(t, f.srv.Handle(Resource{
				Path: "/v1/state/desired", Observable: true,
				Handler: func(ctx context.Context, r *Request) (any, error) {
					return desired{Mode: "cool", Temp: 24}, nil
				},
			}))
			c := f.dial(t, true)
			got := make(chan Notification, 16)
			obs, err := c.Observe(ctx5(t), "/v1/state/desired", func(n Notification) { got <- n })
			must(t, err)
			recv := func() (desired, uint32) {
				t.Helper()
				select {
				case n := <-got:
					var d desired
					must(t, n.Decode(&d))
					return d, n.Seq
				case <-time.After(3 * time.Second):
					t.Fatal("no notification")
				}
				return desired{}, 0
			}
			d, seq := recv()
			if d.Temp != 24 {
				t.Fatalf("first notification %+v", d)
			}
			waitObservers(t, f.srv, "/v1/state/desired", 1)
			for temp := 20; temp < 23; temp++ {
				n, err := f.srv.Notify(ctx5(t), "/v1/state/desired", f.dev, desired{Mode: "heat", Temp: temp})
				if err != nil || n != 1 {
					t.Fatalf("Notify = %d, %v", n, err)
				}
				d, s := recv()
				if d.Temp != temp || s <= seq {
					t.Fatalf("notification %+v seq %d after %d", d, s, seq)
				}
				seq = s
			}
			// A notification for another device does not reach this one.
			other, _ := identity.IDOf(mustKey(t))
			if n, _ := f.srv.Notify(ctx5(t), "/v1/state/desired", other, desired{Temp: 99}); n != 0 {
				t.Fatalf("notification for another device reached %d observers", n)
			}
			must(t, obs.Cancel(ctx5(t)))
			waitObservers(t, f.srv, "/v1/state/desired", 0)
			select {
			case n := <-got:
				t.Fatalf("unexpected notification %+v", n)
			case <-time.After(50 * time.Millisecond):
			}
			// A closed connection takes its registrations with it.
			c2 := f.dial(t, true)
			_, err = c2.Observe(ctx5(t), "/v1/state/desired", func(Notification) {})
			must(t, err)
			waitObservers(t, f.srv, "/v1/state/desired", 1)
			must(t, c2.Close())
			if scheme == "coap" {
				return // UDP has no connection to close: the registration ends with the idle timeout
			}
			waitObservers(t, f.srv, "/v1/state/desired", 0)
		})
	}
}

func TestObserveNotObservable(t *testing.T) {
	f := newFixture(t, "coap", ServerConfig{})
	c := f.dial(t, true)
	if _, err := c.Observe(ctx5(t), "/v1/nothing", func(Notification) {}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("observing a missing resource: %v, want 4.04", err)
	}
	if _, err := c.Observe(ctx5(t), "/v1/status", func(Notification) {}); !errors.Is(err, ErrNotObservable) {
		t.Fatalf("observing a plain resource: %v, want ErrNotObservable", err)
	}
	if n := len(f.srv.obs.list("/v1/status", identity.ID{})); n != 0 {
		t.Fatalf("a resource that is not observable got %d observers", n)
	}
}

func waitObservers(t *testing.T, s *Server, path string, n int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for len(s.obs.list(path, identity.ID{})) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d observers of %s, want %d", len(s.obs.list(path, identity.ID{})), path, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
