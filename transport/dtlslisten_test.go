package transport

// Hostile-peer tests of the coaps:// listener (dtlslisten.go), over real
// DTLS on 127.0.0.0/8. They are sized for CI (a few seconds each); the
// full-size run is
//
//	SENSIBLE_HOSTILE_FULL=1 go test -run TestHostileDTLS -timeout 10m ./transport
//
// Wrong keys and bad certificates are refused by TestDTLSWrongKey and
// TestBadDeviceCertificate; TestHostileDTLSRefusedHandshakeFreesSlots
// checks that such a refusal gives back what it took.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	dtlsnet "github.com/pion/dtls/v3/pkg/net"
	"github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
)

// pskHandshake runs a DTLS-PSK client handshake with identity hint and key.
func pskHandshake(ctx context.Context, addr, hint string, key []byte) error {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return err
	}
	defer nc.Close()
	dc, err := piondtls.ClientWithOptions(dtlsnet.PacketConnFromConn(nc), nc.RemoteAddr(),
		piondtls.WithCipherSuites(piondtls.TLS_PSK_WITH_AES_128_CCM_8),
		piondtls.WithPSK(func([]byte) ([]byte, error) { return key, nil }),
		piondtls.WithPSKIdentityHint([]byte(hint)),
		piondtls.WithLoggerFactory(silentLogs{}))
	if err != nil {
		return err
	}
	defer dc.Close()
	return dc.HandshakeContext(ctx)
}

// TestHostileDTLSNonCanonicalPSKIdentity: a PSK identity must be the
// device ID exactly as ID.String writes it; another spelling that ParseID
// would forgive (lower case, separators, look-alike letters) is refused
// before the key is looked up, so one device has one name.
func TestHostileDTLSNonCanonicalPSKIdentity(t *testing.T) {
	var lookups atomic.Int32
	f := newFixture(t, "coaps", ServerConfig{PSK: func(_ context.Context, id identity.ID) ([]byte, error) {
		lookups.Add(1)
		return DerivePSK(fleetSecret, id)
	}})
	addr := strings.TrimPrefix(f.url, "coaps://")
	key, err := DerivePSK(fleetSecret, f.dev)
	must(t, err)
	canon := f.dev.String()
	spellings := map[string]string{
		"lower case": strings.ToLower(canon),
		"hyphens":    canon[:9] + "-" + canon[9:18] + "-" + canon[18:],
		"space":      " " + canon,
	}
	if i := strings.IndexAny(canon, "01"); i >= 0 {
		alias := map[byte]string{'0': "O", '1': "I"}[canon[i]]
		spellings["look-alike"] = canon[:i] + alias + canon[i+1:]
	}
	for name, hint := range spellings {
		t.Run(name, func(t *testing.T) {
			if id, err := identity.ParseID(hint); err != nil || id != f.dev {
				t.Fatalf("ParseID(%q) = %v, %v: the spelling is not the device", hint, id, err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if err := pskHandshake(ctx, addr, hint, key); err == nil {
				t.Fatalf("handshake with identity %q succeeded", hint)
			}
		})
	}
	if n := lookups.Load(); n != 0 {
		t.Fatalf("the key was looked up %d times for non-canonical identities", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := pskHandshake(ctx, addr, canon, key); err != nil {
		t.Fatalf("canonical identity: %v", err)
	}
	// The device itself, through the Client, is served.
	c := f.dial(t, true)
	must(t, c.Post(ctx5(t), "/v1/telemetry", []reading{{"p", 1}}, nil))
}

// hostileFull reports whether the full-size hostile tests were asked for.
func hostileFull() bool { return os.Getenv("SENSIBLE_HOSTILE_FULL") == "1" }

// rawClientHello returns a datagram holding one DTLS 1.2 ClientHello that
// offers TLS_PSK_WITH_AES_128_CCM_8 with extended master secret, the
// ClientHello of a device with the given random, echoing cookie.
func rawClientHello(random *[32]byte, cookie []byte, msgSeq uint16, recSeq uint64) []byte {
	var body []byte
	body = append(body, 0xfe, 0xfd)
	body = append(body, random[:]...)
	body = append(body, 0) // no session ID
	body = append(body, byte(len(cookie)))
	body = append(body, cookie...)
	body = append(body, 0, 2, 0xc0, 0xa8) // TLS_PSK_WITH_AES_128_CCM_8
	body = append(body, 1, 0)             // null compression
	body = append(body, 0, 4, 0x00, 0x17, 0, 0)
	hs := []byte{typeClientHello, 0, byte(len(body) >> 8), byte(len(body))}
	hs = binary.BigEndian.AppendUint16(hs, msgSeq)
	hs = append(hs, 0, 0, 0, 0, byte(len(body)>>8), byte(len(body)))
	hs = append(hs, body...)
	rec := []byte{contentHandshake, 0xfe, 0xfd, 0, 0}
	rec = append(rec, byte(recSeq>>40), byte(recSeq>>32), byte(recSeq>>24), byte(recSeq>>16), byte(recSeq>>8), byte(recSeq))
	rec = binary.BigEndian.AppendUint16(rec, uint16(len(hs)))
	return append(rec, hs...)
}

func newRandom() *[32]byte {
	var r [32]byte
	rand.Read(r[:])
	return &r
}

// halfOpen returns how many goroutines run a DTLS listener's handshake:
// connections waiting for their cookie, handshakes past it, and those
// winding down.
func halfOpen(t testing.TB) int {
	var b bytes.Buffer
	must(t, pprof.Lookup("goroutine").WriteTo(&b, 1))
	n := 0
	for _, rec := range strings.Split(b.String(), "\n\n") {
		if !strings.Contains(rec, "transport.(*dtlsListener).handshake(") && !strings.Contains(rec, "transport.(*dtlsListener).handshake+") {
			continue
		}
		count, _, _ := strings.Cut(rec, " @ ")
		if i := strings.LastIndexByte(count, '\n'); i >= 0 {
			count = count[i+1:]
		}
		c, err := strconv.Atoi(count)
		if err != nil {
			t.Fatalf("goroutine profile record %q", rec[:min(len(rec), 80)])
		}
		n += c
	}
	return n
}

// peaks samples the process while an attack runs.
type peaks struct {
	t    testing.TB
	stop chan struct{}
	wg   sync.WaitGroup

	mu                   sync.Mutex
	goroutines, halfOpen int
	heap                 uint64
	slots                int
}

func samplePeaks(t testing.TB, srv *Server) *peaks {
	p := &peaks{t: t, stop: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		tick := time.NewTicker(25 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			g, h, sl := runtime.NumGoroutine(), halfOpen(t), srv.slots.inUse()
			p.mu.Lock()
			p.goroutines = max(p.goroutines, g)
			p.halfOpen = max(p.halfOpen, h)
			p.heap = max(p.heap, ms.HeapAlloc)
			p.slots = max(p.slots, sl)
			p.mu.Unlock()
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return p
}

func (p *peaks) done() *peaks {
	close(p.stop)
	p.wg.Wait()
	return p
}

func heapNow() uint64 { return heapLive() }

// dtlsLegitPost dials as the fixture's device (PSK) and posts a reading,
// within timeout.
func dtlsLegitPost(t *testing.T, f *fixture, timeout time.Duration) error {
	t.Helper()
	return dtlsLegitPostTo(t, f, f.url, timeout)
}

// legitPostWithin retries legitPost, each try within try, until one
// succeeds or total has passed, and returns how long it took.
func legitPostWithin(t *testing.T, f *fixture, try, total time.Duration) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	for {
		err := dtlsLegitPost(t, f, try)
		if err == nil || time.Since(start) > total {
			return time.Since(start), err
		}
	}
}

// waitFor polls cond until it holds or d passes.
func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// handshakeTokens returns the tokens left in the server's handshake rate
// bucket.
func handshakeTokens(s *Server) float64 {
	s.hs.mu.Lock()
	defer s.hs.mu.Unlock()
	if b := s.hs.buckets[""]; b != nil {
		return b.tokens
	}
	return float64(s.hs.cfg.Burst)
}

// TestHostileDTLSSpoofedHelloFlood floods the listener with first
// ClientHellos from new source ports of 127.0.2.2, each socket closed as
// soon as it has sent, so that no cookie ever comes back: a spoofed
// flood. The documented answer: each gets a HelloVerifyRequest from a
// connection that costs no handshake-rate token, no handshake slot and no
// session slot; at most an eighth of MaxCookieWaits of those from one
// network wait at once (its oldest is dropped), and none outlives
// HandshakeTimeout. A device is served during and after the flood with a
// handshake burst of 3, which the flood would have spent at once had it
// cost tokens.
//
// Bounds: handshake goroutines ≤ MaxHandshakes + 2·MaxCookieWaits/8 for
// each of the two networks sent from (the flood's, and the forged
// cookies' below), waiting or winding down; all goroutines ≤ baseline + 4
// per handshake goroutine + 128 (the test's own); heap growth ≤ 64 KiB
// per handshake goroutine + 16 MiB; nothing left HandshakeTimeout after.
func TestHostileDTLSSpoofedHelloFlood(t *testing.T) {
	hello, rate, maxHS, waits, timeout := 2000, 2000.0, 32, 256, time.Second
	if hostileFull() {
		hello, rate, maxHS, waits, timeout = 100000, 20000, DefaultMaxHandshakes, DefaultMaxCookieWaits, DefaultHandshakeTimeout
	}
	f := newFixture(t, "coaps", ServerConfig{MaxHandshakes: maxHS, MaxCookieWaits: waits, HandshakeTimeout: timeout,
		HandshakeRate: RateLimit{PerSecond: 0.001, Burst: 3}})
	server, err := net.ResolveUDPAddr("udp", strings.TrimPrefix(f.url, "coaps://"))
	must(t, err)
	baseG, baseHeap := runtime.NumGoroutine(), heapNow()
	peak := samplePeaks(t, f.srv)

	var sent atomic.Int64
	var served, ended atomic.Bool
	flood := make(chan error, 1)
	go func() {
		defer ended.Store(true)
		start := time.Now()
		src := &net.UDPAddr{IP: net.IPv4(127, 0, 2, 2)}
		// At least hello datagrams, and on until the device has been
		// served (a loaded machine may be slow to serve it).
		for i := 0; i < hello || (!served.Load() && i < 20*hello); i++ {
			c, err := net.ListenUDP("udp", src)
			if err != nil {
				flood <- err
				return
			}
			_, err = c.WriteToUDP(rawClientHello(newRandom(), nil, 0, 0), server)
			c.Close()
			if err != nil {
				flood <- err
				return
			}
			sent.Add(1)
			if ahead := time.Duration(float64(i+1)/rate*float64(time.Second)) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
		flood <- nil
	}()

	// During the flood.
	waitUntil(10*time.Second, func() bool { return sent.Load() >= int64(hello/3) })
	took, err := legitPostWithin(t, f, 2*time.Second, 4*time.Second)
	if err != nil {
		t.Fatalf("device during the flood (%d hellos sent): %v", sent.Load(), err)
	}
	during, stillFlooding := sent.Load(), !ended.Load()
	served.Store(true)
	must(t, <-flood)
	t.Logf("%d spoofed hellos sent; device served in %v during the flood (after %d)", sent.Load(), took, during)
	if !stillFlooding {
		t.Fatalf("the device was served only after the flood")
	}

	// Forged cookies: on a new address (no connection), and on an address
	// whose connection waits for its cookie. Neither costs anything.
	for range 50 {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
		must(t, err)
		r := newRandom()
		_, err = c.WriteToUDP(rawClientHello(r, bytes.Repeat([]byte{7}, 20), 1, 1), server)
		must(t, err)
		// A first ClientHello, retransmitted as a device would: right
		// after the flood every handshake goroutine may still be busy.
		var cookie []byte
		buf := make([]byte, 1500)
		for try := 0; cookie == nil; try++ {
			if try == 10 {
				t.Fatal("no HelloVerifyRequest for a first ClientHello")
			}
			_, err = c.WriteToUDP(rawClientHello(r, nil, 0, uint64(2+try)), server)
			must(t, err)
			must(t, c.SetReadDeadline(time.Now().Add(200*time.Millisecond)))
			if n, err := c.Read(buf); err == nil {
				cookie = verifyRequestCookie(buf[:n])
			}
		}
		cookie[0] ^= 1
		_, err = c.WriteToUDP(rawClientHello(r, cookie, 1, 20), server)
		must(t, err)
		must(t, c.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
		for {
			n, err := c.Read(buf)
			if err != nil {
				break
			}
			if verifyRequestCookie(buf[:n]) == nil { // not a late HelloVerifyRequest
				t.Fatalf("answer to a forged cookie: % x", buf[:n])
			}
		}
		c.Close()
	}
	if s := f.srv.slots.inUse(); s != 0 {
		t.Fatalf("%d handshake slots held by spoofed or forged hellos", s)
	}

	// After: nothing is left once HandshakeTimeout has passed.
	if !waitUntil(timeout+2*time.Second, func() bool { return halfOpen(t) == 0 }) {
		t.Fatalf("%d handshake goroutines %v after the flood", halfOpen(t), timeout+2*time.Second)
	}
	p := peak.done()
	if err := dtlsLegitPost(t, f, 2*time.Second); err != nil {
		t.Fatalf("device after the flood: %v", err)
	}
	if tok := handshakeTokens(f.srv); tok < 0.9 || tok > 1.1 {
		t.Fatalf("%.2f handshake tokens left of 3, want 1: the flood spent some", tok)
	}
	t.Logf("peaks: %d handshake goroutines, %d goroutines (baseline %d), heap +%d KiB, %d slots",
		p.halfOpen, p.goroutines, baseG, (p.heap-min(p.heap, baseHeap))>>10, p.slots)
	hsBound := 2*2*waits/waitShare + maxHS
	if p.halfOpen > hsBound {
		t.Errorf("%d handshake goroutines, bound %d", p.halfOpen, hsBound)
	}
	if bound := baseG + 4*hsBound + 128; p.goroutines > bound {
		t.Errorf("%d goroutines, bound %d", p.goroutines, bound)
	}
	if bound := baseHeap + uint64(hsBound)*64<<10 + 16<<20; p.heap > bound {
		t.Errorf("heap peaked at %d KiB, bound %d KiB", p.heap>>10, bound>>10)
	}
	if p.slots > 1 {
		t.Errorf("%d handshake slots held at once; only the device should hold one", p.slots)
	}
	waitGoroutines(t, baseG+8)
}

// stalledHandshake does the cookie exchange from a new socket on ip and
// stalls once the server answers. It reports whether the server answered
// the echoed cookie with its ServerHello; the socket stays open until the
// caller closes it.
func stalledHandshake(server *net.UDPAddr, ip netip.Addr) (*net.UDPConn, bool, error) {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		return nil, false, err
	}
	r := newRandom()
	buf := make([]byte, 1500)
	if _, err := c.WriteToUDP(rawClientHello(r, nil, 0, 0), server); err != nil {
		c.Close()
		return nil, false, err
	}
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	n, err := c.Read(buf)
	if err != nil {
		return c, false, nil // dropped: no worker free, or the server is full
	}
	cookie := verifyRequestCookie(buf[:n])
	if cookie == nil {
		c.Close()
		return nil, false, fmt.Errorf("no HelloVerifyRequest: % x", buf[:n])
	}
	if _, err := c.WriteToUDP(rawClientHello(r, cookie, 1, 1), server); err != nil {
		c.Close()
		return nil, false, err
	}
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	n, err = c.Read(buf)
	serverHello := err == nil && n > recordHeaderLen && buf[0] == contentHandshake && buf[recordHeaderLen] == 2
	return c, serverHello, nil
}

// stallFrom runs n stalled handshakes, 64 at a time, from the addresses
// addr(i), and returns how many the server answered and the sockets.
func stallFrom(t *testing.T, server *net.UDPAddr, n int, addr func(i int) netip.Addr) (int, []*net.UDPConn) {
	var (
		mu       sync.Mutex
		answered int
		conns    []*net.UDPConn
		next     atomic.Int64
		wg       sync.WaitGroup
		firstErr atomic.Pointer[error]
	)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, ok, err := stalledHandshake(server, addr(i))
				if err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				mu.Lock()
				conns = append(conns, c)
				if ok {
					answered++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	if e := firstErr.Load(); e != nil {
		t.Fatal(*e)
	}
	return answered, conns
}

// TestHostileDTLSCookieAnsweringFlood: an attacker on real addresses
// completes the cookie exchange and then stalls, never sending its key
// exchange. The documented answer: each such handshake takes a handshake
// slot, and one source prefix (an IPv4 /24) at most an eighth of them, so that
// from one network the attacker leaves the rest to others; from many
// networks it fills MaxHandshakes and no more, and every stalled handshake
// is dropped HandshakeTimeout after its first ClientHello, with its slots.
// A device on another network is served while one network attacks, and
// within two HandshakeTimeouts while many do; and after.
//
// Bounds: answered handshakes ≤ MaxHandshakes/8 from one /24 and ≤
// MaxHandshakes in all; handshake goroutines ≤ MaxCookieWaits +
// MaxHandshakes; all goroutines ≤ baseline + 4 per handshake goroutine +
// 128 (the test's own); heap growth ≤ 64 KiB per handshake goroutine + 16
// MiB; no slot, session slot or handshake goroutine left HandshakeTimeout
// after.
func TestHostileDTLSCookieAnsweringFlood(t *testing.T) {
	maxHS, waits, timeout := 16, 64, 3*time.Second
	if hostileFull() {
		maxHS, waits, timeout = DefaultMaxHandshakes, DefaultMaxCookieWaits, DefaultHandshakeTimeout
	}
	f := newFixture(t, "coaps", ServerConfig{MaxHandshakes: maxHS, MaxCookieWaits: waits, HandshakeTimeout: timeout})
	server, err := net.ResolveUDPAddr("udp", strings.TrimPrefix(f.url, "coaps://"))
	must(t, err)
	baseG, baseHeap := runtime.NumGoroutine(), heapNow()
	peak := samplePeaks(t, f.srv)

	// One network: 127.0.1.0/24 holds at most its share of the slots.
	start := time.Now()
	one, _ := stallFrom(t, server, 2*maxHS, func(int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 1, 1}) })
	if one > maxHS/handshakeShare || one == 0 {
		t.Fatalf("%d stalled handshakes answered from one /24, want 1..%d", one, maxHS/handshakeShare)
	}
	if err := dtlsLegitPost(t, f, 2*time.Second); err != nil {
		t.Fatalf("device while one network stalls %d handshakes: %v", one, err)
	}

	// Many networks: 127.0.2.0/24 to 127.0.9.0/24 fill the rest, no more.
	many, _ := stallFrom(t, server, 2*maxHS, func(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, byte(2 + i%8), 1}) })
	// Within one timeout of the first, every answer holds its slot still.
	if one+many > maxHS && time.Since(start) < timeout {
		t.Fatalf("%d + %d stalled handshakes answered, cap %d", one, many, maxHS)
	}
	full, fullAt := f.srv.slots.inUse(), time.Since(start)
	if full > maxHS {
		t.Fatalf("%d handshake slots in use, cap %d", full, maxHS)
	}
	took, err := legitPostWithin(t, f, 1500*time.Millisecond, 2*timeout+3*time.Second)
	if err != nil {
		t.Fatalf("device while every slot is stalled: %v", err)
	}
	t.Logf("answered %d from one /24, %d from eight, %d slots held after %v; device served in %v",
		one, many, full, fullAt, took)

	// After: the stalled handshakes are gone, and with them their slots.
	if !waitUntil(timeout+2*time.Second, func() bool {
		return f.srv.slots.inUse() == 0 && f.srv.adm.live() == 0 && halfOpen(t) == 0
	}) {
		t.Fatalf("%v after: %d handshake slots, %d session slots, %d handshake goroutines",
			timeout+2*time.Second, f.srv.slots.inUse(), f.srv.adm.live(), halfOpen(t))
	}
	p := peak.done()
	if err := dtlsLegitPost(t, f, 2*time.Second); err != nil {
		t.Fatalf("device after: %v", err)
	}
	t.Logf("peaks: %d handshake goroutines, %d goroutines (baseline %d), heap +%d KiB, %d slots",
		p.halfOpen, p.goroutines, baseG, (p.heap-min(p.heap, baseHeap))>>10, p.slots)
	if p.slots > maxHS {
		t.Errorf("%d handshake slots held at once, cap %d", p.slots, maxHS)
	}
	hsBound := waits + maxHS
	if p.halfOpen > hsBound {
		t.Errorf("%d handshake goroutines, bound %d", p.halfOpen, hsBound)
	}
	if bound := baseG + 4*hsBound + 128; p.goroutines > bound { // 64 of the 128: stallFrom
		t.Errorf("%d goroutines, bound %d", p.goroutines, bound)
	}
	if bound := baseHeap + uint64(hsBound)*64<<10 + 16<<20; p.heap > bound {
		t.Errorf("heap peaked at %d KiB, bound %d KiB", p.heap>>10, bound>>10)
	}
}

// TestHostileDTLSRefusedHandshakeFreesSlots: a handshake refused for a
// wrong key or an untrusted device certificate (TestDTLSWrongKey,
// TestBadDeviceCertificate) gives back the handshake slot and the session
// slot it took when its cookie came back, so refused devices cannot fill
// the server.
func TestHostileDTLSRefusedHandshakeFreesSlots(t *testing.T) {
	for _, scheme := range []string{"coaps", "coaps+cert"} {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{MaxHandshakes: 4, MaxConnections: 4, HandshakeTimeout: time.Second})
			cfg := f.config(t, true)
			cfg.Retry.Attempts = 1
			if scheme == "coaps" {
				cfg.PSK = bytes.Repeat([]byte{7}, PSKSize)
			} else {
				cfg.Certificate = &newTestPKI(t, f.devKey).device
			}
			for range 6 { // more than either cap
				ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				c, err := Dial(ctx, f.url, cfg)
				if err == nil {
					err = c.Post(ctx, "/v1/telemetry", []reading{{"p", 1}}, nil)
					c.Close()
				}
				cancel()
				if err == nil {
					t.Fatal("a refused device was served")
				}
			}
			if !waitUntil(3*time.Second, func() bool { return f.srv.slots.inUse() == 0 && f.srv.adm.live() == 0 }) {
				t.Fatalf("%d handshake slots and %d session slots still held", f.srv.slots.inUse(), f.srv.adm.live())
			}
			if err := dtlsLegitPost(t, f, 2*time.Second); err != nil {
				t.Fatalf("device after the refusals: %v", err)
			}
		})
	}
}

// portDevice is the fixture's device on a socket bound to a port of its
// choosing, as a device whose port survives a restart (a fixed local port,
// or a NAT that keeps the mapping).
type portDevice struct {
	nc net.Conn
	dc *piondtls.Conn
	cc *udpclient.Conn
}

func dialFromPort(t *testing.T, f *fixture, port int) (*portDevice, error) {
	t.Helper()
	key, err := DerivePSK(fleetSecret, f.dev)
	must(t, err)
	d := net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}}
	nc, err := d.DialContext(ctx5(t), "udp", strings.TrimPrefix(f.url, "coaps://"))
	if err != nil {
		return nil, err
	}
	dc, err := piondtls.ClientWithOptions(dtlsnet.PacketConnFromConn(nc), nc.RemoteAddr(),
		piondtls.WithCipherSuites(piondtls.TLS_PSK_WITH_AES_128_CCM_8),
		piondtls.WithPSK(func([]byte) ([]byte, error) { return key, nil }),
		piondtls.WithPSKIdentityHint([]byte(f.dev.String())),
		piondtls.WithConnectionIDGenerator(piondtls.OnlySendCIDGenerator()),
		piondtls.WithLoggerFactory(silentLogs{}))
	if err != nil {
		nc.Close()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := dc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	pd := &portDevice{nc: nc, dc: dc, cc: dtls.Client(dc)}
	t.Cleanup(func() { pd.cc.Close() })
	return pd, nil
}

func (d *portDevice) port() int { return d.nc.LocalAddr().(*net.UDPAddr).Port }

// post sends one reading on the session and checks the answer.
func (d *portDevice) post(t *testing.T) error {
	t.Helper()
	body, err := codec.Marshal([]reading{{"p", 1}})
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := d.cc.Post(ctx, "/v1/telemetry", message.AppCBOR, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if resp.Code() != codes.Changed {
		return fmt.Errorf("answer %v", resp.Code())
	}
	return nil
}

// TestHostileDTLSHelloOnSessionAddress: a first ClientHello from the
// address of a live session is the start of a new handshake, as RFC 6347
// section 4.2.8 asks. Spoofed (no cookie comes back), it does not disturb
// the session and is gone after HandshakeTimeout. From a device that
// restarted and kept its port, it replaces the old session as soon as the
// cookie comes back, and the old session's slot is given back; before,
// such a device was shut out until the old session's idle timeout.
func TestHostileDTLSHelloOnSessionAddress(t *testing.T) {
	timeout := time.Second
	f := newFixture(t, "coaps", ServerConfig{HandshakeTimeout: timeout})
	dev, err := dialFromPort(t, f, 0)
	must(t, err)
	defer dev.nc.Close()
	must(t, dev.post(t))

	// Spoofed: the hello comes from the session's address (sent here
	// through the device's own socket) but nobody answers the cookie.
	_, err = dev.nc.Write(rawClientHello(newRandom(), nil, 0, 0))
	must(t, err)
	if err := dev.post(t); err != nil {
		t.Fatalf("session after a spoofed hello from its address: %v", err)
	}
	if !waitUntil(timeout+2*time.Second, func() bool { return halfOpen(t) == 0 }) {
		t.Fatalf("%d handshake goroutines after HandshakeTimeout", halfOpen(t))
	}
	if err := dev.post(t); err != nil {
		t.Fatalf("session after the spoofed handshake timed out: %v", err)
	}
	if n := f.srv.adm.live(); n != 1 {
		t.Fatalf("%d session slots, want 1", n)
	}

	// Restart: the device loses its session without a word and comes
	// back from the same port.
	port := dev.port()
	dev.nc.Close()
	start := time.Now()
	again, err := dialFromPort(t, f, port)
	if err != nil {
		t.Fatalf("device restarted on port %d: %v", port, err)
	}
	defer again.nc.Close()
	must(t, again.post(t))
	t.Logf("restarted device served after %v", time.Since(start))
	if !waitUntil(2*time.Second, func() bool { return f.srv.adm.live() == 1 }) {
		t.Fatalf("%d session slots, want the new session only", f.srv.adm.live())
	}

	// Leave properly (close_notify) and come straight back from the same
	// port, so that the new hello may reach the server before the old
	// session has closed, or after.
	for i := range 20 {
		again.cc.Close()
		must(t, again.dc.Close()) // close_notify
		again.nc.Close()
		if again, err = dialFromPort(t, f, port); err != nil {
			t.Fatalf("return %d from port %d: %v", i, port, err)
		}
		if err := again.post(t); err != nil {
			t.Fatalf("return %d: %v", i, err)
		}
	}
	again.nc.Close()
}

// FuzzDTLSRecordPeek: the listener's look at datagrams before pion (the
// ClientHello cookie, the HelloVerifyRequest cookie) never panics and
// never reads past the datagram.
func FuzzDTLSRecordPeek(f *testing.F) {
	r := newRandom()
	f.Add(rawClientHello(r, nil, 0, 0))
	f.Add(rawClientHello(r, bytes.Repeat([]byte{1}, 20), 1, 1))
	f.Add([]byte{contentHandshake, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 18,
		typeHelloVerifyReq, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 6, 0xfe, 0xff, 3, 1, 2, 3})
	f.Add([]byte{contentCID, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if cookie, hello, ok := helloCookie(b); ok && (!hello || len(cookie) > len(b)) {
			t.Fatalf("helloCookie = %x, %v, %v", cookie, hello, ok)
		}
		if c := verifyRequestCookie(b); len(c) > len(b) {
			t.Fatalf("verifyRequestCookie = %x", c)
		}
	})
}

func TestDTLSRecordPeek(t *testing.T) {
	r := newRandom()
	if c, hello, ok := helloCookie(rawClientHello(r, nil, 0, 0)); !hello || !ok || len(c) != 0 {
		t.Fatalf("first ClientHello: %x %v %v", c, hello, ok)
	}
	want := []byte("0123456789abcdefghij")
	if c, hello, ok := helloCookie(rawClientHello(r, want, 1, 1)); !hello || !ok || !bytes.Equal(c, want) {
		t.Fatalf("second ClientHello: %x %v %v", c, hello, ok)
	}
	short := rawClientHello(r, want, 1, 1)[:recordHeaderLen+handshakeHeaderLen+40]
	binary.BigEndian.PutUint16(short[11:13], uint16(len(short)-recordHeaderLen))
	if _, hello, ok := helloCookie(short); !hello || ok {
		t.Fatalf("a first fragment that hides the cookie: hello %v ok %v", hello, ok)
	}
	hvr := []byte{contentHandshake, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 18,
		typeHelloVerifyReq, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 6, 0xfe, 0xff, 3, 1, 2, 3}
	if c := verifyRequestCookie(hvr); !bytes.Equal(c, []byte{1, 2, 3}) {
		t.Fatalf("HelloVerifyRequest cookie %x", c)
	}
}
