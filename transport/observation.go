package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/mux"

	"github.com/sensible-iot/sensible/internal/codec"
)

// The client side of Observe (RFC 7641). The client keeps its own table of
// observations, by token, rather than go-coap's, so that it can register
// one again with the same token (which replaces the server's registration
// instead of adding one), and so that the notifications reach a goroutine
// of the observation rather than running its handler on the connection's.
//
// The client's keeper keeps the observations registered: when the
// connection closes, or a keepalive check goes unanswered, it reconnects
// (backing off while the server is away) and registers each again; every
// KeepAlive it checks that the server still holds them.

// A Notification is one event of an observation: the resource's current
// value, or, with Err set, news that values may have been missed or that
// the observation has ended.
type Notification struct {
	// Seq is the notification's Observe sequence number (RFC 7641
	// section 4.4). Sequence numbers start again with each registration.
	Seq uint32
	// Format is the body's content-format (CBOR for the v1 resources).
	Format Format
	// Body is the raw body: the whole current value, never a delta.
	Body []byte
	// Err, when set, is what happened instead of a value (Body is empty):
	//
	//   - errors.Is(Err, ErrMissedNotifications): values may have been
	//     missed, because the client lost the server or the handler fell
	//     behind. The observation goes on; the next notification carries
	//     the current value.
	//   - anything else: the observation has ended and the handler is not
	//     called again. The server answered with an error (an *Error), or
	//     stopped sending notifications (ErrNotObservable).
	Err error

	dec *codec.Decoder
}

// Decode decodes the CBOR body into the value v points to. Map keys the
// body has and v does not are skipped, so that the server may add fields;
// everything else is as strict as on the server. It returns Err when set,
// an error matching ErrUnexpectedFormat for a body that is not CBOR, and a
// *DecodeError for one that does not decode.
func (n Notification) Decode(v any) error {
	if n.Err != nil {
		return n.Err
	}
	if n.Format != CBOR {
		return fmt.Errorf("%w: %d, want CBOR (%d)", ErrUnexpectedFormat, n.Format, CBOR)
	}
	if err := n.dec.Unmarshal(n.Body, v); err != nil {
		return newDecodeError(err)
	}
	return nil
}

// An Observation is a registration made by Client.Observe. It survives
// reconnects and server restarts: the client registers it again whenever
// it has to.
type Observation struct {
	c     *Client
	path  string
	token string
	fn    func(Notification)
	wake  chan struct{} // wakes the goroutine that calls fn

	on mux.Conn // guarded by c.mu: the connection it is registered on; nil while it is not

	mu       sync.Mutex
	queue    []Notification // waiting for fn
	ended    bool           // nothing more is queued
	halted   bool           // fn is not called again
	lost     bool           // values may have been missed since the last one queued
	hasSeq   bool
	seq      uint32    // sequence number of the last value queued
	seqAt    time.Time // when it came
	gen      uint64    // registrations begun
	seqGen   uint64    // gen when the last value was queued
	last     []byte    // the last value queued, and its format
	lastForm Format
}

// maxQueued bounds the notifications waiting for a handler. A handler
// that falls this far behind gets ErrMissedNotifications and the latest
// value: each notification carries the whole value, so the latest is what
// matters.
const maxQueued = 16

// Observe registers for notifications of path and calls fn with each, in
// order, starting with the current value; a notification older than one
// already delivered is dropped (RFC 7641 section 3.4).
//
// The observation lasts until Cancel or Close. When the connection closes,
// or the server stops answering the keepalive checks
// (ClientConfig.KeepAlive), fn gets a Notification whose Err matches
// ErrMissedNotifications, and the client reconnects and registers again
// by itself, without waiting for a request, whereupon fn gets the current
// value. When the server answers a registration, or a notification, with
// an error, fn gets that error and the observation ends.
//
// Observe itself retries as a request does (see RetryPolicy), and fails
// with an *Error when the server refuses the registration, or
// ErrNotObservable when it answers without registering it.
//
// fn runs on a goroutine of the observation, never on the connection's,
// and its calls never overlap; it may call the Client (Get, Post, Cancel),
// but not Close. A notification that arrives while fn is busy waits for
// it.
func (c *Client) Observe(ctx context.Context, path string, fn func(Notification)) (*Observation, error) {
	tok, err := message.GetToken()
	if err != nil {
		return nil, fmt.Errorf("transport: observe %s: %w", path, err)
	}
	o := &Observation{c: c, path: path, token: string(tok), fn: fn, wake: make(chan struct{}, 1)}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	c.byToken[o.token] = o
	c.mu.Unlock()
	err = c.withRetry(ctx, func(ctx context.Context, conn mux.Conn) error { return c.register(ctx, conn, o, false) })
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil && c.closed {
		err = ErrClosed
	}
	if err != nil {
		if c.byToken[o.token] == o {
			delete(c.byToken, o.token)
		}
		return nil, err
	}
	o.mu.Lock()
	ended := o.ended // by a notification that came right after the answer
	o.mu.Unlock()
	if !ended {
		c.observations[o] = struct{}{}
	}
	c.wg.Add(1)
	go o.run()
	c.wake()
	return o, nil
}

// Cancel ends the observation and tells the server (RFC 7641 section 3.6).
// fn is not called after Cancel returns, except for a call already
// running; Cancel may be called from fn. It fails only when ctx ends
// before the server has answered; the server forgets the registration
// with the connection anyway. It is idempotent.
func (o *Observation) Cancel(ctx context.Context) error {
	c := o.c
	c.mu.Lock()
	_, live := c.observations[o]
	delete(c.observations, o)
	if c.byToken[o.token] == o {
		delete(c.byToken, o.token)
	}
	conn := o.on
	o.on = nil
	c.mu.Unlock()
	o.halt()
	if !live || conn == nil {
		return nil
	}
	_, err := c.exchange(ctx, conn, GET, o.path, 0, nil, func(req *pool.Message) {
		req.SetToken(message.Token(o.token))
		req.SetObserve(1)
	})
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("transport: cancel observation of %s: %w", o.path, ctx.Err())
	}
	return nil
}

// register registers o on conn, with o's token, and queues the current
// value the server answers with; keepalive says it is a check, whose
// answer is not queued when it is the value already queued.
func (c *Client) register(ctx context.Context, conn mux.Conn, o *Observation, keepalive bool) error {
	o.mu.Lock()
	o.gen++
	o.mu.Unlock()
	res, err := c.exchange(ctx, conn, GET, o.path, 0, nil, func(req *pool.Message) {
		req.SetToken(message.Token(o.token))
		req.SetObserve(0)
	})
	if err != nil {
		return err
	}
	if !res.observed {
		return fmt.Errorf("%w: GET %s", ErrNotObservable, o.path)
	}
	c.mu.Lock()
	o.on = conn
	c.mu.Unlock()
	o.accept(res, true, keepalive)
	return nil
}

// notification takes a message the server sent on its own (not the answer
// to a request): a notification of one of the observations, found by its
// token. Anything else is ignored (go-coap acknowledges it if it is
// confirmable, as it does every confirmable notification).
func (c *Client) notification(_ mux.ResponseWriter, r *mux.Message) {
	code := Code(r.Code())
	if class := code >> 5; class != 2 && class != 4 && class != 5 {
		return
	}
	c.mu.Lock()
	o := c.byToken[string(r.Token())]
	c.mu.Unlock()
	if o == nil {
		return
	}
	if !r.HasOption(message.Observe) && r.Type() == message.Acknowledgement && c.datagrams() {
		// Over UDP and DTLS an ACK that carries a response answers a
		// request; one that reaches this handler answers a request that
		// go-coap sent itself (the next block of a notification, say),
		// not the server ending the observation.
		return
	}
	b, err := readAll(r.Message)
	if err != nil {
		return
	}
	if !code.IsSuccess() {
		// The server ended the observation with an error (RFC 7641
		// section 3.2).
		c.end(o, responseError(code, r.Message, b))
		return
	}
	res := result{body: b}
	if cf, err := r.ContentFormat(); err == nil {
		res.format, res.hasFormat = Format(cf), true
	}
	seq, err := r.Observe()
	if err != nil {
		// A 2.xx without Observe is a last value: the server no longer
		// sends notifications.
		c.endWith(o, &Notification{Format: res.format, Body: b, dec: c.dec},
			fmt.Errorf("%w: the server ended the observation of %s", ErrNotObservable, o.path))
		return
	}
	res.seq, res.observed = seq, true
	o.accept(res, false, false)
}

// datagrams reports whether the client speaks CoAP over UDP or DTLS,
// whose messages have types.
func (c *Client) datagrams() bool { return c.url.Scheme == "coap" || c.url.Scheme == "coaps" }

// end ends an observation that the server refused or ended, telling its
// handler err.
func (c *Client) end(o *Observation, err error) { c.endWith(o, nil, err) }

// endWith is end with a last value, queued with the end in one step, so
// that no other value can come between them.
func (c *Client) endWith(o *Observation, last *Notification, err error) {
	c.mu.Lock()
	delete(c.observations, o)
	if c.byToken[o.token] == o {
		delete(c.byToken, o.token)
	}
	o.on = nil
	// Ended before c.mu is let go: Observe, which adds an observation it
	// has just registered under c.mu unless it has ended, must not add
	// one that is ending.
	o.finish(last, err)
	c.mu.Unlock()
}

// fresher reports whether a notification with sequence number v2 that
// came at t2 is newer than one with v1 that came at t1 (RFC 7641 section
// 3.4: 24-bit numbers that wrap, and 128 s after which any is newer).
func fresher(v1 uint32, t1 time.Time, v2 uint32, t2 time.Time) bool {
	const half = 1 << 23
	return v1 < v2 && v2-v1 < half || v1 > v2 && v1-v2 > half || t2.After(t1.Add(128*time.Second))
}

// accept queues a value, unless it is older than the last one queued. The
// answer to a registration is taken (sequence numbers start again with
// it) unless a notification of the same registration came first with a
// newer sequence number, and one that a keepalive check brought is not
// queued when it is the value already queued.
func (o *Observation) accept(res result, registration, keepalive bool) {
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ended {
		return
	}
	switch {
	case registration && keepalive && o.hasSeq && !o.lost && res.format == o.lastForm && bytes.Equal(res.body, o.last):
		o.seq, o.seqAt = res.seq, now
		return
	case !registration && o.hasSeq && !fresher(o.seq, o.seqAt, res.seq, now):
		return
	case registration && o.hasSeq && o.seqGen == o.gen && !fresher(o.seq, o.seqAt, res.seq, now):
		// A notification of this registration overtook its answer
		// (go-coap may hand them over in either order): the answer is
		// older, and the handler has the newer value already.
		return
	}
	o.hasSeq, o.seq, o.seqAt, o.last, o.lastForm, o.lost = true, res.seq, now, res.body, res.format, false
	o.seqGen = o.gen
	o.pushLocked(Notification{Seq: res.seq, Format: res.format, Body: res.body, dec: o.c.dec})
}

// missed tells the handler, once until the next value, that values may
// have been missed, and why.
func (o *Observation) missed(cause error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ended || o.lost {
		return
	}
	o.lost = true
	o.pushLocked(Notification{Err: fmt.Errorf("%w: %w", ErrMissedNotifications, cause)})
}

// push queues n unless the observation has ended, newer or not.
func (o *Observation) push(n Notification) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.ended {
		o.pushLocked(n)
	}
}

// pushLocked queues n and wakes the goroutine that calls fn; o.mu is held.
func (o *Observation) pushLocked(n Notification) {
	if len(o.queue) >= maxQueued {
		o.queue = append(o.queue[:0], Notification{Err: fmt.Errorf("%w: the handler fell behind", ErrMissedNotifications)})
	}
	// One word of missed values is enough until the next value.
	if n.Err == nil || len(o.queue) == 0 || !errors.Is(n.Err, ErrMissedNotifications) ||
		!errors.Is(o.queue[len(o.queue)-1].Err, ErrMissedNotifications) {
		o.queue = append(o.queue, n)
	}
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// finish queues last, when there is one, and err as the observation's
// last events.
func (o *Observation) finish(last *Notification, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ended {
		return
	}
	if last != nil {
		o.pushLocked(*last)
	}
	o.ended = true
	o.queue = append(o.queue, Notification{Err: err})
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// halt stops the handler: nothing queued is delivered.
func (o *Observation) halt() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ended, o.halted, o.queue = true, true, nil
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// run calls fn with each queued event, in order, until the observation
// ends or halts. Its owner is the Client, whose Close waits for it.
func (o *Observation) run() {
	defer o.c.wg.Done()
	for {
		o.mu.Lock()
		if o.halted || o.ended && len(o.queue) == 0 {
			o.mu.Unlock()
			return
		}
		if len(o.queue) == 0 {
			o.mu.Unlock()
			<-o.wake
			continue
		}
		n := o.queue[0]
		o.queue[0] = Notification{}
		o.queue = o.queue[1:]
		o.mu.Unlock()
		o.fn(n)
	}
}

// maxCheckWait bounds the wait for the answer to a keepalive check.
const maxCheckWait = 15 * time.Second

// keep is the client's keeper. While there are observations it keeps them
// registered on a live connection: it reconnects when the connection
// closes or a check goes unanswered, backing off while the server is
// away, and checks on them every KeepAlive. It returns when ctx ends
// (Close).
func (c *Client) keep(ctx context.Context) {
	defer c.wg.Done()
	var tick <-chan time.Time
	if c.cfg.KeepAlive > 0 {
		t := time.NewTicker(c.cfg.KeepAlive)
		defer t.Stop()
		tick = t.C
	}
	fails := 0
	for {
		conn, need, _ := c.state()
		if need {
			wait, err := c.restore(ctx)
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				fails = 0
				continue
			}
			c.log.Debug("transport: registering observations again", "err", err)
			d := max(wait, c.cfg.Retry.waitUpTo(fails, max(c.cfg.Retry.max(), c.cfg.KeepAlive)))
			fails++
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		var done <-chan struct{}
		if conn != nil {
			done = conn.Done()
		}
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		case <-done:
			c.log.Debug("transport: connection closed", "server", c.url.Redacted())
			c.drop(conn, errConnClosed)
		case <-tick:
			// The state may have changed while the keeper waited.
			if conn, need, any := c.state(); any && !need && conn != nil {
				c.check(ctx, conn)
			}
		}
	}
}

// state returns the current connection, whether an observation is not
// registered on it, and whether there are observations at all.
func (c *Client) state() (conn mux.Conn, need, any bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	conn = c.conn
	for o := range c.observations {
		any = true
		if o.on == nil || o.on != conn {
			return conn, true, true
		}
	}
	return conn, false, any
}

// restore connects if need be and registers the observations that are not
// registered on the connection. It returns how long the server asked to
// wait, when it did.
func (c *Client) restore(ctx context.Context) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Retry.timeout())
	defer cancel()
	conn, err := c.live(ctx)
	if err != nil {
		return 0, err
	}
	return c.reobserve(ctx, conn, false)
}

// check asks the server whether it still holds the observations on conn:
// a ping over TCP, where the server forgets them only with the
// connection; a registration again over UDP and DTLS. A check that goes
// unanswered drops the connection, and the keeper reconnects.
func (c *Client) check(ctx context.Context, conn mux.Conn) {
	ctx, cancel := context.WithTimeout(ctx, min(c.cfg.KeepAlive, maxCheckWait))
	defer cancel()
	if c.datagrams() {
		c.reobserve(ctx, conn, true)
		return
	}
	if err := conn.Ping(ctx); err != nil && ctx.Err() != context.Canceled {
		c.drop(conn, &connError{op: "ping", err: errNoResponse})
	}
}

// reobserve registers on conn the observations that are not registered on
// it, or, for a keepalive check, again those that are. An observation the
// server refuses ends; one it cannot take now (4.29, 5.03) waits for the
// next try, and a connection that fails is dropped. It returns the first
// error that calls for a retry, and how long the server asked to wait.
func (c *Client) reobserve(ctx context.Context, conn mux.Conn, keepalive bool) (time.Duration, error) {
	var wait time.Duration
	var first error
	reauthed := false
	todo := c.pending(conn, keepalive)
	for i := 0; i < len(todo); i++ {
		o := todo[i]
		err := c.register(ctx, conn, o, keepalive)
		var ce *connError
		var e *Error
		switch {
		case err == nil:
		case errors.As(err, &ce):
			c.drop(conn, err)
			return wait, err
		case errors.Is(err, ErrUnauthorized) && c.usesToken() && !reauthed:
			// The server lost the session, and the observations with
			// it: authenticate again and register them all.
			reauthed = true
			for _, l := range c.lose(conn, false) {
				l.missed(errSessionLost)
			}
			if aerr := c.authenticate(ctx, conn); aerr != nil {
				if errors.As(aerr, &ce) {
					c.drop(conn, aerr)
				}
				return wait, aerr
			}
			todo, keepalive, i = c.pending(conn, false), false, -1
		case retryable(err):
			if errors.As(err, &e) {
				wait = max(wait, e.RetryAfter)
			}
			if first == nil {
				first = err
			}
		default:
			if ctx.Err() != nil {
				return wait, err
			}
			c.end(o, err)
		}
	}
	return wait, first
}

// pending returns the observations not registered on conn, or, with
// registered, those that are.
func (c *Client) pending(conn mux.Conn, registered bool) []*Observation {
	c.mu.Lock()
	defer c.mu.Unlock()
	var obs []*Observation
	for o := range c.observations {
		if (o.on == conn) == registered {
			obs = append(obs, o)
		}
	}
	return obs
}
