package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	coapnet "github.com/plgd-dev/go-coap/v3/net"
	tcpserver "github.com/plgd-dev/go-coap/v3/tcp/server"

	"github.com/sensible-iot/sensible/device/identity"
)

// This file puts a listener of our own in front of go-coap's TCP server,
// for coap+tcp:// and coaps+tcp://. Everything a connection can cost the
// server is decided here, before go-coap sees the connection:
//
//   - admission (MaxConnections, MaxConnectionsPerPrefix) as soon as the
//     socket is accepted; a refused socket is reset, with no TLS;
//   - for TLS, a handshake slot (MaxHandshakes) and a handshake-rate token
//     before any cryptography, then the handshake itself, bounded by
//     HandshakeTimeout, in goroutines the listener owns;
//   - a deadline for the first CoAP message (RFC 8323 wants a CSM first),
//     so a connection that sends nothing is closed after HandshakeTimeout
//     rather than IdleTimeout;
//   - the in-flight byte budget (MaxInFlightBytes): the connection follows
//     the RFC 8323 framing of what it reads and, before handing go-coap
//     the body of a message, reserves the message's length, blocking the
//     read (and so the sender) until the budget has room.
//
// Accept errors (EMFILE, ENFILE, ECONNABORTED) are retried with a backoff
// instead of go-coap's loop, which retries at once.

var errTooManyHandshakes = errors.New("transport: handshake limit reached")

// Accept-error backoff, as net/http does it.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// budgetFloor is the message length below which a message is read without
// a reservation from the in-flight budget: go-coap reads 2 KiB at a time
// anyway, and a reservation would cost more than it protects.
const budgetFloor = 1024

// budget is the in-flight byte budget a connection reserves from;
// *semaphore.Weighted implements it.
type budget interface {
	Acquire(ctx context.Context, n int64) error
	TryAcquire(n int64) bool
	Release(n int64)
}

// connPolicy is what the connections of one listener share.
type connPolicy struct {
	budget     budget
	budgetSize int64         // the budget's capacity: a larger message can never fit
	maxMessage uint64        // go-coap refuses larger messages itself
	wait       time.Duration // bounds waiting for the budget (IdleTimeout)
	first      time.Duration // deadline for the first complete message; 0 for none
	log        *slog.Logger
}

// tcpListener accepts TCP connections for go-coap's TCP server (it is a
// tcpserver.Listener), admitting them, completing their TLS handshake and
// wrapping them in a tcpConn first. Close stops it, closes connections it
// has not handed over yet and waits for its goroutines.
type tcpListener struct {
	s      *Server
	inner  net.Listener
	tls    *tls.Config // nil for plain TCP
	policy *connPolicy
	ready  chan net.Conn // connections ready for go-coap
	done   chan struct{} // closed by stop
	ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once
	wg     sync.WaitGroup
}

var _ tcpserver.Listener = (*tcpListener)(nil)

// listenTCP listens on host for coap+tcp:// (tlsCfg nil) or coaps+tcp://.
func (s *Server) listenTCP(host string, tlsCfg *tls.Config) (*tcpListener, error) {
	addr, err := net.ResolveTCPAddr("tcp", host)
	if err != nil {
		return nil, fmt.Errorf("transport: listen address: %w", err)
	}
	ln, err := net.ListenTCP("tcp", addr)
	if err != nil {
		return nil, err
	}
	return newTCPListener(s, ln, tlsCfg), nil
}

// newTCPListener serves connections accepted from inner, which it owns
// from then on, and starts its accept loop.
func newTCPListener(s *Server, inner net.Listener, tlsCfg *tls.Config) *tcpListener {
	ctx, cancel := context.WithCancel(context.Background())
	l := &tcpListener{
		s: s, inner: inner, tls: tlsCfg,
		policy: &connPolicy{
			budget: s.inflight, budgetSize: s.cfg.MaxInFlightBytes,
			maxMessage: uint64(s.cfg.MaxMessageSize), wait: s.cfg.IdleTimeout,
			first: s.cfg.HandshakeTimeout, log: s.log,
		},
		ready: make(chan net.Conn), done: make(chan struct{}),
		ctx: ctx, cancel: cancel,
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

// Addr returns the address listened on.
func (l *tcpListener) Addr() net.Addr { return l.inner.Addr() }

// AcceptWithContext returns the next admitted connection (handshake
// done, for TLS). It fails only when ctx ends or the listener is closed.
func (l *tcpListener) AcceptWithContext(ctx context.Context) (net.Conn, error) {
	if l.closed() {
		return nil, coapnet.ErrListenerIsClosed
	}
	select {
	case c := <-l.ready:
		return c, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-l.done:
		return nil, coapnet.ErrListenerIsClosed
	}
}

// Close stops accepting, aborts handshakes in progress and waits for the
// listener's goroutines. Connections already handed to go-coap are
// go-coap's to close. It is idempotent.
func (l *tcpListener) Close() error {
	l.stop()
	l.wg.Wait()
	return nil
}

func (l *tcpListener) stop() {
	l.once.Do(func() {
		close(l.done)
		l.cancel()
		l.inner.Close()
	})
}

func (l *tcpListener) closed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// acceptLoop accepts until the listener is closed. An accept error is
// retried after a pause that doubles from 5 ms to 1 s and resets on the
// next success, so a process out of file descriptors does not spin.
func (l *tcpListener) acceptLoop() {
	defer l.wg.Done()
	var delay time.Duration
	for {
		raw, err := l.inner.Accept()
		if err != nil {
			if l.closed() || errors.Is(err, net.ErrClosed) {
				l.stop()
				return
			}
			if delay == 0 {
				delay = acceptBackoffMin
				l.s.log.Info("transport: accept failed; backing off", "addr", l.inner.Addr(), "err", err)
			} else if delay *= 2; delay > acceptBackoffMax {
				delay = acceptBackoffMax
			}
			l.s.log.Debug("transport: accept failed", "err", err, "retry", delay)
			t := time.NewTimer(delay)
			select {
			case <-l.done:
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		delay = 0
		l.admit(raw)
	}
}

// admit counts a new socket against the connection caps and, for TLS,
// against the handshake cap and rate, closing it at once if any refuses.
func (l *tcpListener) admit(raw net.Conn) {
	leave, err := l.s.enterTCP(raw.RemoteAddr())
	if err != nil {
		l.refuse(raw, err)
		return
	}
	if l.tls == nil {
		l.deliver(newTCPConn(raw, l.policy, leave))
		return
	}
	// The handshake slots are the server's, shared with DTLS, with a
	// share per source prefix, so one network cannot hold them all.
	release, err := l.s.slots.take(raw.RemoteAddr())
	if err != nil {
		leave()
		l.refuse(raw, errTooManyHandshakes)
		return
	}
	if !l.s.hs.allow("", time.Now()) {
		release()
		leave()
		l.refuse(raw, errHandshakeRate)
		return
	}
	l.wg.Add(1)
	go l.handshake(raw, leave, release)
}

// refuse resets a socket the server will not serve: no FIN handshake, no
// TIME_WAIT left on the server.
func (l *tcpListener) refuse(raw net.Conn, why error) {
	if tc, ok := raw.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	raw.Close()
	l.s.log.Debug("transport: connection refused", "peer", raw.RemoteAddr(), "err", why)
}

// handshake completes the TLS handshake of raw within HandshakeTimeout,
// holding one of the server's handshake slots, and hands the
// connection over.
func (l *tcpListener) handshake(raw net.Conn, leave, release func()) {
	defer l.wg.Done()
	_ = raw.SetDeadline(time.Now().Add(l.s.cfg.HandshakeTimeout))
	tc := tls.Server(raw, l.tls)
	err := tc.HandshakeContext(l.ctx)
	release()
	if err == nil {
		err = raw.SetDeadline(time.Time{})
	}
	if err != nil {
		raw.Close()
		leave()
		l.s.log.Debug("transport: TLS handshake failed", "peer", raw.RemoteAddr(), "err", err)
		return
	}
	c := newTCPConn(tc, l.policy, leave)
	if st := tc.ConnectionState(); len(st.PeerCertificates) > 0 {
		raw := make([][]byte, len(st.PeerCertificates))
		for i, cert := range st.PeerCertificates {
			raw[i] = cert.Raw
		}
		c.device, _ = l.s.deviceFromChain(raw)
	}
	l.deliver(c)
}

// deliver hands c to go-coap, or closes it if the listener closes first.
func (l *tcpListener) deliver(c *tcpConn) {
	select {
	case l.ready <- c:
	case <-l.done:
		c.Close()
	}
}

// enterTCP admits a TCP or TLS connection from addr against
// MaxConnections and MaxConnectionsPerPrefix; leave gives its slot back
// and may be called more than once.
func (s *Server) enterTCP(addr net.Addr) (leave func(), err error) {
	return s.adm.enter(addr)
}

// tcpConn is an admitted TCP connection, or the decrypted stream of a TLS
// one, as go-coap reads it. It follows the RFC 8323 framing of what is
// read, to reserve each message's length from the in-flight budget before
// go-coap buffers its body, and closes the connection if no message has
// arrived within the first-message deadline. Close gives its admission
// slot and its reservation back.
//
// Read is called by go-coap's one reading goroutine; Close may be called
// from any goroutine, any number of times.
type tcpConn struct {
	net.Conn
	policy *connPolicy
	leave  func()
	device identity.ID // from the TLS certificate chain, if any

	frames   frameScanner // Read's goroutine only
	seen     atomic.Bool  // a complete message has arrived
	deadline *time.Timer  // the first-message deadline

	mu       sync.Mutex
	held     int64              // bytes reserved for the message being read
	large    bool               // the message being read counts against the budget
	stopWait context.CancelFunc // ends a wait for the budget
	closed   bool
	once     sync.Once
}

var _ net.Conn = (*tcpConn)(nil)

func newTCPConn(inner net.Conn, p *connPolicy, leave func()) *tcpConn {
	c := &tcpConn{Conn: inner, policy: p, leave: leave}
	if p.first > 0 {
		c.deadline = time.AfterFunc(p.first, c.expire)
	}
	return c
}

// expire closes a connection that has not sent a complete message in time.
func (c *tcpConn) expire() {
	if !c.seen.Load() {
		c.policy.log.Debug("transport: no CoAP message in time", "peer", c.RemoteAddr())
		c.Close()
	}
}

// Read reads from the connection, reserving from the in-flight budget the
// length of each message whose header it reads before returning it.
func (c *tcpConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		if aerr := c.account(p[:n]); aerr != nil {
			return 0, aerr
		}
	}
	return n, err
}

// account follows the framing through b. At each message header it
// releases the previous message's reservation; the bytes of a large
// message are reserved as they arrive, waiting for room before go-coap
// gets them, so a peer holds budget only for what it has really sent (a
// header claiming a megabyte costs nothing until the megabyte comes).
// go-coap reads one message after another and, with no received-message
// queue (serveTCP), reads on only once the handler has taken the previous
// message: so beyond the budget a connection holds at most the message
// its handler is working on, and one read buffer.
func (c *tcpConn) account(b []byte) error {
	for len(b) > 0 {
		k, ev, size := c.frames.next(b)
		body := k
		b = b[k:]
		switch ev {
		case frameStart:
			c.release()
			c.large = size >= budgetFloor && size <= c.policy.maxMessage
			if c.large && int64(size) > c.policy.budgetSize {
				return errOverBudget
			}
			body = 0 // the prefix
		case frameBroken:
			c.large = false
		}
		if c.large && body > 0 {
			if err := c.reserve(int64(body)); err != nil {
				return err
			}
		}
		switch ev {
		case frameEnd:
			if !c.seen.Load() {
				c.seen.Store(true)
				if c.deadline != nil {
					c.deadline.Stop()
				}
			}
		}
	}
	return nil
}

// errOverBudget is the read error of a message that can never fit the
// in-flight budget.
var errOverBudget = errors.New("transport: message larger than the in-flight budget")

// reserve takes n bytes from the budget, waiting at most policy.wait, or
// until the connection is closed.
func (c *tcpConn) reserve(n int64) error {
	if n > c.policy.budgetSize {
		return errOverBudget
	}
	if !c.policy.budget.TryAcquire(n) {
		ctx, cancel := context.WithTimeout(context.Background(), c.policy.wait)
		defer cancel()
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return net.ErrClosed
		}
		c.stopWait = cancel
		c.mu.Unlock()
		err := c.policy.budget.Acquire(ctx, n)
		c.mu.Lock()
		c.stopWait = nil
		c.mu.Unlock()
		if err != nil {
			c.policy.log.Debug("transport: no room in the in-flight budget", "peer", c.RemoteAddr(), "bytes", n, "err", err)
			return fmt.Errorf("transport: waiting for the in-flight budget: %w", err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		c.policy.budget.Release(n)
		return net.ErrClosed
	}
	c.held += n
	return nil
}

// release gives the current reservation back.
func (c *tcpConn) release() {
	c.mu.Lock()
	n := c.held
	c.held = 0
	c.mu.Unlock()
	if n > 0 {
		c.policy.budget.Release(n)
	}
}

// Close closes the connection and gives its admission slot and
// reservation back.
func (c *tcpConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		if c.deadline != nil {
			c.deadline.Stop()
		}
		c.mu.Lock()
		c.closed = true
		if c.stopWait != nil {
			c.stopWait()
		}
		c.mu.Unlock()
		c.release()
		c.leave()
	})
	return err
}

// frameEvent is what frameScanner.next stopped at.
type frameEvent uint8

const (
	frameNone   frameEvent = iota // consumed the input
	frameStart                    // read a message's length: the size returned
	frameEnd                      // read a message's last byte
	frameBroken                   // the stream is not RFC 8323 framing
)

// frameScanner follows message boundaries in a CoAP-over-TCP byte stream
// (RFC 8323 section 3.2) without keeping the stream:
//
//	Len (4 bits) | TKL (4 bits) | Extended Length (0, 1, 2 or 4 bytes) |
//	Code | Token (TKL bytes) | Options and Payload (Len bytes)
//
// where Len 13, 14 and 15 mean an Extended Length of 1, 2 and 4 bytes
// plus 13, 269 and 65805. The zero value is ready at a message boundary.
// A TKL over 8 or a message longer than 2^32-1 bytes, which go-coap
// refuses too, breaks the stream: it is then passed over unread.
type frameScanner struct {
	prefix [5]byte // the Len/TKL byte and the Extended Length
	got    int     // prefix bytes read
	want   int     // prefix length, once the first byte is read
	left   uint64  // bytes of the current message after its prefix
	broken bool
}

// maxFrame is the longest message go-coap's coder accepts.
const maxFrame = 1<<32 - 1

// next reads b up to the next event and returns how many bytes it read,
// the event, and for frameStart the message's whole length, prefix,
// code and token included.
func (f *frameScanner) next(b []byte) (int, frameEvent, uint64) {
	if f.broken {
		return len(b), frameNone, 0
	}
	n := 0
	for n < len(b) {
		if f.left > 0 {
			if rest := uint64(len(b) - n); rest < f.left {
				f.left -= rest
				return len(b), frameNone, 0
			}
			n += int(f.left)
			f.left = 0
			return n, frameEnd, 0
		}
		c := b[n]
		n++
		if f.got == 0 {
			if c&0x0f > 8 {
				f.broken = true
				return n, frameBroken, 0
			}
			f.want = 1 + extLenSize(c>>4)
		}
		f.prefix[f.got] = c
		f.got++
		if f.got < f.want {
			continue
		}
		size := f.size()
		f.got = 0
		if size > maxFrame {
			f.broken = true
			return n, frameBroken, 0
		}
		f.left = size - uint64(f.want)
		return n, frameStart, size
	}
	return n, frameNone, 0
}

// extLenSize is the Extended Length size for a Len nibble.
func extLenSize(l byte) int {
	switch l {
	case 13:
		return 1
	case 14:
		return 2
	case 15:
		return 4
	}
	return 0
}

// size is the whole length of the message whose prefix is complete.
func (f *frameScanner) size() uint64 {
	p := f.prefix[:f.want]
	tkl := uint64(p[0] & 0x0f)
	var body uint64
	switch l := p[0] >> 4; l {
	case 13:
		body = 13 + uint64(p[1])
	case 14:
		body = 269 + (uint64(p[1])<<8 | uint64(p[2]))
	case 15:
		body = 65805 + (uint64(p[1])<<24 | uint64(p[2])<<16 | uint64(p[3])<<8 | uint64(p[4]))
	default:
		body = uint64(l)
	}
	return uint64(f.want) + 1 + tkl + body
}
