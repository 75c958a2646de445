package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/mux"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
)

// observer is one Observe registration: a connection, the token its
// notifications carry, and the last sequence number sent.
type observer struct {
	conn  mux.Conn
	path  string
	token string
	dev   identity.ID
	udp   bool
	every bool // every notification confirmable (Resource.ConfirmNotifications)

	mu      sync.Mutex
	seq     uint32
	sent    int       // notifications sent
	lastCON time.Time // when a confirmable one was last acknowledged
	pending bool      // a confirmable notification is in flight
	mids    [4]int32  // message IDs of the last notifications, for RST
	gone    bool
}

// observers indexes the registrations by path, by path and device, and by
// connection and token, so that registering, deregistering and notifying
// never scan the registrations of others.
type observers struct {
	mu     sync.Mutex
	byPath map[string]map[*observer]struct{}
	byDev  map[pathDev]map[*observer]struct{}
	byConn map[mux.Conn]*connObservers
}

type pathDev struct {
	path string
	dev  identity.ID
}

// connObservers are the registrations of one connection.
type connObservers struct {
	byToken map[string]*observer
	byMID   map[int32]*observer
	// acks wait for the answer to a confirmable notification: true for
	// an ACK, false for an RST.
	acks map[int32]chan bool
}

// Confirmable notifications (RFC 7641 section 4.5): over UDP and DTLS
// every confirmEvery-th notification, or the first after confirmAfter,
// asks for an acknowledgement, so that an observer that has gone away is
// dropped on its RST or when the retransmissions run out.
const (
	confirmEvery = 8
	confirmAfter = 30 * time.Second
)

// observe handles the Observe option of a request that got code: a
// registration on an observable resource records the observer and returns
// the sequence number of this first notification; a deregistration
// removes it. A connection past MaxObservations is answered without the
// Observe option, which tells it that it is not registered.
func (s *Server) observe(conn mux.Conn, r *mux.Message, code Code) (uint32, bool) {
	obs, err := r.Observe()
	if err != nil || Method(r.Code()) != GET {
		return 0, false
	}
	path, _ := r.Path()
	if len(path) == 0 || path[0] != '/' {
		path = "/" + path
	}
	token := string(r.Token())
	switch obs {
	case 0:
		s.mu.RLock()
		rt := s.routes[path]
		s.mu.RUnlock()
		if rt == nil || !rt.Observable || !code.IsSuccess() {
			return 0, false
		}
		const first = 1
		o := &observer{conn: conn, path: path, token: token, dev: sessionOf(conn).get(), seq: first, udp: isUDP(conn), every: rt.ConfirmNotifications, lastCON: time.Now()}
		if !s.obs.add(o, s.cfg.MaxObservations) {
			return 0, false
		}
		// The connection may have closed while the handler ran, and its
		// one close hook (detach) may have come and gone: a connection's
		// context ends before its close hooks run, so either the hook saw
		// this registration or this check sees the end.
		if conn.Context().Err() != nil {
			s.obs.remove(o)
			return 0, false
		}
		return first, true
	case 1:
		s.obs.removeToken(conn, token)
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

// add registers ob, replacing a registration of the same connection and
// token; it refuses one past max per connection.
func (o *observers) add(ob *observer, max int) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.byPath == nil {
		o.byPath = make(map[string]map[*observer]struct{})
		o.byDev = make(map[pathDev]map[*observer]struct{})
		o.byConn = make(map[mux.Conn]*connObservers)
	}
	co := o.byConn[ob.conn]
	if co == nil {
		co = &connObservers{byToken: make(map[string]*observer), byMID: make(map[int32]*observer), acks: make(map[int32]chan bool)}
		o.byConn[ob.conn] = co
	}
	if old := co.byToken[ob.token]; old != nil {
		o.removeLocked(old)
	} else if len(co.byToken) >= max {
		if len(co.byToken) == 0 {
			delete(o.byConn, ob.conn)
		}
		return false
	}
	co.byToken[ob.token] = ob
	if o.byPath[ob.path] == nil {
		o.byPath[ob.path] = make(map[*observer]struct{})
	}
	o.byPath[ob.path][ob] = struct{}{}
	k := pathDev{ob.path, ob.dev}
	if o.byDev[k] == nil {
		o.byDev[k] = make(map[*observer]struct{})
	}
	o.byDev[k][ob] = struct{}{}
	return true
}

// removeLocked takes ob out of every index; o.mu is held.
func (o *observers) removeLocked(ob *observer) {
	if co := o.byConn[ob.conn]; co != nil && co.byToken[ob.token] == ob {
		delete(co.byToken, ob.token)
		ob.mu.Lock()
		for _, mid := range ob.mids {
			if co.byMID[mid] == ob {
				delete(co.byMID, mid)
			}
		}
		ob.gone = true
		ob.mu.Unlock()
		if len(co.byToken) == 0 {
			delete(o.byConn, ob.conn)
		}
	}
	if m := o.byPath[ob.path]; m != nil {
		delete(m, ob)
		if len(m) == 0 {
			delete(o.byPath, ob.path)
		}
	}
	k := pathDev{ob.path, ob.dev}
	if m := o.byDev[k]; m != nil {
		delete(m, ob)
		if len(m) == 0 {
			delete(o.byDev, k)
		}
	}
}

func (o *observers) remove(ob *observer) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.removeLocked(ob)
}

func (o *observers) removeToken(conn mux.Conn, token string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if co := o.byConn[conn]; co != nil {
		if ob := co.byToken[token]; ob != nil {
			o.removeLocked(ob)
		}
	}
}

// dropConn removes every registration of a closed connection.
func (o *observers) dropConn(c conn) {
	mc, ok := c.(mux.Conn)
	if !ok {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if co := o.byConn[mc]; co != nil {
		for _, ob := range co.byToken {
			o.removeLocked(ob)
		}
	}
}

// answer takes an empty ACK or RST from a connection and reports whether
// it answered a notification. An RST means the observer has gone (RFC
// 7641 section 3.6).
func (o *observers) answer(c conn, mid int32, rst bool) bool {
	mc, ok := c.(mux.Conn)
	if !ok {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	co := o.byConn[mc]
	if co == nil {
		return false
	}
	matched := false
	if ch := co.acks[mid]; ch != nil {
		delete(co.acks, mid)
		ch <- !rst
		matched = true
	}
	if ob := co.byMID[mid]; ob != nil {
		matched = true
		if rst {
			o.removeLocked(ob)
		}
	}
	return matched
}

// await registers a wait for the answer to confirmable notification mid.
func (o *observers) await(ob *observer, mid int32) chan bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	co := o.byConn[ob.conn]
	if co == nil {
		return nil
	}
	ch := make(chan bool, 1)
	co.acks[mid] = ch
	return ch
}

func (o *observers) unawait(ob *observer, mid int32) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if co := o.byConn[ob.conn]; co != nil {
		delete(co.acks, mid)
	}
}

// sent records the message ID of a notification to ob.
func (o *observers) sent(ob *observer, mid int32) {
	o.mu.Lock()
	defer o.mu.Unlock()
	co := o.byConn[ob.conn]
	if co == nil || co.byToken[ob.token] != ob {
		return
	}
	ob.mu.Lock()
	defer ob.mu.Unlock()
	i := ob.sent % len(ob.mids)
	if old := ob.mids[i]; co.byMID[old] == ob {
		delete(co.byMID, old)
	}
	ob.mids[i] = mid
	co.byMID[mid] = ob
}

// list returns the observers of path, those of device dev only unless dev
// is zero.
func (o *observers) list(path string, dev identity.ID) []*observer {
	o.mu.Lock()
	defer o.mu.Unlock()
	m := o.byPath[path]
	if !dev.IsZero() {
		m = o.byDev[pathDev{path, dev}]
	}
	out := make([]*observer, 0, len(m))
	for ob := range m {
		out = append(out, ob)
	}
	return out
}

// has reports whether connection c has a registration.
func (o *observers) has(c conn) bool {
	mc, ok := c.(mux.Conn)
	if !ok {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.byConn[mc] != nil
}

func (o *observers) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, co := range o.byConn {
		n += len(co.byToken)
	}
	return n
}

// Notify sends v, encoded as CBOR, to the observers of path: those of
// device dev, or all of them when dev is the zero ID. It returns how many
// observers it reached. Over UDP and DTLS most notifications are
// non-confirmable, so a lost one is repaired by the next; each carries the
// whole current value, never a delta. Now and then one is confirmable,
// sent in the background: an observer that answers it with RST, or not
// at all, is dropped.
func (s *Server) Notify(ctx context.Context, path string, dev identity.ID, v any) (int, error) {
	body, err := codec.Marshal(v)
	if err != nil {
		return 0, err
	}
	n := 0
	var firstErr error
	for _, ob := range s.obs.list(path, dev) {
		if err := s.notify(ctx, ob, body); err != nil {
			if ctx.Err() == nil {
				// The connection failed: the observer is gone.
				s.obs.remove(ob)
			}
			if firstErr == nil {
				firstErr = fmt.Errorf("transport: notify %s: %w", ob.conn.RemoteAddr(), err)
			}
			continue
		}
		n++
	}
	return n, firstErr
}

// datagramConn is a UDP or DTLS connection: notifications are written
// straight to its session, with message IDs of ours, so that the ACK or
// RST that answers one can be matched to it.
type datagramConn interface {
	GetMessageID() int32
	Session() udpclient.Session
}

// CoAP's transmission parameters (RFC 7252 section 4.8) for confirmable
// notifications.
const (
	ackTimeout    = 2 * time.Second
	maxRetransmit = 4
)

func (s *Server) notify(ctx context.Context, ob *observer, body []byte) error {
	now := time.Now()
	ob.mu.Lock()
	if ob.gone {
		ob.mu.Unlock()
		return nil
	}
	ob.seq = (ob.seq + 1) & 0xffffff // 24-bit sequence numbers (RFC 7641 §4.4)
	seq := ob.seq
	ob.sent++
	confirm := ob.udp && !ob.pending && (ob.every || ob.sent%confirmEvery == 0 || now.Sub(ob.lastCON) >= confirmAfter)
	if confirm {
		ob.pending = true
	}
	ob.mu.Unlock()
	m := ob.conn.AcquireMessage(ctx)
	m.SetCode(codes.Content)
	m.SetToken(message.Token(ob.token))
	m.SetObserve(seq)
	m.SetContentFormat(message.AppCBOR)
	m.SetBody(bytes.NewReader(body))
	dc, ok := ob.conn.(datagramConn)
	if !ob.udp || !ok {
		defer ob.conn.ReleaseMessage(m)
		return ob.conn.WriteMessage(m)
	}
	mid := dc.GetMessageID()
	m.SetMessageID(mid)
	s.obs.sent(ob, mid)
	if !confirm {
		defer ob.conn.ReleaseMessage(m)
		m.SetType(message.NonConfirmable)
		return dc.Session().WriteMessage(m)
	}
	m.SetType(message.Confirmable)
	s.mu.RLock()
	closed := s.closed
	if !closed {
		s.wg.Add(1)
	}
	s.mu.RUnlock()
	if closed {
		ob.conn.ReleaseMessage(m)
		return ErrClosed
	}
	go func() {
		defer s.wg.Done()
		defer ob.conn.ReleaseMessage(m)
		acked := s.confirm(dc, ob, m, mid)
		ob.mu.Lock()
		ob.pending = false
		if acked {
			ob.lastCON = time.Now()
		}
		ob.mu.Unlock()
		if !acked {
			s.log.Debug("transport: observer dropped", "peer", ob.conn.RemoteAddr(), "path", ob.path)
			s.obs.remove(ob)
		}
	}()
	return nil
}

// confirm sends a confirmable notification, retransmitting it with
// exponential back-off, and reports whether it was acknowledged.
func (s *Server) confirm(dc datagramConn, ob *observer, m *pool.Message, mid int32) bool {
	ch := s.obs.await(ob, mid)
	if ch == nil {
		return false
	}
	defer s.obs.unawait(ob, mid)
	timeout := ackTimeout
	if s.ackTimeout > 0 {
		timeout = s.ackTimeout
	}
	timeout += time.Duration(rand.Int64N(int64(timeout / 2))) // ACK_RANDOM_FACTOR 1.5
	for range maxRetransmit + 1 {
		if err := dc.Session().WriteMessage(m); err != nil {
			return false
		}
		t := time.NewTimer(timeout)
		select {
		case ok := <-ch:
			t.Stop()
			return ok
		case <-t.C:
		case <-ob.conn.Done():
			t.Stop()
			return false
		case <-s.stop:
			t.Stop()
			return false
		}
		timeout *= 2
	}
	return false
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
