package transport

import (
	"context"
	"testing"
	"time"
)

// TestAttemptClock: attempts with one parent that start within 1/64 of the
// timeout share a context whose deadline is at least the timeout away and
// at most 1/64 more; other parents get their own; a share follows its
// parent's cancellation; shares stay bounded; stop cancels what is live.
func TestAttemptClock(t *testing.T) {
	const T = 640 * time.Millisecond
	bg := context.Background()
	a := newAttemptClock(T)
	now := time.Now()
	c1, _ := a.bound(bg, now)
	c2, _ := a.bound(bg, now.Add(T/64-1))
	if c1 != c2 {
		t.Fatal("not shared")
	}
	d, _ := c1.Deadline()
	if d.Sub(now) < T || d.Sub(now) > T+T/64 {
		t.Fatal(d.Sub(now))
	}
	// another parent within the epoch: own context, canceled by its cancel
	p, pc := context.WithCancel(bg)
	o, oc := a.bound(p, now.Add(1))
	if o == c1 {
		t.Fatal("shared across parents")
	}
	oc()
	if o.Err() != context.Canceled {
		t.Fatal(o.Err())
	}
	// same Done channel (value child) shares
	v := context.WithValue(bg, "k", 1)
	if c, _ := a.bound(v, now.Add(2)); c != c1 {
		t.Fatal("WithValue(Background) not shared")
	}
	c3, _ := a.bound(p, now.Add(T/64))
	if c3 == c1 {
		t.Fatal("shared too long")
	}
	pc()
	if c3.Err() != context.Canceled {
		t.Fatal("share does not follow its parent", c3.Err())
	}
	if c, _ := a.bound(p, now.Add(T/64+1)); c != c3 {
		t.Fatal("same parent not shared")
	}
	for i := range 1000 {
		a.bound(bg, now.Add(time.Duration(i)*T/64))
	}
	if len(a.shares) > 66 {
		t.Fatal(len(a.shares))
	}
	// real expiry
	b := newAttemptClock(50 * time.Millisecond)
	start := time.Now()
	c, _ := b.bound(bg, time.Now())
	<-c.Done()
	if c.Err() != context.DeadlineExceeded {
		t.Fatal(c.Err())
	}
	if e := time.Since(start); e < 50*time.Millisecond || e > 2*time.Second {
		t.Fatal(e)
	}
	live, _ := b.bound(bg, time.Now())
	b.stop()
	if live.Err() != context.Canceled {
		t.Fatal(live.Err())
	}
	if x, _ := b.bound(bg, time.Now().Add(time.Hour)); x.Err() == nil {
		t.Fatal("bound after stop")
	}
	if len(b.shares) != 0 {
		t.Fatal(len(b.shares))
	}
}
