package transport

import (
	"container/list"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plgd-dev/go-coap/v3/mux"

	"github.com/sensible-iot/sensible/device/identity"
)

// session is the per-connection state: who authenticated on it, over
// which transport, and the block-wise uploads it has in progress.
type session struct {
	scheme string
	conn   conn
	// lastSeen is when the peer last sent anything (Unix nanoseconds).
	lastSeen atomic.Int64
	// drops counts the datagrams dropped over the rate limit.
	drops atomic.Int32

	mu        sync.Mutex
	device    identity.ID
	key       string // the rate limiter's key; empty until first needed
	leave     func() // gives back the admission slot; nil if none
	transfers map[string]*transfer
	handoffs  []*handoff // reassembled bodies not yet answered
	closed    bool
	// unauth links the session into the unauthenticated-UDP table.
	unauth, unauthPrefix *list.Element
	prefix               netip.Prefix
}

type sessionKey struct{}

func sessionOf(c mux.Conn) *session {
	if s, ok := c.Context().Value(sessionKey{}).(*session); ok {
		return s
	}
	return &session{}
}

func (ss *session) get() identity.ID {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.device
}

// limitKey returns the key the rate limiter counts the peer's requests
// under: its device once authenticated, its IP address before. It is
// worked out once per session and per authentication, not per request.
func (ss *session) limitKey() (key string, authenticated bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.key == "" {
		if ss.device.IsZero() {
			ss.key = ipOf(ss.conn.RemoteAddr())
		} else {
			ss.key = ss.device.String()
		}
	}
	return ss.key, !ss.device.IsZero()
}

func (ss *session) touch(now time.Time) { ss.lastSeen.Store(now.UnixNano()) }

// unauthPeers holds the plain-UDP peers that have not authenticated: a
// separate, small quota with a short lifetime, so that one datagram from
// each of many (spoofable) source addresses cannot take the slots of
// devices. When the table or a source prefix's share of it is full, the
// peer silent longest (of that prefix, when its share is full) is
// forgotten; its next datagram makes it a new peer.
type unauthPeers struct {
	max, perPrefix int
	idle           time.Duration
	// keep reports whether a quiet peer is kept anyway: one that observes
	// a resource, whose liveness the confirmable notifications check.
	keep func(*session) bool

	mu       sync.Mutex
	lru      *list.List // *session, most recently seen first
	byPrefix map[netip.Prefix]*list.List
}

func newUnauthPeers(max, perPrefix int, idle time.Duration) *unauthPeers {
	return &unauthPeers{max: max, perPrefix: min(perPrefix, max), idle: idle,
		lru: list.New(), byPrefix: make(map[netip.Prefix]*list.List)}
}

// add admits ss, returning the sessions evicted to make room; the caller
// closes them (outside any lock).
func (u *unauthPeers) add(ss *session) (evicted []*session) {
	ss.prefix = prefixOf(ss.conn.RemoteAddr())
	u.mu.Lock()
	defer u.mu.Unlock()
	pl := u.byPrefix[ss.prefix]
	if pl != nil && pl.Len() >= u.perPrefix {
		evicted = append(evicted, u.removeLocked(pl.Back().Value.(*session)))
	}
	for u.lru.Len() >= u.max {
		evicted = append(evicted, u.removeLocked(u.lru.Back().Value.(*session)))
	}
	if pl == nil {
		pl = list.New()
		u.byPrefix[ss.prefix] = pl
	}
	ss.unauth = u.lru.PushFront(ss)
	ss.unauthPrefix = pl.PushFront(ss)
	return evicted
}

// seen moves ss to the front: it is the most recently active.
func (u *unauthPeers) seen(ss *session) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if ss.unauth == nil {
		return
	}
	u.lru.MoveToFront(ss.unauth)
	u.byPrefix[ss.prefix].MoveToFront(ss.unauthPrefix)
}

// remove takes ss out of the table, if it is there.
func (u *unauthPeers) remove(ss *session) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.removeLocked(ss)
}

func (u *unauthPeers) removeLocked(ss *session) *session {
	if ss.unauth == nil {
		return ss
	}
	u.lru.Remove(ss.unauth)
	pl := u.byPrefix[ss.prefix]
	pl.Remove(ss.unauthPrefix)
	if pl.Len() == 0 {
		delete(u.byPrefix, ss.prefix)
	}
	ss.unauth, ss.unauthPrefix = nil, nil
	return ss
}

// expired removes and returns the peers silent for longer than the idle
// time.
func (u *unauthPeers) expired(now time.Time) (out []*session) {
	cut := now.Add(-u.idle).UnixNano()
	u.mu.Lock()
	defer u.mu.Unlock()
	for e := u.lru.Back(); e != nil; {
		ss := e.Value.(*session)
		if ss.lastSeen.Load() > cut {
			break
		}
		e = e.Prev()
		if u.keep != nil && u.keep(ss) {
			continue
		}
		out = append(out, u.removeLocked(ss))
	}
	return out
}

func (u *unauthPeers) len() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.lru.Len()
}

// devices indexes the live sessions of each authenticated device, so that
// Server.Revoke can close them all at once.
type devices struct {
	mu sync.Mutex
	m  map[identity.ID]map[*session]struct{}
}

func (d *devices) add(id identity.ID, ss *session) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil {
		d.m = make(map[identity.ID]map[*session]struct{})
	}
	if d.m[id] == nil {
		d.m[id] = make(map[*session]struct{})
	}
	d.m[id][ss] = struct{}{}
}

func (d *devices) remove(id identity.ID, ss *session) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.m[id], ss)
	if len(d.m[id]) == 0 {
		delete(d.m, id)
	}
}

func (d *devices) sessions(id identity.ID) []*session {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]*session, 0, len(d.m[id]))
	for ss := range d.m[id] {
		out = append(out, ss)
	}
	return out
}
