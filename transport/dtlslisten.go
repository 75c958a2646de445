package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	piondtls "github.com/pion/dtls/v3"
	"github.com/pion/logging"
	coapnet "github.com/plgd-dev/go-coap/v3/net"
)

// The coaps:// listener.
//
// A dtlsListener owns the UDP socket of a coaps:// listener, routes each
// datagram to its session (by connection ID, RFC 9146, else by source
// address), runs the handshakes, and hands go-coap only established
// sessions: go-coap's dtls server neither sees a half-open handshake nor
// starts a goroutine for one.
//
// # The cookie exchange and what it costs
//
// A DTLS server answers a first ClientHello with a HelloVerifyRequest
// carrying a cookie, and does the expensive work only for a ClientHello
// that echoes it: a spoofed source never receives the cookie. RFC 6347
// section 4.2.1 recommends a stateless cookie, computed from the client's
// address and ClientHello. This listener cannot issue one in front of
// pion/dtls (v3.1.15) and hand pion the ClientHello that echoes it:
//
//   - pion's server takes only a ClientHello with message_seq 0 as the
//     first message of a handshake (flight0Parse; its fragment buffer
//     hands messages on in message_seq order from 0), while a client that
//     has had a HelloVerifyRequest sends the ClientHello that echoes the
//     cookie with message_seq 1 and expects the ServerHello at 1.
//   - With InsecureSkipVerifyHello pion skips its own cookie round but
//     still waits for message_seq 0, and answers a ClientHello with a
//     ServerHello at message_seq 0, which such a client drops as already
//     seen.
//   - Without it, pion checks the echoed cookie against the one it drew
//     itself (crypto/rand, in flight0Generate); nothing configures it.
//   - Rewriting message_seq or the cookie on the way does not help: both
//     are in the handshake transcript, which the Finished messages (sent
//     encrypted) and the extended master secret are computed over, so the
//     two ends would disagree.
//
// TestDTLSPionCookieState checks the first two against the pion in use.
// So the cookie is pion's, drawn per connection, and the listener keeps
// the state before it small, bounded per network and short-lived, and
// spends nothing that costs until the cookie comes back:
//
//   - A first ClientHello (epoch 0, no cookie) from an unknown address
//     gets a pion connection that sends the HelloVerifyRequest, and
//     nothing else: no rate-limit token, no handshake slot, no session
//     slot, no cryptography (pion generates keys only after the cookie).
//     At most maxFresh of these wait at once, and those from one source
//     prefix (an IPv4 /24, an IPv6 /56) at most 1/waitShare of them. A new
//     one from a prefix whose share is full drops that prefix's oldest;
//     otherwise, when all maxFresh wait, the oldest of all is dropped (a
//     real device answers the cookie within a round trip, a spoofed one
//     never does). A dropped one counts against its prefix until its
//     goroutine has ended, and while a share of them are ending the
//     prefix's new first ClientHellos are ignored (the client
//     retransmits), so that one network cannot take every goroutine. Each
//     lives at most the handshake timeout. No connection is made at all
//     while the server is full.
//   - The hook is a wrapper PacketConn under pion ([dtlsPeer]): on the way
//     out it reads the cookie from pion's HelloVerifyRequest, on the way in
//     it recognises the ClientHello that echoes that cookie. Only then,
//     before pion sees that datagram, are the costly things taken, in
//     this order: a handshake slot ([handshakeSlots]), a session slot
//     (the server's admission: MaxConnections and the per-prefix cap, held
//     for the session's life) and a handshake-rate token. If any is
//     refused the datagram is dropped and the connection stays waiting for
//     the cookie: the client retransmits it, and may get in then. A
//     ClientHello with a wrong cookie, or with a cookie whose connection
//     is gone, is dropped before anything is spent.
//   - The handshake runs in the listener, one goroutine per connection
//     (bounded by maxFresh, a share more for dropped ones winding down,
//     and the handshake slots), within the handshake timeout from the
//     first ClientHello; only an established session is returned by
//     AcceptWithContext.
//   - A first ClientHello from the address of a live session (a device
//     that restarted and kept its port) gets a connection of its own that
//     leaves the session alone until the cookie comes back, then ends it
//     and takes the address over (RFC 6347 section 4.2.8).
//
// # Caveats
//
// A connection waiting for its cookie costs about 35 KB and four
// goroutines (ours, and pion's handshake, read and context loops),
// measured with pion v3.1.15: 70 MB at the default MaxCookieWaits of
// 2048. A spoofed flood from a few networks only churns their own shares,
// and a device elsewhere waits for its cookie as long as it needs. A flood
// from addresses spread over many networks, which a spoofer may choose
// freely, churns the whole table: at R first ClientHellos a second a
// device's connection is dropped as the oldest about maxFresh/R seconds
// after its first ClientHello (0.4 s at the default and 5,000 a second),
// and a device whose cookie comes back later starts again when its
// handshake times out. Only a stateless cookie, which pion does not
// accept, would remove that window.
type dtlsListener struct {
	cfg  dtlsListenConfig
	sock *net.UDPConn

	accepted chan *piondtls.Conn
	// workers holds a token per handshake goroutine: at most maxFresh
	// waiting for their cookie, one per handshake slot, and a share of
	// maxFresh for dropped connections still winding down; past that a
	// first ClientHello is ignored (the client retransmits).
	workers chan struct{}
	done    chan struct{}
	stop    sync.Once
	wg      sync.WaitGroup

	mu     sync.Mutex
	closed bool
	byAddr map[netip.AddrPort]*dtlsPeer
	// renew holds a new handshake from an address that has a session (a
	// device that restarted and kept its port), until its cookie comes
	// back and it takes the address over (RFC 6347 section 4.2.8).
	renew map[netip.AddrPort]*dtlsPeer
	byCID map[dtlsCID]*dtlsPeer
	// waiting lists the connections waiting for their cookie, oldest
	// first; waitBy the same by source prefix.
	waiting waitList
	waitBy  map[netip.Prefix]*waitList
}

// dtlsListenConfig is what a dtlsListener takes from its server.
type dtlsListenConfig struct {
	// opts configure every pion server connection (suites, PSK or
	// certificates); the listener adds the connection ID generator.
	opts []piondtls.ServerOption
	// timeout bounds a handshake, from the first ClientHello to the last
	// message.
	timeout time.Duration
	// maxFresh caps connections waiting for their cookie, and
	// maxFresh/waitShare those from one source prefix.
	maxFresh int
	// slots caps handshakes past the cookie, shared with TLS.
	slots *handshakeSlots
	// adm admits sessions (MaxConnections, per-prefix cap).
	adm *admission
	// rate is the handshake rate limiter; nil allows everything.
	rate *limiter
	log  *slog.Logger
}

// waitShare: one source prefix may hold 1/waitShare of the connections
// waiting for their cookie.
const waitShare = 8

// dtlsCIDLen is the length of the connection IDs the server issues; a fixed
// length is what lets the listener find one in a datagram.
const dtlsCIDLen = 8

type dtlsCID [dtlsCIDLen]byte

const (
	// dtlsReadSize is the largest datagram read: any UDP payload.
	dtlsReadSize = 1 << 16
	// dtlsMaxDatagram is the largest datagram passed on: pion reads into
	// 8 KiB buffers, and a truncated datagram would fail the session's
	// next Read rather than be discarded.
	dtlsMaxDatagram = 8192
	// dtlsQueue is how many datagrams wait for one connection's reader
	// before more are dropped (a certificate flight is a few).
	dtlsQueue = 16
	// dtlsAcceptQueue is how many established sessions wait for go-coap.
	dtlsAcceptQueue = 64
)

// DTLS 1.2 wire constants (RFC 6347, RFC 9146).
const (
	recordHeaderLen     = 13 // type, version, epoch, sequence number, length
	handshakeHeaderLen  = 12 // type, length, message_seq, fragment offset and length
	contentHandshake    = 22
	contentCID          = 25 // tls12_cid
	typeClientHello     = 1
	typeHelloVerifyReq  = 3
	helloRandomLen      = 32
	protocolVersionSize = 2
)

// quietPion is a pion LoggerFactory whose loggers discard everything:
// pion asks for one per connection, and this one costs nothing.
type quietPion struct{}

var _ logging.LoggerFactory = quietPion{}

func (quietPion) NewLogger(string) logging.LeveledLogger { return quietPion{} }

func (quietPion) Trace(string)          {}
func (quietPion) Tracef(string, ...any) {}
func (quietPion) Debug(string)          {}
func (quietPion) Debugf(string, ...any) {}
func (quietPion) Info(string)           {}
func (quietPion) Infof(string, ...any)  {}
func (quietPion) Warn(string)           {}
func (quietPion) Warnf(string, ...any)  {}
func (quietPion) Error(string)          {}
func (quietPion) Errorf(string, ...any) {}

var (
	errHandshakesFull = errors.New("transport: too many handshakes in progress")
	// errPSKIdentity refuses a PSK identity that spells a device ID
	// otherwise than its canonical form.
	errPSKIdentity = errors.New("transport: PSK identity is not a device ID in canonical form")
)

// handshakeSlots caps the DTLS and TLS handshakes in progress, in all and
// per source prefix (half of them), so that neither a flood nor one network
// can hold every slot. A slot is taken once the peer has shown that it
// receives what is sent to its address (the DTLS cookie came back, the TCP
// connection is up) and before any cryptography, and released when the
// handshake ends either way. It is safe for concurrent use.
type handshakeSlots struct {
	a *admission
}

// handshakeShare: one source prefix may hold 1/handshakeShare of the
// handshake slots, so that it takes that many networks to hold them all.
const handshakeShare = 8

func newHandshakeSlots(n int) *handshakeSlots {
	return &handshakeSlots{a: newAdmission(n, max(1, n/handshakeShare))}
}

// take reserves a slot for a handshake from addr, or returns
// errHandshakesFull. release may be called more than once.
func (h *handshakeSlots) take(addr net.Addr) (release func(), err error) {
	release, err = h.a.enter(addr)
	if err != nil {
		return nil, errHandshakesFull
	}
	return release, nil
}

// inUse returns the number of handshakes holding a slot.
func (h *handshakeSlots) inUse() int { return h.a.live() }

// listenDTLS opens a coaps:// listener on host.
func listenDTLS(host string, cfg dtlsListenConfig) (*dtlsListener, error) {
	addr, err := net.ResolveUDPAddr("udp", host)
	if err != nil {
		return nil, err
	}
	sock, err := net.ListenUDP("udp", addr)
	if err != nil {
		return nil, err
	}
	_ = sock.SetReadBuffer(udpReadBuffer) // best effort: the kernel may cap it
	l := &dtlsListener{
		cfg:      cfg,
		sock:     sock,
		accepted: make(chan *piondtls.Conn, dtlsAcceptQueue),
		workers:  make(chan struct{}, cfg.maxFresh+max(1, cfg.maxFresh/waitShare)+cfg.slots.a.max),
		done:     make(chan struct{}),
		byAddr:   make(map[netip.AddrPort]*dtlsPeer),
		renew:    make(map[netip.AddrPort]*dtlsPeer),
		byCID:    make(map[dtlsCID]*dtlsPeer),
		waiting:  waitList{k: waitAll},
		waitBy:   make(map[netip.Prefix]*waitList),
	}
	l.wg.Add(1)
	go l.read()
	return l, nil
}

// AcceptWithContext returns the next established session.
func (l *dtlsListener) AcceptWithContext(ctx context.Context) (net.Conn, error) {
	select {
	case c := <-l.accepted:
		return c, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-l.done:
		return nil, coapnet.ErrListenerIsClosed
	}
}

// Addr returns the address listened on.
func (l *dtlsListener) Addr() net.Addr { return l.sock.LocalAddr() }

// Close stops the listener: it accepts no more sessions and ends every
// handshake in progress. Established sessions stay, so that go-coap, which
// closes them as it stops, can still send their close_notify alerts (a
// device then knows to handshake again); shutdown ends what remains. It is
// idempotent.
func (l *dtlsListener) Close() error {
	l.stop.Do(func() {
		l.mu.Lock()
		l.closed = true
		var peers []*dtlsPeer
		for _, p := range l.byAddr {
			if p.stage.Load() != stageEstablished {
				peers = append(peers, p)
			}
		}
		for _, p := range l.renew {
			peers = append(peers, p)
		}
		l.mu.Unlock()
		close(l.done)
		for _, p := range peers {
			p.Close()
		}
		for {
			select {
			case c := <-l.accepted:
				c.Close()
			default:
				return
			}
		}
	})
	return nil
}

// shutdown closes the listener, every session still on it and the socket,
// and waits for the listener's goroutines. It is idempotent.
func (l *dtlsListener) shutdown() {
	l.Close()
	l.mu.Lock()
	peers := make([]*dtlsPeer, 0, len(l.byAddr)+len(l.byCID)+len(l.renew))
	for _, p := range l.byAddr {
		peers = append(peers, p)
	}
	for _, p := range l.renew {
		peers = append(peers, p)
	}
	for _, p := range l.byCID {
		peers = append(peers, p)
	}
	l.mu.Unlock()
	for _, p := range peers {
		p.Close()
	}
	l.sock.Close()
	l.wg.Wait()
}

// read routes datagrams until the socket is closed.
func (l *dtlsListener) read() {
	defer l.wg.Done()
	buf := make([]byte, dtlsReadSize)
	for {
		n, from, err := l.sock.ReadFromUDPAddrPort(buf)
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			l.cfg.log.Debug("transport: dtls read", "err", err)
			time.Sleep(10 * time.Millisecond) // a transient error, such as ENOBUFS
			continue
		}
		l.route(buf[:n], from)
	}
}

// route hands one datagram to its connection, making one for a first
// ClientHello.
func (l *dtlsListener) route(b []byte, from netip.AddrPort) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || len(b) < recordHeaderLen || len(b) > dtlsMaxDatagram {
		return
	}
	var p *dtlsPeer
	if b[0] == contentCID && len(b) >= recordHeaderLen+dtlsCIDLen {
		p = l.byCID[dtlsCID(b[11:11+dtlsCIDLen])]
	}
	if p == nil {
		if p = l.byAddr[from]; p != nil && p.stage.Load() != stageFresh {
			// A ClientHello on an address with a session: the start of
			// a new one, which does not disturb the old until its
			// cookie comes back. An echoed cookie without a new
			// handshake is the old one's retransmission.
			if cookie, hello, ok := helloCookie(b); hello && ok {
				if q := l.renew[from]; q != nil {
					p = q
				} else if len(cookie) == 0 {
					p = nil
				}
			}
		}
	}
	switch {
	case p == nil:
		if p = l.open(b, from); p == nil {
			return
		}
	case p.stage.Load() == stageFresh:
		if !l.pass(p, b) {
			return
		}
	}
	p.push(b, from)
}

// open makes a connection for a first ClientHello from a new address, or
// returns nil. l.mu is held.
func (l *dtlsListener) open(b []byte, from netip.AddrPort) *dtlsPeer {
	cookie, hello, ok := helloCookie(b)
	if !hello || !ok || len(cookie) != 0 {
		// Not the start of a handshake, or an echoed cookie whose
		// connection is gone (dropped as the oldest, or timed out): the
		// client starts again when its own handshake times out.
		return nil
	}
	renewing := l.byAddr[from] != nil
	if !renewing && l.cfg.adm.full() {
		return nil // a renewal reuses its old session's slot
	}
	prefix, share := addrPrefix(from.Addr()), max(1, l.cfg.maxFresh/waitShare)
	switch own := l.waitBy[prefix]; {
	case own != nil && own.ending >= share:
		return nil // as many of its dropped ones still wind down: the client retransmits
	case own != nil && own.n >= share:
		l.evict(own.head) // the prefix's share is full: its own oldest goes
	case l.waiting.n >= l.cfg.maxFresh && l.waiting.head != nil:
		l.evict(l.waiting.head)
	}
	select {
	case l.workers <- struct{}{}:
	default:
		return nil // dropped ones still winding down: the client retransmits
	}
	p := &dtlsPeer{
		l:      l,
		addr:   from,
		raddr:  net.UDPAddrFromAddrPort(from),
		prefix: prefix,
		sig:    make(chan struct{}, 1),
	}
	if renewing {
		p.renewing = true
		l.renew[from] = p
	} else {
		l.byAddr[from] = p
	}
	l.list(p)
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.timeout)
	l.wg.Add(1)
	go l.handshake(ctx, cancel, p)
	return p
}

// pass reports whether a datagram may reach a connection still waiting
// for its cookie. The ClientHello that echoes the cookie is where the
// costly things are taken; l.mu is held.
func (l *dtlsListener) pass(p *dtlsPeer, b []byte) bool {
	cookie, hello, ok := helloCookie(b)
	if !hello {
		return true // an alert, or a fragment pion ignores before the cookie
	}
	if !ok {
		return false // a ClientHello whose first fragment hides its cookie
	}
	if len(cookie) == 0 {
		return true // a retransmitted first ClientHello: pion answers it again
	}
	if len(p.cookie) == 0 || subtle.ConstantTimeCompare(cookie, p.cookie) != 1 {
		return false
	}
	if p.renewing {
		// The address answered: its old session is over.
		if old := l.byAddr[p.addr]; old != nil {
			l.end(old)
		}
		delete(l.renew, p.addr)
		p.renewing = false
		l.byAddr[p.addr] = p
	}
	release, err := l.cfg.slots.take(p.raddr)
	if err != nil {
		l.cfg.log.Debug("transport: DTLS handshake deferred", "peer", p.raddr, "err", err)
		return false
	}
	leave, err := l.cfg.adm.enter(p.raddr)
	if err != nil {
		release()
		l.cfg.log.Debug("transport: DTLS handshake deferred", "peer", p.raddr, "err", err)
		return false
	}
	if !l.cfg.rate.allow("", time.Now()) {
		leave()
		release()
		l.cfg.log.Debug("transport: DTLS handshake deferred", "peer", p.raddr, "err", errHandshakeRate)
		return false
	}
	p.release, p.leave = release, leave
	p.cookie = nil
	p.stage.Store(stageVerified)
	l.unlist(p)
	return true
}

// evict drops a connection that waits for its cookie; l.mu is held.
func (l *dtlsListener) evict(p *dtlsPeer) {
	l.forget(p)
	p.shut()
}

// end ends a session or handshake and gives back its slots at once; l.mu
// is held. pion and go-coap see its connection fail and close it.
func (l *dtlsListener) end(p *dtlsPeer) {
	l.forget(p)
	release, leave := p.release, p.leave
	p.release, p.leave = nil, nil
	if release != nil {
		release()
	}
	if leave != nil {
		leave()
	}
	p.shut()
}

// forget removes every route to p; l.mu is held. It may be called more
// than once.
func (l *dtlsListener) forget(p *dtlsPeer) {
	l.leaveAddr(p)
	if l.renew[p.addr] == p {
		delete(l.renew, p.addr)
	}
	for _, c := range p.cids {
		if l.byCID[c] == p {
			delete(l.byCID, c)
		}
	}
	l.unlist(p)
}

// list puts p on the lists of connections waiting for their cookie; l.mu
// is held.
func (l *dtlsListener) list(p *dtlsPeer) {
	own := l.waitBy[p.prefix]
	if own == nil {
		own = &waitList{k: waitOwn}
		l.waitBy[p.prefix] = own
	}
	l.waiting.push(p)
	own.push(p)
	p.listed = true
}

// unlist takes p off the lists of connections waiting for their cookie;
// l.mu is held. It may be called more than once. Unless its cookie came
// back, p counts against its prefix until its goroutine has ended
// (exited), so that one network's dropped connections still winding down
// cannot take every worker.
func (l *dtlsListener) unlist(p *dtlsPeer) {
	if !p.listed {
		return
	}
	p.listed = false
	l.waiting.remove(p)
	own := l.waitBy[p.prefix]
	own.remove(p)
	if p.stage.Load() == stageFresh {
		p.ending = true
		own.ending++
	}
	l.tidy(p.prefix, own)
}

// exited is called as p's goroutine ends.
func (l *dtlsListener) exited(p *dtlsPeer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.unlist(p)
	if p.ending {
		p.ending = false
		own := l.waitBy[p.prefix]
		own.ending--
		l.tidy(p.prefix, own)
	}
}

// tidy forgets a prefix that has nothing waiting and nothing winding
// down; l.mu is held.
func (l *dtlsListener) tidy(prefix netip.Prefix, own *waitList) {
	if own.n == 0 && own.ending == 0 {
		delete(l.waitBy, prefix)
	}
}

// leaveAddr stops routing p's first address to p; a new handshake waiting
// there takes it over. l.mu is held.
func (l *dtlsListener) leaveAddr(p *dtlsPeer) {
	if l.byAddr[p.addr] != p {
		return
	}
	delete(l.byAddr, p.addr)
	if q := l.renew[p.addr]; q != nil {
		delete(l.renew, p.addr)
		q.renewing = false
		l.byAddr[p.addr] = q
	}
}

// handshake runs p's handshake and hands the session to AcceptWithContext.
func (l *dtlsListener) handshake(ctx context.Context, cancel context.CancelFunc, p *dtlsPeer) {
	defer l.wg.Done()
	defer func() { <-l.workers }()
	defer l.exited(p)
	defer cancel()
	opts := append(l.cfg.opts[:len(l.cfg.opts):len(l.cfg.opts)], piondtls.WithConnectionIDGenerator(p.newCID))
	dc, err := piondtls.ServerWithOptions(p, p.raddr, opts...)
	if err != nil {
		p.Close()
		l.cfg.log.Debug("transport: DTLS connection", "err", err)
		return
	}
	if err := dc.HandshakeContext(ctx); err != nil {
		verified, ended := p.stage.Load() != stageFresh, p.closed.Load()
		dc.Close()
		p.Close()
		switch {
		case !verified: // no cookie back: a spoofed source, or a lost datagram
		case ended: // by the listener: closing, or a newer handshake from the address
		case errors.Is(err, context.DeadlineExceeded):
			l.cfg.log.Debug("transport: DTLS handshake timed out", "peer", p.raddr)
		default:
			l.cfg.log.Info("transport: DTLS handshake failed", "peer", p.raddr, "err", err)
		}
		return
	}
	p.stage.Store(stageEstablished)
	select {
	case l.accepted <- dc:
	case <-l.done:
		dc.Close()
	}
	p.endHandshake()
}

// A dtlsPeer is one DTLS connection's share of the socket: the
// net.PacketConn pion reads and writes it through. An idle one holds no
// buffer and blocks its reader on one channel.
type dtlsPeer struct {
	l      *dtlsListener
	addr   netip.AddrPort // the address it was opened from
	raddr  *net.UDPAddr
	prefix netip.Prefix // addr's source network
	stage  atomic.Int32
	closed atomic.Bool

	// Guarded by l.mu.
	cookie   []byte // pion's HelloVerifyRequest cookie, until echoed
	cids     []dtlsCID
	moved    bool // the address route was given up for a connection ID
	renewing bool // on l.renew
	listed   bool // on l.waiting and l.waitBy
	ending   bool // dropped while waiting, its goroutine not yet ended
	wait     [2]waitLink
	release  func() // handshake slot
	leave    func() // session slot

	qmu      sync.Mutex
	queue    []dtlsDatagram // datagrams for pion's reader; nil when empty
	deadline time.Time      // read deadline
	// sig wakes the reader: a datagram, a new deadline, or Close.
	sig chan struct{}
}

// Connection stages.
const (
	stageFresh       = iota // waiting for the cookie
	stageVerified           // cookie echoed: a handshake slot and a session slot held
	stageEstablished        // handshake done: the session slot held
)

type dtlsDatagram struct {
	b    []byte
	from net.Addr
}

var _ net.PacketConn = (*dtlsPeer)(nil)

// push queues a copy of a datagram for p's reader, dropping it if the
// queue is full; l.mu is held.
func (p *dtlsPeer) push(b []byte, from netip.AddrPort) {
	d := dtlsDatagram{b: bytes.Clone(b), from: p.raddr}
	if from != p.addr {
		d.from = net.UDPAddrFromAddrPort(from)
	}
	p.qmu.Lock()
	if len(p.queue) < dtlsQueue {
		p.queue = append(p.queue, d)
	}
	p.qmu.Unlock()
	p.wake()
}

func (p *dtlsPeer) wake() {
	select {
	case p.sig <- struct{}{}:
	default: // a wake-up is already pending
	}
}

// ReadFrom returns the next datagram for p.
func (p *dtlsPeer) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		p.qmu.Lock()
		if len(p.queue) > 0 {
			d := p.queue[0]
			p.queue[0] = dtlsDatagram{}
			if p.queue = p.queue[1:]; len(p.queue) == 0 {
				p.queue = nil
			}
			p.qmu.Unlock()
			return copy(b, d.b), d.from, nil
		}
		dl := p.deadline
		p.qmu.Unlock()
		if p.closed.Load() {
			return 0, nil, net.ErrClosed
		}
		if dl.IsZero() {
			<-p.sig
			continue
		}
		wait := time.Until(dl)
		if wait <= 0 {
			return 0, nil, os.ErrDeadlineExceeded
		}
		t := time.NewTimer(wait)
		select {
		case <-p.sig:
			t.Stop()
		case <-t.C:
			return 0, nil, os.ErrDeadlineExceeded
		}
	}
}

// WriteTo sends a datagram to addr. While p waits for its cookie it reads
// the cookie from pion's HelloVerifyRequest; once pion writes to another
// address than the first (a connection ID moved the session), the first
// address stops routing to p.
func (p *dtlsPeer) WriteTo(b []byte, addr net.Addr) (int, error) {
	if p.closed.Load() {
		return 0, net.ErrClosed
	}
	if p.stage.Load() == stageFresh {
		if c := verifyRequestCookie(b); c != nil {
			p.l.mu.Lock()
			p.cookie = bytes.Clone(c)
			p.l.mu.Unlock()
		}
	}
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, errors.New("transport: not a UDP address")
	}
	if ua != p.raddr && ua.AddrPort() != p.addr {
		p.l.mu.Lock()
		if !p.moved {
			p.l.leaveAddr(p)
		}
		p.moved = true
		p.l.mu.Unlock()
	}
	return p.l.sock.WriteTo(b, ua)
}

// newCID issues a connection ID for p and routes it to p.
func (p *dtlsPeer) newCID() []byte {
	var c dtlsCID
	l := p.l
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		_, _ = rand.Read(c[:])
		if _, taken := l.byCID[c]; !taken {
			break
		}
	}
	if !p.closed.Load() {
		l.byCID[c] = p
		p.cids = append(p.cids, c)
	}
	return bytes.Clone(c[:])
}

// endHandshake gives back p's handshake slot; the session slot stays
// until p closes.
func (p *dtlsPeer) endHandshake() {
	p.l.mu.Lock()
	release := p.release
	p.release = nil
	p.l.mu.Unlock()
	if release != nil {
		release()
	}
}

// Close ends p: its routes, its slots, and pion's reads. pion calls it
// when its connection closes; it may be called more than once.
func (p *dtlsPeer) Close() error {
	l := p.l
	l.mu.Lock()
	l.forget(p)
	release, leave := p.release, p.leave
	p.release, p.leave = nil, nil
	l.mu.Unlock()
	if release != nil {
		release()
	}
	if leave != nil {
		leave()
	}
	p.shut()
	return nil
}

// shut makes p's reads and writes fail.
func (p *dtlsPeer) shut() {
	if p.closed.CompareAndSwap(false, true) {
		p.qmu.Lock()
		p.queue = nil
		p.qmu.Unlock()
		p.wake()
	}
}

// LocalAddr returns the listener's address.
func (p *dtlsPeer) LocalAddr() net.Addr { return p.l.sock.LocalAddr() }

// SetDeadline sets the read deadline; writes do not block.
func (p *dtlsPeer) SetDeadline(t time.Time) error { return p.SetReadDeadline(t) }

// SetReadDeadline makes ReadFrom return os.ErrDeadlineExceeded at t (pion
// sets a past time to interrupt a read); the zero time clears it.
func (p *dtlsPeer) SetReadDeadline(t time.Time) error {
	p.qmu.Lock()
	p.deadline = t
	p.qmu.Unlock()
	p.wake()
	return nil
}

// SetWriteDeadline does nothing: a UDP write does not block.
func (p *dtlsPeer) SetWriteDeadline(time.Time) error { return nil }

// A waitList is a doubly linked list of connections waiting for their
// cookie, oldest first: all of them, or those of one source prefix. A
// connection is on both, through its links wait[waitAll] and
// wait[waitOwn].
type waitList struct {
	head, tail *dtlsPeer
	n          int
	k          int // which of a connection's links this list uses
	// ending counts a prefix's connections dropped while waiting whose
	// goroutines have not yet ended.
	ending int
}

// The links of a dtlsPeer.
const (
	waitAll = iota // on dtlsListener.waiting
	waitOwn        // on its prefix's list in dtlsListener.waitBy
)

type waitLink struct{ prev, next *dtlsPeer }

func (q *waitList) push(p *dtlsPeer) {
	p.wait[q.k] = waitLink{prev: q.tail}
	if q.tail != nil {
		q.tail.wait[q.k].next = p
	} else {
		q.head = p
	}
	q.tail = p
	q.n++
}

// remove takes p, which is on q, off q.
func (q *waitList) remove(p *dtlsPeer) {
	ln := p.wait[q.k]
	if ln.prev != nil {
		ln.prev.wait[q.k].next = ln.next
	} else {
		q.head = ln.next
	}
	if ln.next != nil {
		ln.next.wait[q.k].prev = ln.prev
	} else {
		q.tail = ln.prev
	}
	p.wait[q.k] = waitLink{}
	q.n--
}

// helloCookie looks in a datagram for the start of a ClientHello: a
// handshake record of epoch 0 whose fragment begins the message. hello
// reports whether there is one, cookie is the cookie it echoes (empty in a
// first ClientHello), and ok is false when the fragment is too short to
// show the cookie.
func helloCookie(b []byte) (cookie []byte, hello, ok bool) {
	for len(b) >= recordHeaderLen {
		typ, epoch := b[0], binary.BigEndian.Uint16(b[3:5])
		if typ == contentCID {
			return nil, false, false // protected records follow: no ClientHello
		}
		n := int(binary.BigEndian.Uint16(b[11:13]))
		if len(b) < recordHeaderLen+n {
			return nil, false, false
		}
		rec := b[recordHeaderLen : recordHeaderLen+n]
		b = b[recordHeaderLen+n:]
		if typ != contentHandshake || epoch != 0 || len(rec) < handshakeHeaderLen || rec[0] != typeClientHello {
			continue
		}
		if uint24(rec[6:9]) != 0 {
			continue // a later fragment
		}
		body := rec[handshakeHeaderLen:]
		if fl := uint24(rec[9:12]); fl < len(body) {
			body = body[:fl]
		}
		i := protocolVersionSize + helloRandomLen
		if len(body) < i+1 {
			return nil, true, false
		}
		i += 1 + int(body[i]) // session ID
		if len(body) < i+1 {
			return nil, true, false
		}
		cl := int(body[i])
		if len(body) < i+1+cl {
			return nil, true, false
		}
		return body[i+1 : i+1+cl], true, true
	}
	return nil, false, false
}

// verifyRequestCookie returns the cookie of a HelloVerifyRequest datagram,
// or nil.
func verifyRequestCookie(b []byte) []byte {
	if len(b) < recordHeaderLen+handshakeHeaderLen+protocolVersionSize+1 || b[0] != contentHandshake {
		return nil
	}
	n := int(binary.BigEndian.Uint16(b[11:13]))
	if len(b) < recordHeaderLen+n || n < handshakeHeaderLen+protocolVersionSize+1 {
		return nil
	}
	rec := b[recordHeaderLen : recordHeaderLen+n]
	if rec[0] != typeHelloVerifyReq {
		return nil
	}
	body := rec[handshakeHeaderLen:]
	cl := int(body[protocolVersionSize])
	if len(body) < protocolVersionSize+1+cl || cl == 0 {
		return nil
	}
	return body[protocolVersionSize+1 : protocolVersionSize+1+cl]
}

func uint24(b []byte) int { return int(b[0])<<16 | int(b[1])<<8 | int(b[2]) }
