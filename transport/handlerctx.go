package transport

import (
	"context"
	"sync"
	"time"

	"github.com/sensible-iot/sensible/device/identity"
)

// handlerContext is the context a handler runs in: its request's context,
// ending at the deadline RequestTimeout sets, carrying the device
// (DeviceFrom), and canceled when the handler returns. It is what
// context.WithTimeout and context.WithValue would make, in one allocation
// and without a timer for the handlers that never wait on their context,
// the usual case: the timer context is made only when Done is first
// called (by the handler, or by a context derived from this one). Err
// needs no timer: it reads the clock.
//
// Contexts derived from it are children of the timer context, as they
// would be of context.WithTimeout's: Done makes it first, and Value then
// answers for it.
type handlerContext struct {
	parent   context.Context
	deadline time.Time
	dev      identity.ID // zero: no device in the context

	mu       sync.Mutex
	timer    context.Context // the timer context, once made
	cancel   context.CancelFunc
	devValue any  // dev as a Value, once asked for
	ended    bool // the handler has returned
	expired  bool // the deadline had passed when it returned
}

var _ context.Context = (*handlerContext)(nil)

// init starts the context of a handler called now, within timeout.
func (c *handlerContext) init(parent context.Context, now time.Time, timeout time.Duration, dev identity.ID) {
	c.parent, c.dev = parent, dev
	c.deadline = now.Add(timeout)
	if d, ok := parent.Deadline(); ok && d.Before(c.deadline) {
		c.deadline = d
	}
}

func (c *handlerContext) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *handlerContext) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.timerLocked().Done()
}

func (c *handlerContext) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timer == nil && !c.ended && c.parent.Err() == nil && time.Now().Before(c.deadline) {
		return nil
	}
	// Ended one way or another: the timer context says how, for Err and
	// context.Cause alike.
	return c.timerLocked().Err()
}

func (c *handlerContext) Value(key any) any {
	c.mu.Lock()
	if _, ok := key.(deviceKey); ok && !c.dev.IsZero() {
		if c.devValue == nil {
			c.devValue = c.dev // boxed once, as context.WithValue would
		}
		v := c.devValue
		c.mu.Unlock()
		return v
	}
	t := c.timer
	c.mu.Unlock()
	if t != nil {
		return t.Value(key)
	}
	return c.parent.Value(key)
}

func (c *handlerContext) String() string { return "transport.handlerContext" }

// timerLocked returns the timer context, making it first if need be; c.mu
// is held. Made after the handler returned, it is canceled at once, or
// past its deadline if the handler overran it.
func (c *handlerContext) timerLocked() context.Context {
	if c.timer != nil {
		return c.timer
	}
	if c.ended && !c.expired {
		c.timer, c.cancel = context.WithCancel(c.parent)
	} else {
		c.timer, c.cancel = context.WithDeadline(c.parent, c.deadline)
	}
	if c.ended {
		c.cancel()
	}
	return c.timer
}

// end cancels the context: the handler has returned.
func (c *handlerContext) end() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ended = true
	if c.timer != nil {
		c.cancel()
		return
	}
	c.expired = !time.Now().Before(c.deadline)
}

// handlerCall holds a handler's context and request, allocated together.
type handlerCall struct {
	ctx handlerContext
	req Request
}
