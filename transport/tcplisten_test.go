package transport

// Tests of the TCP and TLS listener (tcplisten.go) against hostile peers,
// on real sockets on 127.0.0.0/8 with the test PKI. Each hostile test
// checks that the attack gets its documented answer, that a legitimate
// device is served during and after it, and that the server's goroutines
// and heap stay within a stated bound.
//
// They run CI-sized by default (a few hundred sockets, a few seconds
// each). For the sizes of the original measurements (3,000 silent
// connections, MaxConnections 1,000, 300 handshakes):
//
//	SENSIBLE_HOSTILE_FULL=1 go test -run 'TestHostileTCP' -timeout 10m ./transport
//
// The attacker binds its sockets to 127.0.2.1 and 127.0.3.1 (Linux routes
// all of 127/8 to lo): other /24 prefixes than the device's 127.0.0.1, so
// that the per-prefix caps leave it room.

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/tcp/coder"
	"golang.org/x/sync/semaphore"
)

// The attacker's source addresses.
const (
	attackerIP  = "127.0.2.1"
	attackerIP2 = "127.0.3.1"
)

func hostPort(t testing.TB, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	must(t, err)
	return u.Host
}

func dialerFrom(ip string) *net.Dialer {
	return &net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
}

const mib = 1 << 20

// eventually retries fn until it succeeds or d has passed.
func eventually(t *testing.T, d time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// legitPost has the fixture's device connect and post once, retrying for
// up to d: what a device does after an outage.
func legitPost(t *testing.T, f *fixture, d time.Duration, when string) {
	t.Helper()
	eventually(t, d, "device "+when+" the attack", func() error {
		c, err := dialAndPost(t, f)
		if err == nil {
			c.Close()
		}
		return err
	})
}

// flood is a set of attacking connections, each read by its own goroutine
// until the server closes it or the limit passes.
type flood struct {
	alive  atomic.Int64 // attacker goroutines running
	wg     sync.WaitGroup
	dialed sync.WaitGroup

	mu       sync.Mutex
	lived    []time.Duration // per connection, from dial to the server's close (0: reset during the dial)
	survived int             // connections the server had not closed at the limit
	failed   int             // dials that failed otherwise
}

// silentFlood opens n connections from ip to addr that send nothing (the
// server's CSM, on plain TCP, is read and dropped), at most 64 dials at a
// time.
func silentFlood(ip, addr string, n int, limit time.Duration) *flood {
	fl := &flood{}
	d := dialerFrom(ip)
	gate := make(chan struct{}, 64)
	fl.wg.Add(n)
	fl.dialed.Add(n)
	fl.alive.Add(int64(n))
	for range n {
		go func() {
			defer fl.wg.Done()
			defer fl.alive.Add(-1)
			gate <- struct{}{}
			c, err := d.Dial("tcp", addr)
			<-gate
			fl.dialed.Done()
			if err != nil {
				fl.mu.Lock()
				defer fl.mu.Unlock()
				if errors.Is(err, syscall.ECONNRESET) {
					// Refused before Dial looked at the socket.
					fl.lived = append(fl.lived, 0)
					return
				}
				fl.failed++
				return
			}
			defer c.Close()
			start := time.Now()
			_ = c.SetReadDeadline(start.Add(limit))
			_, err = io.Copy(io.Discard, c)
			lived := time.Since(start)
			fl.mu.Lock()
			defer fl.mu.Unlock()
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				fl.survived++
				return
			}
			fl.lived = append(fl.lived, lived)
		}()
	}
	return fl
}

// lifetimes returns, sorted, how long each connection the server closed
// stayed open.
func (fl *flood) lifetimes() []time.Duration {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return slices.Sorted(slices.Values(fl.lived))
}

// atLeast counts the lifetimes of d or more, in sorted ds.
func atLeast(ds []time.Duration, d time.Duration) int {
	i, _ := slices.BinarySearch(ds, d)
	return len(ds) - i
}

// checkHeld checks a silent flood: every socket closed by timeout + 1 s;
// between lo and hi of them held about timeout (admitted, they filled the
// cap), the rest reset without being held.
func checkHeld(t *testing.T, fl *flood, lived []time.Duration, long int, timeout time.Duration, lo, hi int) {
	t.Helper()
	if fl.survived > 0 || fl.failed > 0 || len(lived) == 0 || lived[len(lived)-1] > timeout+time.Second {
		t.Errorf("%d silent sockets outlived the deadline of %v, %d dials failed", fl.survived, timeout, fl.failed)
	}
	if long < lo || long > hi {
		t.Errorf("%d sockets held for the deadline, want %d..%d (the per-prefix cap)", long, lo, hi)
	}
}

// sampler watches the server's admitted connections and its goroutines
// (all goroutines less the attacker's and the sampler's own) until stopped.
type sampler struct {
	stop     chan struct{}
	done     chan struct{}
	maxLive  atomic.Int64
	maxGo    atomic.Int64
	baseline int
}

func sample(s *Server, fl *flood, baseline int) *sampler {
	sm := &sampler{stop: make(chan struct{}), done: make(chan struct{}), baseline: baseline}
	go func() {
		defer close(sm.done)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			if n := int64(s.adm.live()); n > sm.maxLive.Load() {
				sm.maxLive.Store(n)
			}
			g := int64(runtime.NumGoroutine()-baseline-1) - fl.alive.Load()
			if g > sm.maxGo.Load() {
				sm.maxGo.Store(g)
			}
			select {
			case <-sm.stop:
				return
			case <-t.C:
			}
		}
	}()
	return sm
}

func (sm *sampler) end() { close(sm.stop); <-sm.done }

// TestHostileTCPSilentTLS: connections that never send a ClientHello hold
// an admission slot and a handshake slot for HandshakeTimeout, then are
// closed; past the per-prefix cap they are reset at once. Admitted
// connections never exceed MaxConnections nor the per-prefix cap, and the
// device (another prefix) is served during and after the flood. Bounds:
// server goroutines at most 1 per admitted connection (its handshake
// worker) + 32; heap growth at most 16 KiB per attacking socket.
func TestHostileTCPSilentTLS(t *testing.T) {
	attack := scale(300, 3000)
	perPrefix := scale(100, 900)
	maxConns := scale(150, 1000)
	const timeout = 2 * time.Second
	f := newFixture(t, "coaps+tcp", ServerConfig{
		MaxConnections: maxConns, MaxConnectionsPerPrefix: perPrefix,
		// Handshake slots have a per-prefix share of an eighth: room
		// for the whole per-prefix connection cap.
		MaxHandshakes: handshakeShare * perPrefix, HandshakeTimeout: timeout,
		// This test is about silent sockets, not the handshake rate
		// (TestHostileTCPHandshakeRate).
		HandshakeRate: RateLimit{PerSecond: 1e5, Burst: 1e5},
	})
	checkSilentFlood(t, f, attack, perPrefix, maxConns, timeout, "TLS", "HandshakeTimeout", 1)
}

// TestHostileTCPSilentPlain: plain coap+tcp:// connections that send no
// CoAP message are closed after the first-message deadline
// (HandshakeTimeout), not the idle timeout (5 minutes here), and those
// past the per-prefix cap at once; the device is served throughout.
// Bounds: server goroutines at most 3 per admitted connection (go-coap's
// reader and handler loop, and the first-message timer when it fires) +
// 32; heap growth at most 16 KiB per attacking socket.
func TestHostileTCPSilentPlain(t *testing.T) {
	attack := scale(300, 3000)
	perPrefix := scale(100, 900)
	maxConns := scale(150, 1000)
	const timeout = 1500 * time.Millisecond
	f := newFixture(t, "coap+tcp", ServerConfig{
		MaxConnections: maxConns, MaxConnectionsPerPrefix: perPrefix, HandshakeTimeout: timeout,
	})
	checkSilentFlood(t, f, attack, perPrefix, maxConns, timeout, "TCP", "the first-message deadline", 3)
}

// checkSilentFlood opens attack silent sockets from attackerIP to f and
// checks them against the caps: those admitted (perPrefix at most) are
// held about timeout and closed, the rest reset at once; admitted
// connections never pass the caps (the device's own, at most two at a
// time, share them); the device is served during and after; server
// goroutines stay within goPerConn per admitted connection + 32 and the
// heap within 16 KiB per socket. kind and held name the sockets and the
// deadline in the log.
func checkSilentFlood(t *testing.T, f *fixture, attack, perPrefix, maxConns int, timeout time.Duration, kind, held string, goPerConn int) {
	t.Helper()
	heap0 := heapInUse()
	before := runtime.NumGoroutine()
	start := time.Now()
	fl := silentFlood(attackerIP, hostPort(t, f.url), attack, timeout+3*time.Second)
	sm := sample(f.srv, fl, before)
	fl.dialed.Wait()
	dialing := time.Since(start)
	growth := int64(heapInUse()) - int64(heap0)
	legitPost(t, f, timeout, "during")
	fl.wg.Wait()
	sm.end()
	legitPost(t, f, time.Second, "after")

	lived := fl.lifetimes()
	long := atLeast(lived, timeout*3/4)
	t.Logf("%d silent %s sockets dialed in %v: %d held about %s, %d reset (median %v after the dial), "+
		"%d never closed, %d dials failed; peak %d admitted, %d server goroutines, heap +%.1f MiB",
		attack, kind, dialing.Round(time.Millisecond), long, held, len(lived)-long, lived[(len(lived)-long)/2].Round(time.Millisecond),
		fl.survived, fl.failed, sm.maxLive.Load(), sm.maxGo.Load(), float64(growth)/mib)
	checkHeld(t, fl, lived, long, timeout, min(attack, perPrefix), perPrefix*(1+int(dialing/timeout)))
	if got := sm.maxLive.Load(); got > int64(min(maxConns, perPrefix+2)) {
		t.Errorf("%d connections admitted at once, over the caps (%d, %d per prefix)", got, maxConns, perPrefix)
	}
	if g, bound := sm.maxGo.Load(), int64(goPerConn*perPrefix+32); g > bound {
		t.Errorf("%d server goroutines during the flood, want at most %d", g, bound)
	}
	if growth > int64(attack)*16<<10 {
		t.Errorf("heap grew %.1f MiB for %d sockets, want at most 16 KiB each", float64(growth)/mib, attack)
	}
	waitGoroutines(t, before)
}

// isReset reports whether a client's handshake error is the server
// closing the socket (reset, EOF), not a TLS failure: the server did no
// handshake work.
func isReset(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// TestHostileTCPHandshakeRate: with HandshakeRate 1/s in bursts of 2, a
// burst of concurrent full TLS handshakes completes at most 2 + 1 per
// second elapsed (+1 for rounding); the rest are reset before the
// handshake (the client sees a reset or EOF, not a TLS alert). The device
// is served during (once a token is back) and after. Bound: the server's
// goroutines return to their count before the burst.
func TestHostileTCPHandshakeRate(t *testing.T) {
	burst := scale(50, 300)
	f := newFixture(t, "coaps+tcp", ServerConfig{HandshakeRate: RateLimit{PerSecond: 1, Burst: 2}})
	before := runtime.NumGoroutine()
	cfg := &tls.Config{RootCAs: f.pki.serverRoots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	addr := hostPort(t, f.url)
	var ok, reset atomic.Int32
	var mu sync.Mutex
	var other []error
	var wg sync.WaitGroup
	start := time.Now()
	for i := range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ip := attackerIP
			if i%2 == 1 {
				ip = attackerIP2
			}
			c, err := tls.DialWithDialer(dialerFrom(ip), "tcp", addr, cfg)
			switch {
			case err == nil:
				ok.Add(1)
				c.Close()
			case isReset(err):
				reset.Add(1)
			default:
				mu.Lock()
				other = append(other, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	legitPost(t, f, 3*time.Second, "during")
	time.Sleep(1100 * time.Millisecond) // a token back
	legitPost(t, f, 2*time.Second, "after")

	allowed := 2 + int(math.Ceil(elapsed.Seconds())) + 1
	t.Logf("%d concurrent TLS handshakes in %v: %d completed, %d reset before the handshake, %d other errors",
		burst, elapsed.Round(time.Millisecond), ok.Load(), reset.Load(), len(other))
	if n := int(ok.Load()); n < 2 || n > allowed {
		t.Errorf("%d handshakes completed, want 2..%d", n, allowed)
	}
	if len(other) > 0 {
		t.Errorf("%d handshakes failed otherwise than by a reset, e.g. %v", len(other), other[0])
	}
	waitGoroutines(t, before)
}

// TestHostileTCPMaxHandshakes: with MaxHandshakes 8, each source prefix
// may hold an eighth of the slots: silent TLS sockets from one network
// hold 1 for HandshakeTimeout and every other one from it is reset at
// once, before any TLS, while a device from elsewhere still completes its
// handshake. When eight networks hold all the slots, a device's handshake
// is refused too, and served as soon as HandshakeTimeout frees them.
// Bound: at most 1 server goroutine per slot (its handshake worker) + 32.
func TestHostileTCPMaxHandshakes(t *testing.T) {
	const slots, share = 8, 1
	attack := scale(20, 200)
	const timeout = 1500 * time.Millisecond
	f := newFixture(t, "coaps+tcp", ServerConfig{MaxHandshakes: slots, HandshakeTimeout: timeout})
	before := runtime.NumGoroutine()
	// Dial the first sockets one by one, so that they are the ones
	// holding the slots.
	fl := silentFlood(attackerIP, hostPort(t, f.url), share, timeout+3*time.Second)
	fl.dialed.Wait()
	time.Sleep(100 * time.Millisecond)
	rest := silentFlood(attackerIP, hostPort(t, f.url), attack-share, timeout+3*time.Second)
	rest.dialed.Wait()
	// One network holds its share: the device still gets a slot.
	legitPost(t, f, timeout/2, "while one network holds its share of the handshake slots")
	others := make([]*flood, 0, slots/share-1)
	for i := range slots/share - 1 {
		o := silentFlood(fmt.Sprintf("127.0.%d.1", 40+i), hostPort(t, f.url), share, timeout+3*time.Second)
		o.dialed.Wait()
		others = append(others, o)
	}
	time.Sleep(100 * time.Millisecond)
	alive := fl.alive.Load() + rest.alive.Load()
	for _, o := range others {
		alive += o.alive.Load()
	}
	g := runtime.NumGoroutine() - before - int(alive)
	if c, err := dialAndPost(t, f); err == nil {
		c.Close()
		t.Error("a device completed a handshake while the attackers held every slot")
	}
	start := time.Now()
	legitPost(t, f, timeout+time.Second, "after")
	waited := time.Since(start)
	fl.wg.Wait()
	rest.wg.Wait()
	lived := fl.lifetimes()
	survived := fl.survived
	for _, o := range others {
		o.wg.Wait()
		lived = append(lived, o.lifetimes()...)
		survived += o.survived
	}
	slices.Sort(lived)
	held, longest := atLeast(lived, timeout*3/4), lived[len(lived)-1]
	quick := len(rest.lifetimes()) - atLeast(rest.lifetimes(), timeout/4)
	t.Logf("%d silent TLS sockets: %d held a slot, %d of the rest reset at once; device served %v later; %d server goroutines",
		attack+slots-share, held, quick, waited.Round(time.Millisecond), g)
	if held != slots || survived > 0 || longest > timeout+time.Second {
		t.Errorf("%d sockets held a slot about HandshakeTimeout (longest %v), want %d", held, longest, slots)
	}
	if quick != attack-share {
		t.Errorf("%d sockets over the share reset at once, want %d", quick, attack-share)
	}
	if g > slots+32 {
		t.Errorf("%d server goroutines, want at most %d", g, slots+32)
	}
	waitGoroutines(t, before)
}

// TestHostileTCPPerPrefix: with MaxConnectionsPerPrefix 10, one /24 keeps
// 10 connections and the rest are reset at once; another /24 and the
// device still get in. Bound: the admitted count never passes the caps.
func TestHostileTCPPerPrefix(t *testing.T) {
	const perPrefix = 10
	attack := scale(30, 300)
	f := newFixture(t, "coap+tcp", ServerConfig{MaxConnectionsPerPrefix: perPrefix, MaxConnections: 100})
	addr := hostPort(t, f.url)
	keep := func(ip string, n int) (open int) {
		var conns []net.Conn
		for range n {
			c, err := dialerFrom(ip).Dial("tcp", addr)
			if err != nil {
				continue
			}
			conns = append(conns, c)
			_, _ = c.Write([]byte{0x00, byte(codes.CSM)}) // a CSM, so the first-message deadline is met
		}
		// A connection still open after 300 ms (past the server's CSM)
		// was admitted; a refused one is reset at once. (Reads run at
		// once: past its deadline a read fails without looking.)
		var kept atomic.Int32
		var wg sync.WaitGroup
		for _, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				_, err := io.Copy(io.Discard, c)
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					kept.Add(1)
				}
			}()
		}
		wg.Wait()
		open = int(kept.Load())
		t.Cleanup(func() {
			for _, c := range conns {
				c.Close()
			}
		})
		return open
	}
	if got := keep(attackerIP, attack); got != perPrefix {
		t.Errorf("%d connections from one /24 stayed open, want %d", got, perPrefix)
	}
	if got := keep(attackerIP2, perPrefix); got != perPrefix {
		t.Errorf("another /24 kept %d connections, want %d", got, perPrefix)
	}
	if n := f.srv.adm.live(); n != 2*perPrefix {
		t.Errorf("%d connections admitted, want %d", n, 2*perPrefix)
	}
	legitPost(t, f, time.Second, "during")
	t.Logf("%d connections from %s: %d kept; another /24 and the device served", attack, attackerIP, perPrefix)
}

// uploadHeader is a CoAP-over-TCP POST /v1/telemetry header (RFC 8323)
// announcing a payload of n bytes, up to the payload marker.
func uploadHeader(n int) []byte {
	opts := []byte{0xb2, 'v', '1', 0x09, 't', 'e', 'l', 'e', 'm', 'e', 't', 'r', 'y', 0x11, 60, 0xff}
	ext := uint32(len(opts) + n - 65805)
	h := []byte{0xf1, byte(ext >> 24), byte(ext >> 16), byte(ext >> 8), byte(ext), byte(codes.POST), 0x42}
	return append(h, opts...)
}

// slowUploads opens n connections that each send a CSM and a POST
// announcing claim bytes, then burst bytes of it at once (as far as the
// server reads) and then a byte every 200 ms, never finishing. It returns
// once each burst is written or has waited 1.5 s, and a function that
// closes the connections.
func slowUploads(t *testing.T, dial func() (net.Conn, error), n, claim, burst int) (closeAll func()) {
	t.Helper()
	body := bytes.Repeat([]byte{0x5a}, burst)
	var conns []net.Conn
	var sent sync.WaitGroup
	var wg sync.WaitGroup
	for range n {
		c, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		sent.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetWriteDeadline(time.Now().Add(1500 * time.Millisecond))
			_, err := c.Write(append(append([]byte{0x00, byte(codes.CSM)}, uploadHeader(claim)...), body...))
			sent.Done()
			if err != nil {
				return
			}
			_ = c.SetWriteDeadline(time.Time{})
			for {
				time.Sleep(200 * time.Millisecond)
				if _, err := c.Write([]byte{0x5a}); err != nil {
					return
				}
			}
		}()
	}
	sent.Wait()
	var once sync.Once
	closeAll = func() {
		once.Do(func() {
			for _, c := range conns {
				c.Close()
			}
			wg.Wait()
		})
	}
	t.Cleanup(closeAll)
	return closeAll
}

// TestHostileTCPInFlightBudget: 20 connections each announce a 900 KiB
// POST and send 850 KiB of it at once, then trickle. With
// MaxInFlightBytes 2 MiB only two bodies are read at a time; the others
// wait in their read, before go-coap buffers anything, so the heap grows
// by at most 2 x budget + 4 MiB (go-coap's buffer doubles as it fills),
// where without the budget (the control) it grows by about 20 x 850 KiB.
// A small request from the device is served meanwhile; once the attackers
// go, or the idle timeout closes their connections, the whole budget is
// back.
func TestHostileTCPInFlightBudget(t *testing.T) {
	const (
		budget = 2 * mib
		claim  = 900 << 10
		burst  = 850 << 10
		bound  = 2*budget + 4*mib
	)
	attack := scale(20, 200)
	run := func(t *testing.T, scheme string, inflight int64, idle time.Duration) (*fixture, int64, func()) {
		f := newFixture(t, scheme, ServerConfig{MaxInFlightBytes: inflight, IdleTimeout: idle})
		addr := hostPort(t, f.url)
		dial := func() (net.Conn, error) {
			c, err := dialerFrom(attackerIP).Dial("tcp", addr)
			if err != nil || scheme == "coap+tcp" {
				return c, err
			}
			tc := tls.Client(c, &tls.Config{RootCAs: f.pki.serverRoots, ServerName: "127.0.0.1"})
			if err := tc.Handshake(); err != nil {
				c.Close()
				return nil, err
			}
			return tc, nil
		}
		heap0 := heapInUse()
		closeAll := slowUploads(t, dial, attack, claim, burst)
		time.Sleep(300 * time.Millisecond) // let the server read what it will
		growth := int64(heapInUse()) - int64(heap0)
		return f, growth, closeAll
	}
	for _, scheme := range []string{"coap+tcp", "coaps+tcp"} {
		t.Run(scheme, func(t *testing.T) {
			const idle = 3 * time.Second
			before := runtime.NumGoroutine()
			f, growth, closeAll := run(t, scheme, budget, idle)
			g := runtime.NumGoroutine() - before - attack
			legitPost(t, f, 2*time.Second, "during")
			t.Logf("%d uploads of %d KiB announced, %d KiB sent: heap +%.1f MiB (bound %.0f MiB), %d server goroutines",
				attack, claim>>10, burst>>10, float64(growth)/mib, float64(bound)/mib, g)
			if growth > bound {
				t.Errorf("heap grew %.1f MiB with a budget of %d MiB, want at most %.0f MiB",
					float64(growth)/mib, budget/mib, float64(bound)/mib)
			}
			if g > 3*attack+32 {
				t.Errorf("%d server goroutines, want at most %d", g, 3*attack+32)
			}
			// Over TCP the attackers stay: the idle timeout closes those
			// waiting for the budget and those trickling alike (an
			// unfinished message is no activity). Over TLS they go: each
			// waiting connection in turn gets the budget, reads what was
			// sent and meets the end of the stream.
			if scheme == "coaps+tcp" {
				closeAll()
			}
			// A connection waiting for the budget goes when its wait
			// (IdleTimeout) ends: idle + wait + slack.
			eventually(t, 2*idle+3*time.Second, "budget back", func() error {
				if !f.srv.inflight.TryAcquire(budget) {
					return errors.New("part of the budget is still reserved")
				}
				f.srv.inflight.Release(budget)
				if n := f.srv.adm.live(); n != 0 {
					return fmt.Errorf("%d connections still admitted", n)
				}
				return nil
			})
			closeAll()
			f.srv.Close()
			waitGoroutines(t, before)
		})
	}
	t.Run("control without budget", func(t *testing.T) {
		f, growth, closeAll := run(t, "coap+tcp", DefaultMaxInFlightBytes, 0)
		t.Logf("without the budget: heap +%.1f MiB", float64(growth)/mib)
		if growth < bound {
			t.Errorf("without the budget the heap grew only %.1f MiB: the test does not tell a budget from none", float64(growth)/mib)
		}
		closeAll()
		f.srv.Close()
	})
}

// flakyListener is a net.Listener whose Accept follows a script, recording
// when it was called.
type flakyListener struct {
	script func(i int) (net.Conn, error)
	mu     sync.Mutex
	calls  []time.Time
	done   chan struct{}
	once   sync.Once
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	i := len(l.calls)
	l.calls = append(l.calls, time.Now())
	l.mu.Unlock()
	select {
	case <-l.done:
		return nil, net.ErrClosed
	default:
	}
	return l.script(i)
}

func (l *flakyListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *flakyListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

func (l *flakyListener) times() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.calls...)
}

var errEMFILE = &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}

// TestHostileTCPAcceptBackoff: an Accept that keeps failing (EMFILE) is
// retried after 5, 10, 20 ... ms up to 1 s, not in a loop: at most 10
// calls in 600 ms (go-coap's own loop made millions). The errors never
// reach go-coap; a success resets the pause; Close interrupts it.
func TestHostileTCPAcceptBackoff(t *testing.T) {
	before := runtime.NumGoroutine()
	s := NewServer(ServerConfig{})
	defer s.Close()

	t.Run("EMFILE", func(t *testing.T) {
		fake := &flakyListener{done: make(chan struct{}), script: func(int) (net.Conn, error) { return nil, errEMFILE }}
		l := newTCPListener(s, fake, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
		defer cancel()
		if c, err := l.AcceptWithContext(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("AcceptWithContext = %v, %v; want the context's end", c, err)
		}
		n := len(fake.times())
		start := time.Now()
		must(t, l.Close())
		closing := time.Since(start)
		t.Logf("%d Accept calls in 600 ms; Close took %v", n, closing)
		if n < 3 || n > 10 {
			t.Errorf("%d Accept calls in 600 ms, want 3..10", n)
		}
		if closing > 100*time.Millisecond {
			t.Errorf("Close waited %v for the backoff", closing)
		}
		if _, err := l.AcceptWithContext(context.Background()); err == nil {
			t.Error("AcceptWithContext on a closed listener succeeded")
		}
	})
	t.Run("reset on success", func(t *testing.T) {
		srv, cli := net.Pipe()
		defer cli.Close()
		fake := &flakyListener{done: make(chan struct{}), script: func(i int) (net.Conn, error) {
			if i == 6 {
				return srv, nil
			}
			return nil, errEMFILE
		}}
		l := newTCPListener(s, fake, nil)
		defer l.Close()
		c, err := l.AcceptWithContext(ctx5(t))
		must(t, err)
		defer c.Close()
		if _, ok := c.(*tcpConn); !ok {
			t.Fatalf("accepted a %T, want *tcpConn", c)
		}
		time.Sleep(100 * time.Millisecond)
		calls := fake.times()
		if len(calls) < 9 {
			t.Fatalf("%d Accept calls 100 ms after a success, want at least 9", len(calls))
		}
		// Before the success the pause had grown to 320 ms; after it,
		// the next failure waits 5 ms again.
		if gap := calls[8].Sub(calls[7]); gap > 50*time.Millisecond {
			t.Errorf("pause after a success and a failure is %v, want about 5 ms", gap)
		}
	})
	s.Close()
	waitGoroutines(t, before)
}

// TestHostileTCPAcceptEMFILE runs a server out of file descriptors (in a
// child process, with RLIMIT_NOFILE lowered): while a connection waits in
// the backlog and every accept fails with EMFILE, the process uses at most
// 20% of a core (go-coap's loop used 115%), and once descriptors are free
// again the waiting device is served.
func TestHostileTCPAcceptEMFILE(t *testing.T) {
	if os.Getenv("SENSIBLE_EMFILE_CHILD") == "1" {
		emfileChild(t)
		return
	}
	if runtime.GOOS != "linux" {
		t.Skip("needs Linux")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHostileTCPAcceptEMFILE$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "SENSIBLE_EMFILE_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	for _, line := range bytes.Split(out, []byte("\n")) {
		if bytes.Contains(line, []byte("tcplisten_test.go")) {
			t.Log(string(bytes.TrimSpace(line)))
		}
	}
}

func emfileChild(t *testing.T) {
	f := newFixture(t, "coap+tcp", ServerConfig{})
	addr := hostPort(t, f.url)
	var rl syscall.Rlimit
	must(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl))
	saved := rl
	rl.Cur = 256
	must(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl))
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &saved)
	var fill []*os.File
	defer func() {
		for _, f := range fill {
			f.Close()
		}
	}()
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatal(err)
			}
			break
		}
		fill = append(fill, f)
	}
	// One descriptor for the device's socket; the server has none left
	// to accept it with.
	fill[len(fill)-1].Close()
	fill = fill[:len(fill)-1]
	c, err := net.DialTimeout("tcp", addr, time.Second)
	must(t, err)
	defer c.Close()
	cpu := func() time.Duration {
		var ru syscall.Rusage
		must(t, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	time.Sleep(100 * time.Millisecond)
	if n := f.srv.adm.live(); n != 0 {
		t.Fatalf("%d connections accepted with no descriptor free", n)
	}
	c0, w0 := cpu(), time.Now()
	time.Sleep(time.Second)
	used, wall := cpu()-c0, time.Since(w0)
	t.Logf("out of descriptors: %v CPU in %v (%.0f%% of a core)", used.Round(time.Millisecond), wall.Round(time.Millisecond),
		100*used.Seconds()/wall.Seconds())
	if used > wall/5 {
		t.Errorf("the accept loop used %v CPU in %v out of descriptors", used, wall)
	}
	for _, f := range fill {
		f.Close()
	}
	fill = nil
	// The waiting connection is accepted within the longest pause (1 s):
	// the server's CSM arrives.
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 16)
	if n, err := c.Read(buf); err != nil || n < 2 || buf[1] != byte(codes.CSM) {
		t.Fatalf("no CSM from the server once descriptors were free: %x, %v", buf[:max(n, 0)], err)
	}
	legitPost(t, f, time.Second, "after")
}

// fakeStream is a net.Conn that reads a fixed stream in chunks of given
// sizes.
type fakeStream struct {
	net.Conn // nil: only Read, Close and RemoteAddr are used
	data     []byte
	cuts     []byte
}

func (s *fakeStream) Read(p []byte) (int, error) {
	if len(s.data) == 0 {
		return 0, io.EOF
	}
	n := len(p)
	if len(s.cuts) > 0 {
		n = min(n, int(s.cuts[0])+1)
		s.cuts = s.cuts[1:]
	}
	n = copy(p, s.data[:min(n, len(s.data))])
	s.data = s.data[n:]
	return n, nil
}

func (s *fakeStream) Close() error         { return nil }
func (s *fakeStream) RemoteAddr() net.Addr { return &net.TCPAddr{} }

// countingBudget is a budget that records what is reserved.
type countingBudget struct {
	t        *testing.T
	held     int64
	maxHeld  int64
	maxGrant int64
}

func (b *countingBudget) TryAcquire(n int64) bool {
	b.held += n
	b.maxHeld = max(b.maxHeld, b.held)
	b.maxGrant = max(b.maxGrant, n)
	return true
}

func (b *countingBudget) Acquire(_ context.Context, n int64) error { b.TryAcquire(n); return nil }

func (b *countingBudget) Release(n int64) {
	if b.held -= n; b.held < 0 {
		b.t.Fatalf("released %d bytes more than reserved", -b.held)
	}
}

// FuzzTCPFraming feeds a byte stream, cut into reads of arbitrary sizes,
// through the framing scanner and a tcpConn. It checks that they never
// panic; that the scanner finds the same message boundaries as go-coap's
// TCP coder, and stops following the stream where the coder refuses a
// header; that tcpConn passes the stream through unchanged, never
// reserves more than MaxMessageSize for a message nor holds more than one
// reservation, and gives everything back on Close. Seeds
// (testdata/fuzz/FuzzTCPFraming) cover each length form, signals, several
// messages in a read, truncation, a TKL over 8 and an overlong length.
func FuzzTCPFraming(f *testing.F) {
	const maxMessage = 1536
	f.Fuzz(func(t *testing.T, stream, cuts []byte) {
		// The boundaries according to go-coap.
		var want []int
		refused := -1
		for off := 0; off < len(stream); {
			var h coder.MessageHeader
			_, err := coder.DefaultCoder.DecodeHeader(stream[off:], &h)
			if errors.Is(err, message.ErrShortRead) {
				break
			}
			if err != nil {
				refused = off
				break
			}
			end := off + int(h.MessageLength)
			if end > len(stream) {
				break
			}
			want = append(want, end)
			off = end
		}

		var fs frameScanner
		var got []int
		broken := -1
		off, msgStart := 0, 0
		rest, cs := stream, cuts
		for len(rest) > 0 {
			chunk := rest
			if len(cs) > 0 {
				chunk = rest[:min(len(rest), int(cs[0])+1)]
				cs = cs[1:]
			}
			rest = rest[len(chunk):]
			for len(chunk) > 0 {
				n, ev, size := fs.next(chunk)
				if n <= 0 && ev == frameNone {
					t.Fatalf("scanner made no progress at %d", off)
				}
				chunk = chunk[n:]
				off += n
				switch ev {
				case frameStart:
					if size < 2 || size > maxFrame {
						t.Fatalf("message at %d has length %d", msgStart, size)
					}
				case frameEnd:
					got = append(got, off)
					msgStart = off
				case frameBroken:
					broken = msgStart
				}
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("boundaries %v, go-coap's %v", got, want)
		}
		if broken != refused {
			t.Fatalf("scanner stopped at %d, go-coap refused a header at %d", broken, refused)
		}

		b := &countingBudget{t: t}
		p := &connPolicy{budget: b, budgetSize: 1 << 30, maxMessage: maxMessage, wait: time.Second,
			log: newDiscardLogger()}
		var left atomic.Int32
		c := newTCPConn(&fakeStream{data: stream, cuts: cuts}, p, func() { left.Add(1) })
		var out bytes.Buffer
		buf := make([]byte, 2048)
		for {
			n, err := c.Read(buf)
			out.Write(buf[:max(n, 0)])
			if err != nil {
				break
			}
		}
		if !bytes.Equal(out.Bytes(), stream) {
			t.Fatalf("tcpConn changed the stream")
		}
		if b.maxGrant > maxMessage || b.maxHeld > maxMessage {
			t.Fatalf("reserved %d bytes for one message, %d at once; MaxMessageSize is %d", b.maxGrant, b.maxHeld, maxMessage)
		}
		c.Close()
		c.Close()
		if b.held != 0 || left.Load() != 1 {
			t.Fatalf("after Close %d bytes still reserved, admission left %d times", b.held, left.Load())
		}
	})
}

// BenchmarkTCPConnRead measures what following the framing costs a read,
// on a stream of 64-byte and of 4 KiB messages (the latter reserved from
// the budget), against the bare stream.
func BenchmarkTCPConnRead(b *testing.B) {
	for _, size := range []int{64, 4096} {
		msg := encodeTCP(b, make([]byte, size-10))
		stream := bytes.Repeat(msg, 256)
		p := &connPolicy{budget: newBudget(1 << 30), budgetSize: 1 << 30, maxMessage: DefaultMaxMessageSize,
			wait: time.Second, log: newDiscardLogger()}
		for _, guarded := range []bool{false, true} {
			name := fmt.Sprintf("%dB/bare", len(msg))
			if guarded {
				name = fmt.Sprintf("%dB/guarded", len(msg))
			}
			b.Run(name, func(b *testing.B) {
				buf := make([]byte, 2048)
				b.SetBytes(int64(len(stream)))
				b.ReportAllocs()
				for range b.N {
					var c net.Conn = &fakeStream{data: stream}
					if guarded {
						c = newTCPConn(c, p, func() {})
					}
					for {
						if _, err := c.Read(buf); err != nil {
							break
						}
					}
					c.Close()
				}
			})
		}
	}
}

// BenchmarkTCPConnNew measures the wrapper's own cost per connection:
// the tcpConn, its first-message timer and its admission; no goroutine.
func BenchmarkTCPConnNew(b *testing.B) {
	s := NewServer(ServerConfig{})
	defer s.Close()
	p := &connPolicy{budget: s.inflight, budgetSize: DefaultMaxInFlightBytes, maxMessage: DefaultMaxMessageSize,
		wait: time.Second, first: time.Minute, log: s.log}
	addr := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 5683}
	b.ReportAllocs()
	for range b.N {
		leave, err := s.enterTCP(addr)
		if err != nil {
			b.Fatal(err)
		}
		c := newTCPConn(&fakeStream{}, p, leave)
		c.Close()
	}
}

// BenchmarkTCPConnHeld holds b.N plain TCP connections (each past its
// CSM) on a real server and reports the heap and goroutines each costs,
// go-coap's share included; run it with -benchtime=500x.
func BenchmarkTCPConnHeld(b *testing.B) {
	f := newFixture(b, "coap+tcp", ServerConfig{})
	addr := hostPort(b, f.url)
	heap0, g0 := heapInUse(), runtime.NumGoroutine()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	buf := make([]byte, 64)
	for range b.N {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
		if _, err := c.Write([]byte{0x00, byte(codes.CSM)}); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil { // the server's CSM
			b.Fatal(err)
		}
	}
	for f.srv.adm.live() < b.N {
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(int64(heapInUse())-int64(heap0))/float64(b.N), "heap-B/conn")
	b.ReportMetric(float64(runtime.NumGoroutine()-g0)/float64(b.N), "goroutines/conn")
}

func newBudget(n int64) budget { return semaphore.NewWeighted(n) }

func newDiscardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func encodeTCP(t testing.TB, payload []byte) []byte {
	t.Helper()
	m := message.Message{Code: codes.POST, Token: []byte{1, 2}, Payload: payload,
		Options: message.Options{{ID: message.URIPath, Value: []byte("x")}}}
	n, err := coder.DefaultCoder.Size(m)
	must(t, err)
	buf := make([]byte, n)
	_, err = coder.DefaultCoder.Encode(m, buf)
	must(t, err)
	return buf
}
