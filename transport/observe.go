package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/mux"

	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
)

// observer is one Observe registration: a connection, the token its
// notifications carry, and the last sequence number sent.
type observer struct {
	conn  mux.Conn
	token message.Token
	dev   identity.ID
	udp   bool

	mu  sync.Mutex
	seq uint32
}

type observers struct {
	mu    sync.Mutex
	paths map[string]map[*observer]struct{}
}

// observe handles the Observe option of a request that got code: a
// registration on an observable resource records the observer and returns
// the sequence number of this first notification; a deregistration
// removes it.
func (s *Server) observe(conn mux.Conn, r *mux.Message, code Code) (uint32, bool) {
	obs, err := r.Observe()
	if err != nil || Method(r.Code()) != GET {
		return 0, false
	}
	path, _ := r.Path()
	if len(path) == 0 || path[0] != '/' {
		path = "/" + path
	}
	token := append(message.Token(nil), r.Token()...)
	switch obs {
	case 0:
		s.mu.RLock()
		rt := s.routes[path]
		s.mu.RUnlock()
		if rt == nil || !rt.Observable || !code.IsSuccess() {
			return 0, false
		}
		const first = 1
		o := &observer{conn: conn, token: token, dev: sessionOf(conn).get(), seq: first, udp: isUDP(conn)}
		s.obs.add(path, o)
		conn.AddOnClose(func() { s.obs.remove(path, o) })
		return first, true
	case 1:
		s.obs.removeToken(path, conn, token)
	}
	return 0, false
}

func isUDP(conn mux.Conn) bool {
	switch conn.RemoteAddr().Network() {
	case "udp", "udp4", "udp6":
		return true
	}
	return false
}

func (o *observers) add(path string, ob *observer) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.paths == nil {
		o.paths = make(map[string]map[*observer]struct{})
	}
	if o.paths[path] == nil {
		o.paths[path] = make(map[*observer]struct{})
	}
	// A client re-registering with the same token replaces its old
	// registration.
	for old := range o.paths[path] {
		if old.conn == ob.conn && bytes.Equal(old.token, ob.token) {
			delete(o.paths[path], old)
		}
	}
	o.paths[path][ob] = struct{}{}
}

func (o *observers) remove(path string, ob *observer) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.paths[path], ob)
	if len(o.paths[path]) == 0 {
		delete(o.paths, path)
	}
}

func (o *observers) removeToken(path string, conn mux.Conn, token message.Token) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for ob := range o.paths[path] {
		if ob.conn == conn && bytes.Equal(ob.token, token) {
			delete(o.paths[path], ob)
		}
	}
	if len(o.paths[path]) == 0 {
		delete(o.paths, path)
	}
}

// list returns the observers of path, those of device dev only unless dev
// is zero.
func (o *observers) list(path string, dev identity.ID) []*observer {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []*observer
	for ob := range o.paths[path] {
		if dev.IsZero() || ob.dev == dev {
			out = append(out, ob)
		}
	}
	return out
}

// Notify sends v, encoded as CBOR, to the observers of path: those of
// device dev, or all of them when dev is the zero ID. It returns how many
// observers it reached. Over UDP and DTLS notifications are
// non-confirmable, so a lost one is repaired by the next; each carries the
// whole current value, never a delta.
func (s *Server) Notify(ctx context.Context, path string, dev identity.ID, v any) (int, error) {
	body, err := codec.Marshal(v)
	if err != nil {
		return 0, err
	}
	n := 0
	var firstErr error
	for _, ob := range s.obs.list(path, dev) {
		if err := ob.send(ctx, body); err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("transport: notify %s: %w", ob.conn.RemoteAddr(), err)
			}
			continue
		}
		n++
	}
	return n, firstErr
}

func (ob *observer) send(ctx context.Context, body []byte) error {
	ob.mu.Lock()
	ob.seq = (ob.seq + 1) & 0xffffff // 24-bit sequence numbers (RFC 7641 §4.4)
	seq := ob.seq
	ob.mu.Unlock()
	m := ob.conn.AcquireMessage(ctx)
	defer ob.conn.ReleaseMessage(m)
	m.SetCode(codes.Content)
	m.SetToken(ob.token)
	m.SetObserve(seq)
	m.SetContentFormat(message.AppCBOR)
	m.SetBody(bytes.NewReader(body))
	if ob.udp {
		m.SetType(message.NonConfirmable)
	}
	return ob.conn.WriteMessage(m)
}

func observeOption(seq uint32) message.Option {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], seq)
	v := b[:]
	for len(v) > 0 && v[0] == 0 {
		v = v[1:]
	}
	return message.Option{ID: message.Observe, Value: v}
}

// A Notification is one value pushed by an observed resource.
type Notification struct {
	// Seq is the notification's Observe sequence number.
	Seq uint32
	// Body is its CBOR body.
	Body []byte
	dec  *codec.Decoder
}

// Decode decodes the body strictly into the value v points to.
func (n Notification) Decode(v any) error { return n.dec.Unmarshal(n.Body, v) }

// An Observation is a registration made by Client.Observe. It survives
// reconnects: the client registers it again on each new connection.
type Observation struct {
	c    *Client
	path string
	fn   func(Notification)

	mu  sync.Mutex
	reg mux.Observation
}

// Cancel ends the observation, telling the server (RFC 7641 §3.6).
func (o *Observation) Cancel(ctx context.Context) error {
	o.c.mu.Lock()
	delete(o.c.observations, o)
	o.c.mu.Unlock()
	o.mu.Lock()
	reg := o.reg
	o.reg = nil
	o.mu.Unlock()
	if reg == nil {
		return nil
	}
	return reg.Cancel(ctx)
}

// Observe registers for notifications of path and calls fn with each, in
// order, starting with the current value; out-of-order notifications are
// dropped. After a reconnect the client registers again and fn receives
// the current value anew. fn runs on the connection's goroutine: it must
// not block. The observation ends with Cancel or Close.
func (c *Client) Observe(ctx context.Context, path string, fn func(Notification)) (*Observation, error) {
	o := &Observation{c: c, path: path, fn: fn}
	err := c.withRetry(ctx, func(conn mux.Conn) error { return o.register(ctx, conn) })
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	c.observations[o] = struct{}{}
	return o, nil
}

// register registers o on conn.
func (o *Observation) register(ctx context.Context, conn mux.Conn) error {
	var mu sync.Mutex
	var first *Error
	reg, err := conn.Observe(ctx, o.path, func(m *pool.Message) {
		code := Code(m.Code())
		b, err := readAll(m)
		if err != nil {
			return
		}
		if !code.IsSuccess() {
			cf, _ := m.ContentFormat()
			mu.Lock()
			first = o.c.responseError(code, Format(cf), b)
			mu.Unlock()
			return
		}
		seq, _ := m.Observe()
		o.fn(Notification{Seq: seq, Body: b, dec: o.c.dec})
	})
	if err != nil {
		return fmt.Errorf("transport: observe %s: %w", o.path, err)
	}
	mu.Lock()
	ferr := first
	mu.Unlock()
	if ferr != nil {
		reg.Cancel(ctx)
		return ferr
	}
	o.mu.Lock()
	old := o.reg
	o.reg = reg
	o.mu.Unlock()
	if old != nil {
		// The registration it replaces is gone with its connection or
		// session; this only releases the client's side of it.
		old.Cancel(ctx)
	}
	return nil
}
