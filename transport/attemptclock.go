package transport

import (
	"context"
	"sync"
	"time"
)

// attemptShares is how many shared attempt contexts an attemptClock
// makes, at most, per attempt timeout.
const attemptShares = 64

// An attemptClock bounds the attempts of a client's requests by the
// attempt timeout without a timer context for each: the attempts that
// start within the same 1/attemptShares of the timeout, with the same
// caller's context (as far as ending goes: the same Done channel), share
// one context, which ends the timeout after the last of them may have
// started. So an attempt is bounded by the timeout and at most
// 1/attemptShares more, and at most about attemptShares shared contexts
// are pending at once, however many requests are in flight. A shared
// context is not canceled before its deadline (an attempt that ends
// leaves it to the others), except by stop.
//
// An attempt whose caller's context is not the current share's (one
// context for each request, say) gets a timer context of its own unless
// the current share has ended, as it would without the clock.
type attemptClock struct {
	timeout time.Duration

	mu      sync.Mutex
	cur     context.Context // the current share
	curDone <-chan struct{} // the Done channel of the caller's context it was made from
	until   time.Time       // the attempts that start before it may share cur
	shares  []share         // the shares not yet released
	stopped bool
}

// A share is a shared attempt context's deadline and release.
type share struct {
	deadline time.Time
	release  context.CancelFunc
}

func newAttemptClock(timeout time.Duration) *attemptClock {
	return &attemptClock{timeout: timeout}
}

// noCancel is the cancel function of a shared attempt context: the
// attempt leaves it to the others.
func noCancel() {}

// bound returns the context of an attempt of a request made with ctx,
// starting at now: ctx, ending no sooner than the timeout after now and
// no later than 1/attemptShares of it after that.
func (a *attemptClock) bound(ctx context.Context, now time.Time) (context.Context, context.CancelFunc) {
	done := ctx.Done()
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.stopped:
		return a.cur, noCancel
	case a.cur != nil && now.Before(a.until):
		if done == a.curDone {
			return a.cur, noCancel
		}
		return context.WithTimeout(ctx, a.timeout)
	}
	// Release the shares past their deadline (a formality: their timers
	// have ended them), and start one.
	live := a.shares[:0]
	for _, sh := range a.shares {
		if now.Before(sh.deadline) {
			live = append(live, sh)
		} else {
			sh.release()
		}
	}
	a.until = now.Add(a.timeout / attemptShares)
	sh := share{deadline: a.until.Add(a.timeout)}
	a.cur, sh.release = context.WithDeadline(ctx, sh.deadline)
	a.curDone = done
	a.shares = append(live, sh)
	return a.cur, noCancel
}

// stop ends the shared contexts, and any attempt that starts after: the
// client is closed.
func (a *attemptClock) stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, sh := range a.shares {
		sh.release()
	}
	a.shares = nil
	var cancel context.CancelFunc
	a.cur, cancel = context.WithCancel(context.Background())
	cancel()
	a.stopped = true
}
