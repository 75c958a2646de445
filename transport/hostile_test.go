package transport

// The hostile-traffic suite: one test per attack the server has met, each
// checking that the attack gets its documented answer, that a legitimate
// device is served during and after it, and that memory stays within a
// stated bound. The floods run in a CI-sized form; for full size:
//
//	SENSIBLE_HOSTILE_FULL=1 go test -run 'TestHostile' -timeout 30m -v ./transport
//
// (TCP, TLS and DTLS handshake attacks live in tcplisten_test.go and
// dtlslisten_test.go.)

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	udpcoder "github.com/plgd-dev/go-coap/v3/udp/coder"

	"github.com/sensible-iot/sensible/device/identity"
)

// full reports whether the floods run at the size they were measured at.
func full() bool { return os.Getenv("SENSIBLE_HOSTILE_FULL") == "1" }

// scale returns ci, or fullSize with SENSIBLE_HOSTILE_FULL=1.
func scale(ci, fullSize int) int {
	if full() {
		return fullSize
	}
	return ci
}

// warnCounter is a slog handler that counts records at warning level or
// above: a flood must not become a flood of log lines.
type warnCounter struct{ n atomic.Int64 }

func (w *warnCounter) Enabled(context.Context, slog.Level) bool { return true }
func (w *warnCounter) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		w.n.Add(1)
	}
	return nil
}
func (w *warnCounter) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnCounter) WithGroup(string) slog.Handler      { return w }

// rawPeer is a hand-driven CoAP-over-UDP peer on its own socket.
type rawPeer struct {
	t   testing.TB
	c   *net.UDPConn
	mid uint16
}

// newRawPeer opens a UDP socket on local (":0" style host, or "" for
// 127.0.0.1) connected to the server of fixture f.
func newRawPeer(t testing.TB, f *fixture, local string) *rawPeer {
	t.Helper()
	u, err := url.Parse(f.url)
	must(t, err)
	raddr, err := net.ResolveUDPAddr("udp", u.Host)
	must(t, err)
	var laddr *net.UDPAddr
	if local != "" {
		laddr, err = net.ResolveUDPAddr("udp", local)
		must(t, err)
	}
	c, err := net.DialUDP("udp", laddr, raddr)
	must(t, err)
	t.Cleanup(func() { c.Close() })
	return &rawPeer{t: t, c: c, mid: uint16(time.Now().UnixNano())}
}

// msg is a CoAP message to encode.
type msg struct {
	typ     message.Type
	code    codes.Code
	token   []byte
	path    string
	opts    []message.Option
	payload []byte
	mid     int32 // -1: the peer's next
}

func encodeUDP(t testing.TB, m message.Message) []byte {
	buf := make([]byte, 64+len(m.Payload)+len(m.Token))
	for _, o := range m.Options {
		buf = append(buf, make([]byte, 8+len(o.Value))...)
	}
	n, err := udpcoder.DefaultCoder.Encode(m, buf)
	must(t, err)
	return buf[:n]
}

func (p *rawPeer) send(m msg) int32 {
	mid := m.mid
	if mid < 0 {
		p.mid++
		mid = int32(p.mid)
	}
	var opts message.Options
	for _, seg := range strings.Split(strings.Trim(m.path, "/"), "/") {
		if seg != "" {
			opts = opts.Add(message.Option{ID: message.URIPath, Value: []byte(seg)})
		}
	}
	for _, o := range m.opts {
		opts = opts.Add(o)
	}
	b := encodeUDP(p.t, message.Message{Type: m.typ, Code: m.code, Token: m.token, Options: opts, Payload: m.payload, MessageID: mid})
	if _, err := p.c.Write(b); err != nil {
		p.t.Fatal(err)
	}
	return mid
}

// recv reads one message, or reports none within d.
func (p *rawPeer) recv(d time.Duration) (message.Message, bool) {
	buf := make([]byte, 2048)
	must(p.t, p.c.SetReadDeadline(time.Now().Add(d)))
	n, err := p.c.Read(buf)
	if err != nil {
		return message.Message{}, false
	}
	m := message.Message{Options: make(message.Options, 0, 16)}
	if _, err := udpcoder.DefaultCoder.Decode(buf[:n], &m); err != nil {
		p.t.Fatalf("undecodable answer %x: %v", buf[:n], err)
	}
	return m, true
}

// call sends a confirmable request and returns the answer to it.
func (p *rawPeer) call(m msg) message.Message {
	p.t.Helper()
	m.typ, m.mid = message.Confirmable, -1
	if m.token == nil {
		m.token = []byte{byte(p.mid), byte(p.mid >> 8), 7}
	}
	mid := p.send(m)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		r, ok := p.recv(time.Until(deadline))
		if ok && r.MessageID == mid {
			return r
		}
	}
	p.t.Fatalf("no answer to %s %s", m.code, m.path)
	return message.Message{}
}

func blockOpt(num uint32, more bool, szx uint8) message.Option {
	return uintOption(message.Block1, block{num: num, more: more, szx: szx}.encode())
}

// heapInUse returns the heap in use after a collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// legit checks that the fixture's device is served: a fresh connection
// on scheme, authenticated, posts a reading.
func legit(t *testing.T, f *fixture) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, f.url, f.config(t, true))
	if err != nil {
		t.Fatalf("legitimate device: dial: %v", err)
	}
	defer c.Close()
	var a ack
	if err := c.Post(ctx, "/v1/telemetry", []reading{{"power", 1}}, &a); err != nil {
		t.Fatalf("legitimate device: post: %v", err)
	}
	if a.Device != f.dev.String() {
		t.Fatalf("legitimate device served as %q", a.Device)
	}
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// budgetFree reports whether the server's whole in-flight budget is free.
func budgetFree(s *Server) bool {
	if !s.inflight.TryAcquire(s.cfg.MaxInFlightBytes) {
		return false
	}
	s.inflight.Release(s.cfg.MaxInFlightBytes)
	return true
}

// Attack 1: block-wise uploads reassembled before anything was checked.
// Now a Block1 upload to an unknown path gets 4.04, to a protected
// resource without authentication 4.01, with SZX 7 over UDP 4.02, past
// the resource's limit 4.13 with Size1; nothing of it is held.
func TestHostileBlock1Refused(t *testing.T) {
	f := newFixture(t, "coap", ServerConfig{})
	must(t, f.srv.Handle(Resource{Path: "/v1/upload", Methods: []Method{POST}, Public: true, MaxBody: 4096,
		Handler: func(ctx context.Context, r *Request) (any, error) { return len(r.Body), nil }}))
	p := newRawPeer(t, f, "")
	before := heapInUse()
	blocks := scale(2000, 64<<10) // 2 MiB (64 MiB full) offered per case
	chunk := make([]byte, 1024)
	cases := []struct {
		name string
		path string
		szx  uint8
		want codes.Code
	}{
		{"unknown path", "/no/such/resource", 6, codes.NotFound},
		{"unauthenticated", "/v1/telemetry", 6, codes.Unauthorized},
		{"BERT over UDP", "/v1/upload", 7, codes.BadOption},
		{"past MaxBody", "/v1/upload", 6, codes.RequestEntityTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for i := range blocks {
				if i == 10 {
					legit(t, f) // during the attack
				}
				r := p.call(msg{code: codes.POST, path: c.path, payload: chunk,
					opts: []message.Option{blockOpt(uint32(i), true, c.szx), uintOption(message.ContentFormat, 60)}})
				if c.want == codes.RequestEntityTooLarge && i < 4 {
					if r.Code != codes.Continue {
						t.Fatalf("block %d within MaxBody answered %v", i, r.Code)
					}
					continue
				}
				if r.Code != c.want {
					t.Fatalf("block %d answered %v, want %v", i, r.Code, c.want)
				}
				if c.want == codes.RequestEntityTooLarge {
					if size, err := r.Options.GetUint32(message.Size1); err != nil || size != 4096 {
						t.Fatalf("4.13 with Size1 %d, %v; want 4096", size, err)
					}
					break
				}
				if i >= 20 && !full() {
					break // the answer is the same for every block: enough
				}
			}
		})
	}
	if !budgetFree(f.srv) {
		t.Fatal("refused uploads hold in-flight bytes")
	}
	if grew := int64(heapInUse()) - int64(before); grew > 4<<20 {
		t.Fatalf("heap grew %d bytes during refused uploads (bound 4 MiB)", grew)
	}
	legit(t, f)
}

// An authenticated device past a resource's MaxBody is refused at the
// block that passes it (or at once, when it declares Size1).
func TestHostileBlock1TooLarge(t *testing.T) {
	for _, scheme := range []string{"coap", "coaps"} {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{})
			c := f.dial(t, true)
			big := make([]reading, 200) // over /v1/telemetry's 1 KiB
			err := c.Post(ctx5(t), "/v1/telemetry", big, nil)
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("oversize upload: %v, want 4.13", err)
			}
			if !budgetFree(f.srv) {
				t.Fatal("a refused upload holds in-flight bytes")
			}
			legit(t, f)
		})
	}
}

// Attacks 1 and 9: uploads from many peers at once cannot hold more than
// MaxInFlightBytes; past it a block gets 5.03 with Max-Age, and the bytes
// come back when the peers go.
func TestHostileInFlightBudget(t *testing.T) {
	const budget = 256 << 10
	f := newFixture(t, "coap", ServerConfig{MaxInFlightBytes: budget, UnauthenticatedIdle: time.Second, RateLimit: RateLimit{PerSecond: -1}})
	must(t, f.srv.Handle(Resource{Path: "/v1/upload", Methods: []Method{POST}, Public: true, MaxBody: 1 << 20,
		Handler: func(ctx context.Context, r *Request) (any, error) { return len(r.Body), nil }}))
	before := heapInUse()
	peers := scale(8, 64)
	chunk := make([]byte, 1024)
	var busy atomic.Int32
	var wg sync.WaitGroup
	for i := range peers {
		p := newRawPeer(t, f, fmt.Sprintf("127.0.2.%d:0", i+1))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range 1000 { // up to 1000 KiB each, never finished
				r := p.call(msg{code: codes.POST, path: "/v1/upload", payload: chunk,
					opts: []message.Option{blockOpt(uint32(n), true, 6), uintOption(message.ContentFormat, 60)}})
				if r.Code == codes.ServiceUnavailable {
					if age, err := r.Options.GetUint32(message.MaxAge); err != nil || age == 0 {
						t.Errorf("5.03 without Max-Age")
					}
					busy.Add(1)
					return
				}
				if r.Code != codes.Continue {
					t.Errorf("block %d: %v", n, r.Code)
					return
				}
			}
		}()
	}
	wg.Wait()
	if busy.Load() == 0 {
		t.Fatal("no upload was refused for the budget")
	}
	if grew := int64(heapInUse()) - int64(before); grew > 3*budget+(2<<20) {
		t.Fatalf("heap grew %d bytes, budget %d (bound 3×budget + 2 MiB)", grew, budget)
	}
	legit(t, f)
	// The stalled uploads go with their peers.
	waitFor(t, 5*time.Second, "the budget came back", func() bool { return budgetFree(f.srv) })
}

// Attack 2: one datagram made a peer. A ping from each of many source
// addresses now fills only the unauthenticated quota, evicting the oldest;
// devices on every transport are still served.
func TestHostileUDPPeerFlood(t *testing.T) {
	const quota = 256
	n := scale(3000, 55000)
	schemes := []string{"coap", "coaps", "coap+tcp"}
	fs := map[string]*fixture{}
	var srv *Server
	warns := &warnCounter{}
	for _, s := range schemes {
		if srv == nil {
			fs[s] = newFixture(t, s, ServerConfig{MaxUnauthenticated: quota, MaxConnections: 100, Logger: slog.New(warns)})
			srv = fs[s].srv
			continue
		}
		u, err := srv.Listen(s + "://127.0.0.1:0")
		must(t, err)
		fs[s] = &fixture{scheme: s, pki: fs["coap"].pki, srv: srv, url: u, devKey: fs["coap"].devKey, dev: fs["coap"].dev}
	}
	goBefore := runtime.NumGoroutine()
	before := heapInUse()
	u, _ := url.Parse(fs["coap"].url)
	raddr, _ := net.ResolveUDPAddr("udp", u.Host)
	ping := encodeUDP(t, message.Message{Type: message.Confirmable, Code: codes.Empty, MessageID: 1})
	sent, midway := 0, false
	for sent < n {
		// Batches of sockets on 127.0.3.0/24 and up: many addresses,
		// another network than the devices'.
		var socks []*net.UDPConn
		for i := 0; i < 200 && sent < n; i++ {
			la := &net.UDPAddr{IP: net.IPv4(127, 0, byte(3+sent/50000), byte(1+sent%250))}
			c, err := net.DialUDP("udp", la, raddr)
			if err != nil {
				t.Fatal(err)
			}
			c.Write(ping)
			socks = append(socks, c)
			sent++
		}
		for _, c := range socks {
			c.Close()
		}
		if sent%1000 == 0 {
			if got := srv.unauth.len(); got > quota {
				t.Fatalf("%d unauthenticated peers held, quota %d", got, quota)
			}
		}
		if !midway && sent >= n/2 {
			midway = true
			for _, s := range schemes {
				legit(t, fs[s]) // during the flood
			}
		}
	}
	for _, s := range schemes {
		legit(t, fs[s])
	}
	if got := srv.unauth.len(); got > quota {
		t.Fatalf("%d unauthenticated peers held, quota %d", got, quota)
	}
	// go-coap lets an evicted peer's goroutine go on its next tick.
	waitFor(t, 3*time.Second, "goroutines within 2×quota+50 of the start", func() bool {
		return runtime.NumGoroutine()-goBefore <= 2*quota+50
	})
	if grew := int64(heapInUse()) - int64(before); grew > 32<<20 {
		t.Fatalf("heap grew %d bytes (bound 32 MiB)", grew)
	}
	if w := warns.n.Load(); w > 0 {
		t.Fatalf("%d log records at warning level or above during the flood", w)
	}
}

// Attack 6: a token session over coap:// was only an address and port.
// Tokens over coap:// are refused unless TokensOverUDP is set; over
// coap+tcp:// they bind to the connection.
func TestHostileTokenOverUDPRefused(t *testing.T) {
	key := mustKey(t)
	keys, _ := identity.StaticKeys(key.Public())
	tv, err := identity.NewTokenVerifier(identity.VerifierConfig{Audience: testAudience, Keys: keys})
	must(t, err)
	srv := NewServer(ServerConfig{Tokens: tv})
	defer srv.Close()
	must(t, srv.Handle(Resource{Path: "/v1/telemetry", Methods: []Method{POST},
		Handler: func(ctx context.Context, r *Request) (any, error) { return "ok", nil }}))
	udp, err := srv.Listen("coap://127.0.0.1:0")
	must(t, err)
	tcp, err := srv.Listen("coap+tcp://127.0.0.1:0")
	must(t, err)
	cfg := ClientConfig{Signer: key, Audience: testAudience, Retry: RetryPolicy{Attempts: 1}}
	if c, err := Dial(ctx5(t), udp, cfg); err == nil {
		c.Close()
		t.Fatal("a token was accepted over coap://")
	} else if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("token over coap://: %v, want 4.01", err)
	}
	c, err := Dial(ctx5(t), tcp, cfg)
	must(t, err)
	defer c.Close()
	must(t, c.Post(ctx5(t), "/v1/telemetry", []reading{{"p", 1}}, nil))
}

// Attack 10: responses, ACKs and RSTs carrying a payload were dispatched
// as if they were requests. Now they reach no handler and get no answer.
func TestHostileNonRequestsDropped(t *testing.T) {
	f := newFixture(t, "coap", ServerConfig{})
	var calls atomic.Int32
	must(t, f.srv.Handle(Resource{Path: "/v1/count", Public: true, Methods: []Method{GET, POST},
		Handler: func(ctx context.Context, r *Request) (any, error) { calls.Add(1); return nil, nil }}))
	p := newRawPeer(t, f, "")
	for _, m := range []msg{
		{typ: message.Acknowledgement, code: codes.Content, path: "/v1/count", payload: []byte{1}},
		{typ: message.Acknowledgement, code: codes.Empty, payload: []byte{1}},
		{typ: message.Reset, code: codes.Empty, token: []byte{1, 2}},
		{typ: message.Reset, code: codes.Content, path: "/v1/count"},
		{typ: message.Confirmable, code: codes.Content, token: []byte{9}, path: "/v1/count", payload: []byte{0xa0}},
		{typ: message.NonConfirmable, code: codes.NotFound, token: []byte{9}, path: "/v1/count"},
		{typ: message.Confirmable, code: codes.Code(0xe1), token: []byte{9}, path: "/v1/count"}, // 7.01 over UDP
	} {
		m.mid = -1
		p.send(m)
		if r, ok := p.recv(150 * time.Millisecond); ok {
			t.Fatalf("%v %v answered with %v", m.typ, m.code, r.Code)
		}
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("handler called %d times by non-requests", n)
	}
	if r := p.call(msg{code: codes.GET, path: "/v1/count"}); r.Code != codes.Content {
		t.Fatalf("a real request after them: %v", r.Code)
	}
	legit(t, f)
}

// Attack 8: go-coap scans a UDP peer's whole response cache on every
// datagram it sends, so answering a flood (4.29 included) made the
// flooder's every datagram slower and starved other peers. A peer over
// its rate limit is now answered only a few times and then once a second.
func TestHostileRequestFlood(t *testing.T) {
	warns := &warnCounter{}
	f := newFixture(t, "coap", ServerConfig{RateLimit: RateLimit{PerSecond: 20, Burst: 20}, Logger: slog.New(warns)})
	p := newRawPeer(t, f, "127.0.4.1:0")
	n := scale(20000, 130000)
	var answers atomic.Int64
	done := make(chan struct{})
	go func() {
		buf := make([]byte, 2048)
		for {
			p.c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if _, err := p.c.Read(buf); err != nil {
				select {
				case <-done:
					return
				default:
					continue
				}
			}
			answers.Add(1)
		}
	}()
	// 10,000 requests a second, as measured; a tenth of that under the
	// race detector, which slows the server about tenfold.
	gap := 100 * time.Microsecond
	if raceEnabled {
		gap *= 10
		n /= 10
	}
	dev := f.dial(t, true)
	start := time.Now()
	var worst time.Duration
	for i := range n {
		p.send(msg{typ: message.NonConfirmable, code: codes.GET, token: []byte{1}, path: "/v1/status", mid: -1})
		if i%100 == 99 {
			time.Sleep(time.Until(start.Add(time.Duration(i+1) * gap)))
		}
		if i%(n/10) == 0 {
			t0 := time.Now()
			if err := dev.Post(ctx5(t), "/v1/telemetry", []reading{{"power", 1}}, nil); err != nil {
				t.Fatalf("legitimate device during the flood: %v", err)
			}
			worst = max(worst, time.Since(t0))
		}
	}
	elapsed := time.Since(start)
	close(done)
	legit(t, f)
	// 20 in the burst, 20/s after, plus noticeBurst and one notice a
	// second: everything else is dropped unanswered, and uncached.
	limit := int64(20+noticeBurst) + int64((elapsed.Seconds()+1)*21)
	if got := answers.Load(); got > limit {
		t.Fatalf("%d of %d flood requests answered in %v (bound %d)", got, n, elapsed, limit)
	}
	if w := warns.n.Load(); w > 0 {
		t.Fatalf("%d log records at warning level or above during the flood", w)
	}
	t.Logf("%d requests in %v, %d answered; slowest legitimate round trip during the flood %v", n, elapsed, answers.Load(), worst)
	// Measured before: 2.1 s. Anything over a second means a device's
	// datagram was lost behind the flood and retransmitted.
	if worst > time.Second {
		t.Fatalf("a device's round trip took %v during the flood", worst)
	}
}
