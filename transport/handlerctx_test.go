package transport

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/device/identity"
)

type handlerCtxTestKey struct{}

func newHC(parent context.Context, d time.Duration, dev identity.ID) *handlerContext {
	c := &handlerContext{}
	c.init(parent, time.Now(), d, dev)
	return c
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestHandlerContext: a handler's context has the request timeout as its
// deadline (or the parent's, if sooner), carries the parent's values and
// the device, is done when the parent is, at its deadline or when the
// handler returns, and arms no timer until Done is asked for.
func TestHandlerContext(t *testing.T) {
	bg := context.WithValue(context.Background(), handlerCtxTestKey{}, "v")
	dev := identity.ID{1}
	t.Run("deadline", func(t *testing.T) {
		now := time.Now()
		c := &handlerContext{}
		c.init(bg, now, time.Second, dev)
		if d, ok := c.Deadline(); !ok || !d.Equal(now.Add(time.Second)) {
			t.Fatal(d, ok)
		}
		p, cancel := context.WithTimeout(bg, 10*time.Millisecond)
		defer cancel()
		pd, _ := p.Deadline()
		c.init(p, now, time.Second, dev)
		if d, _ := c.Deadline(); !d.Equal(pd) {
			t.Fatal(d, pd)
		}
	})
	t.Run("values", func(t *testing.T) {
		c := newHC(bg, time.Second, dev)
		if got, ok := DeviceFrom(c); !ok || got != dev {
			t.Fatal(got, ok)
		}
		if c.Value(handlerCtxTestKey{}) != "v" {
			t.Fatal("parent value")
		}
		_ = c.Done()
		if got, ok := DeviceFrom(c); !ok || got != dev || c.Value(handlerCtxTestKey{}) != "v" {
			t.Fatal("after arming")
		}
		z := newHC(bg, time.Second, identity.ID{})
		if _, ok := DeviceFrom(z); ok || z.Value(deviceKey{}) != nil {
			t.Fatal("zero device")
		}
	})
	t.Run("armed-timeout", func(t *testing.T) {
		c := newHC(bg, 20*time.Millisecond, dev)
		if c.Err() != nil || closed(c.Done()) {
			t.Fatal("early")
		}
		<-c.Done()
		if !errors.Is(c.Err(), context.DeadlineExceeded) || context.Cause(c) != context.DeadlineExceeded {
			t.Fatal(c.Err(), context.Cause(c))
		}
		c.end()
		if !errors.Is(c.Err(), context.DeadlineExceeded) {
			t.Fatal(c.Err())
		}
	})
	t.Run("lazy-timeout", func(t *testing.T) {
		c := newHC(bg, 20*time.Millisecond, dev)
		if c.Err() != nil {
			t.Fatal("early")
		}
		time.Sleep(30 * time.Millisecond)
		if context.Cause(c) != context.DeadlineExceeded {
			t.Fatal(context.Cause(c))
		}
		if !errors.Is(c.Err(), context.DeadlineExceeded) || !closed(c.Done()) {
			t.Fatal(c.Err())
		}
	})
	t.Run("lazy-cause-first", func(t *testing.T) {
		c := newHC(bg, 20*time.Millisecond, dev)
		time.Sleep(30 * time.Millisecond)
		if context.Cause(c) != context.DeadlineExceeded {
			t.Fatal(context.Cause(c))
		}
	})
	t.Run("lazy-cause-cancelable-parent", func(t *testing.T) {
		p, cancel := context.WithCancel(bg)
		defer cancel()
		c := newHC(p, 20*time.Millisecond, dev)
		time.Sleep(30 * time.Millisecond)
		if context.Cause(c) != context.DeadlineExceeded || c.Err() != context.DeadlineExceeded {
			t.Fatal(context.Cause(c))
		}
	})
	t.Run("end", func(t *testing.T) {
		for _, arm := range []bool{false, true} {
			c := newHC(bg, time.Hour, dev)
			if arm {
				_ = c.Done()
			}
			c.end()
			if c.Err() != context.Canceled || !closed(c.Done()) || context.Cause(c) != context.Canceled {
				t.Fatal(arm, c.Err())
			}
		}
	})
	t.Run("end-after-deadline", func(t *testing.T) {
		c := newHC(bg, 10*time.Millisecond, dev)
		time.Sleep(20 * time.Millisecond)
		c.end()
		if c.Err() != context.DeadlineExceeded || !closed(c.Done()) {
			t.Fatal(c.Err())
		}
	})
	t.Run("end-then-deadline", func(t *testing.T) {
		c := newHC(bg, 10*time.Millisecond, dev)
		c.end()
		time.Sleep(20 * time.Millisecond)
		if c.Err() != context.Canceled || !closed(c.Done()) {
			t.Fatal(c.Err())
		}
	})
	t.Run("parent", func(t *testing.T) {
		for _, arm := range []bool{false, true} {
			cause := errors.New("gone")
			p, cancel := context.WithCancelCause(bg)
			c := newHC(p, time.Hour, dev)
			if arm {
				_ = c.Done()
			}
			cancel(cause)
			if arm {
				<-c.Done()
			}
			if c.Err() != context.Canceled || context.Cause(c) != cause || !closed(c.Done()) {
				t.Fatal(arm, c.Err(), context.Cause(c))
			}
		}
	})
	t.Run("children", func(t *testing.T) {
		c := newHC(bg, time.Hour, dev)
		g := runtime.NumGoroutine()
		var kids []context.Context
		for range 50 {
			k, cancel := context.WithCancel(c)
			defer cancel()
			kids = append(kids, k)
			k2, cancel2 := context.WithTimeout(c, time.Hour)
			defer cancel2()
			kids = append(kids, k2)
		}
		ran := make(chan struct{})
		context.AfterFunc(c, func() { close(ran) })
		if n := runtime.NumGoroutine(); n > g+2 {
			t.Fatalf("goroutines %d -> %d", g, n)
		}
		if got, ok := DeviceFrom(kids[0]); !ok || got != dev {
			t.Fatal("child device")
		}
		c.end()
		<-ran
		for _, k := range kids {
			<-k.Done()
			if k.Err() != context.Canceled {
				t.Fatal(k.Err())
			}
		}
	})
	t.Run("child-timeout", func(t *testing.T) {
		c := newHC(bg, 20*time.Millisecond, dev)
		k, cancel := context.WithCancel(c)
		defer cancel()
		<-k.Done()
		if k.Err() != context.DeadlineExceeded {
			t.Fatal(k.Err())
		}
	})
	t.Run("race", func(t *testing.T) {
		for range 100 {
			c := newHC(bg, time.Millisecond, dev)
			var wg sync.WaitGroup
			for i := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					switch i {
					case 0:
						<-c.Done()
					case 1:
						_ = c.Err()
					case 2:
						_, _ = DeviceFrom(c)
						_ = c.Value(handlerCtxTestKey{})
					case 3:
						k, cancel := context.WithCancel(c)
						cancel()
						<-k.Done()
					}
				}()
			}
			time.Sleep(time.Duration(len(c.dev)%2) * time.Millisecond)
			c.end()
			wg.Wait()
		}
	})
}
