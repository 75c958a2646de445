package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/sensible-iot/sensible/device/identity"
)

// observeFixture is a coap:// fixture with a public observable resource
// and short CoAP retransmissions, so that an unanswered confirmable
// notification gives up in well under a second.
func observeFixture(t *testing.T, cfg ServerConfig) *fixture {
	f := &fixture{}
	*f = *newFixtureNoListen(t, cfg)
	f.srv.ackTimeout = 30 * time.Millisecond
	u, err := f.srv.Listen("coap://127.0.0.1:0")
	must(t, err)
	f.url, f.scheme = u, "coap"
	must(t, f.srv.Handle(Resource{Path: "/v1/obs", Public: true, Observable: true,
		Handler: func(ctx context.Context, r *Request) (any, error) { return 0, nil }}))
	return f
}

// newFixtureNoListen is newFixture's server before any listener, for
// tests that set internal knobs first.
func newFixtureNoListen(t *testing.T, cfg ServerConfig) *fixture {
	f := newFixture(t, "coap+tcp", cfg)
	return f
}

func (p *rawPeer) register(token []byte, obs uint32) message.Message {
	return p.call(msg{code: codes.GET, path: "/v1/obs", token: token, opts: []message.Option{uintOption(message.Observe, obs)}})
}

// Attack 7: Observe registrations leaked, were scanned linearly, had no
// per-peer cap, and those of vanished UDP peers were notified until the
// idle timeout. Now: a cap per connection, re-registration and
// deregistration by (connection, token), RST and unanswered confirmable
// notifications drop an observer, and a closed connection drops all of
// its own.
func TestHostileObserve(t *testing.T) {
	// Room in the unauthenticated quota for every vanished peer below,
	// so that all of them register.
	f := observeFixture(t, ServerConfig{MaxUnauthenticated: 2 * scale(300, 10000), UnauthenticatedIdle: 2 * time.Second})
	p := newRawPeer(t, f, "")
	max := f.srv.cfg.MaxObservations
	for i := range 3 * max {
		r := p.register([]byte{byte(i), 1}, 0)
		_, err := r.Options.Observe()
		if registered := err == nil; registered != (i < max) {
			t.Fatalf("registration %d: registered %v, cap %d", i+1, registered, max)
		}
	}
	if n := f.srv.obs.count(); n != max {
		t.Fatalf("%d registrations held, cap %d", n, max)
	}
	p.register([]byte{0, 1}, 0) // the same token again replaces
	p.register([]byte{1, 1}, 1) // deregistration
	if n := f.srv.obs.count(); n != max-1 {
		t.Fatalf("%d registrations after a re-registration and a deregistration, want %d", n, max-1)
	}

	// An RST to a notification ends that observation.
	if _, err := f.srv.Notify(ctx5(t), "/v1/obs", identity.ID{}, 1); err != nil {
		t.Fatal(err)
	}
	m, ok := p.recv(time.Second)
	if !ok {
		t.Fatal("no notification")
	}
	p.send(msg{typ: message.Reset, code: codes.Empty, mid: m.MessageID})
	waitFor(t, 2*time.Second, "the reset observer removed", func() bool { return f.srv.obs.count() == max-2 })

	// The peer goes silent: the confirmable notifications go unanswered,
	// and every observer is dropped.
	for range 2 * confirmEvery {
		f.srv.Notify(ctx5(t), "/v1/obs", identity.ID{}, 2)
	}
	waitFor(t, 5*time.Second, "a silent peer's observers dropped", func() bool { return f.srv.obs.count() == 0 })

	// Many vanished peers: all dropped, memory back. (Their sockets
	// are not kept by the test, so that the heap shows the server's.)
	before := heapLive()
	peers := scale(300, 10000)
	for i := range peers {
		q := &rawPeer{t: t, mid: uint16(i)}
		u, _ := url.Parse(f.url)
		raddr, err := net.ResolveUDPAddr("udp", u.Host)
		must(t, err)
		q.c, err = net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, byte(5+i/250), byte(1+i%250))}, raddr)
		must(t, err)
		q.register([]byte{7}, 0)
		q.c.Close()
	}
	if n := f.srv.obs.count(); n != peers {
		t.Fatalf("%d registrations from %d peers", n, peers)
	}
	for range 2 * confirmEvery {
		f.srv.Notify(ctx5(t), "/v1/obs", identity.ID{}, 3)
	}
	waitFor(t, 10*time.Second, "vanished observers dropped", func() bool { return f.srv.obs.count() == 0 })
	// Without observations they are unauthenticated peers like any
	// other, forgotten UnauthenticatedIdle after their last datagram.
	waitFor(t, 5*time.Second, "vanished peers forgotten", func() bool { return f.srv.unauth.len() <= 1 })
	waitFor(t, 5*time.Second, "go-coap let go of them", func() bool {
		f.srv.mu.RLock()
		defer f.srv.mu.RUnlock()
		return len(f.srv.live) <= 2
	})
	// What stays is map capacity sized for the peak (Go maps do not
	// shrink: go-coap's connections, its contexts' children, ours) and
	// the rate limiter's buckets until the sweeper finds them idle:
	// bound 4 MiB + 2 KiB per peer (was: 95 MiB held for 5 minutes).
	if grew, bound := int64(heapLive())-int64(before), int64(4<<20+2048*peers); grew > bound {
		t.Fatalf("live heap grew %d bytes after %d vanished observers (bound %d)", grew, peers, bound)
	}

	// A closed TCP connection takes its registrations with it, through
	// one hook per connection.
	tf := newFixture(t, "coap+tcp", ServerConfig{})
	must(t, tf.srv.Handle(Resource{Path: "/v1/obs", Public: true, Observable: true,
		Handler: func(ctx context.Context, r *Request) (any, error) { return 0, nil }}))
	c := tf.dial(t, false)
	for range 5 {
		if _, err := c.Observe(ctx5(t), "/v1/obs", func(Notification) {}); err != nil {
			t.Fatal(err)
		}
	}
	if n := tf.srv.obs.count(); n != 5 {
		t.Fatalf("%d registrations, want 5", n)
	}
	c.Close()
	waitFor(t, 3*time.Second, "a closed connection's registrations dropped", func() bool { return tf.srv.obs.count() == 0 })
	legit(t, tf)
}

// The authorization hook is asked on every way in, and Revoke closes
// every session of a device at once.
func TestHostileAuthorizeAndRevoke(t *testing.T) {
	for _, scheme := range allSchemes {
		t.Run(scheme, func(t *testing.T) {
			var refuse atomic.Bool
			var asked atomic.Int32
			var dev atomic.Value
			f := newFixture(t, scheme, ServerConfig{Authorize: func(ctx context.Context, p Peer) error {
				asked.Add(1)
				if p.Device != dev.Load() {
					return fmt.Errorf("unexpected device %s", p.Device)
				}
				if refuse.Load() {
					return errors.New("decommissioned")
				}
				return nil
			}})
			dev.Store(f.dev)
			cfg := f.config(t, true)
			cfg.Retry.Attempts = 1
			refuse.Store(true)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if c, err := Dial(ctx, f.url, cfg); err == nil {
				err = c.Post(ctx, "/v1/telemetry", []reading{{"p", 1}}, nil)
				c.Close()
				if err == nil {
					t.Fatal("a refused device was served")
				}
			}
			if asked.Load() == 0 {
				t.Fatal("Authorize was not asked")
			}
			refuse.Store(false)
			c := f.dial(t, true)
			must(t, c.Post(ctx5(t), "/v1/telemetry", []reading{{"p", 1}}, nil))
			c2 := f.dial(t, true)
			must(t, c2.Post(ctx5(t), "/v1/telemetry", []reading{{"p", 1}}, nil))
			refuse.Store(true)
			if n := f.srv.Revoke(f.dev); n != 2 {
				t.Fatalf("Revoke closed %d sessions, want 2", n)
			}
			waitFor(t, 3*time.Second, "the device's sessions gone", func() bool { return len(f.srv.devs.sessions(f.dev)) == 0 })
			if err := c.Post(ctx, "/v1/telemetry", []reading{{"p", 1}}, nil); err == nil {
				t.Fatal("a revoked device was served again")
			}
		})
	}
}

// The attacks that were already refused well, kept in the suite: each
// gets its answer and the device is served after it.
func TestHostileKnownAttacks(t *testing.T) {
	t.Run("CBOR bomb", func(t *testing.T) {
		f := newFixture(t, "coap+tcp", ServerConfig{})
		c := f.dial(t, true)
		bomb := append(bytes.Repeat([]byte{0x81}, 1000), 0) // 1000 nested arrays
		err := c.DoRaw(ctx5(t), POST, "/v1/telemetry", CBOR, bomb, nil)
		if !errors.Is(err, ErrBadRequest) {
			t.Fatalf("CBOR bomb: %v, want 4.00", err)
		}
		legit(t, f)
	})
	t.Run("malformed options", func(t *testing.T) {
		f := newFixture(t, "coap", ServerConfig{})
		p := newRawPeer(t, f, "")
		for _, d := range [][]byte{
			{0x40, 0x01, 0, 1, 0xf1, 0},         // reserved option delta 15
			{0x40, 0x01, 0, 2, 0xbd},            // extended length missing
			{0x41, 0x01, 0, 3, 1, 0xd0, 0xff},   // length past the end
			{0x40, 0x01, 0, 4, 0x0f, 0x00},      // reserved option length 15
			{0x40, 0x01, 0, 5, 0xb1, 'x', 0xff}, // payload marker, no payload
		} {
			p.c.Write(d)
			if r, ok := p.recv(100 * time.Millisecond); ok && r.Code.String() != "Empty" && r.Code < codes.BadRequest {
				t.Fatalf("%x answered %v", d, r.Code)
			}
		}
		legit(t, f)
	})
	t.Run("wrong PSK", func(t *testing.T) {
		f := newFixture(t, "coaps", ServerConfig{})
		cfg := f.config(t, true)
		cfg.PSK = bytes.Repeat([]byte{1}, PSKSize)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if c, err := Dial(ctx, f.url, cfg); err == nil {
			c.Close()
			t.Fatal("a wrong PSK completed the handshake")
		}
		legit(t, f)
	})
	t.Run("bad certificate", func(t *testing.T) {
		for _, scheme := range []string{"coaps+cert", "coaps+tcp"} {
			f := newFixture(t, scheme, ServerConfig{})
			other := newTestPKI(t, f.devKey)
			cfg := f.config(t, true)
			cfg.Certificate = &other.device
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if c, err := Dial(ctx, f.url, cfg); err == nil {
				err = c.Post(ctx, "/v1/telemetry", []reading{{"p", 1}}, nil)
				c.Close()
				if err == nil {
					t.Fatalf("%s: another manufacturer's device was served", scheme)
				}
			}
			cancel()
			legit(t, f)
		}
	})
	t.Run("token replay", func(t *testing.T) {
		f := newFixture(t, "coap+tcp", ServerConfig{})
		tok, err := identity.SignToken(f.devKey, identity.TokenParams{Audience: testAudience})
		must(t, err)
		a := f.dial(t, false)
		must(t, a.Post(ctx5(t), AuthPath, tok, nil))
		b := f.dial(t, false)
		if err := b.Post(ctx5(t), AuthPath, tok, nil); !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("replayed token: %v, want 4.01", err)
		}
		legit(t, f)
	})
}

// A TCP message header claiming a megabyte costs its sender 6 bytes; it
// must not cost the server a megabyte of its in-flight budget. Many
// connections that each send a CSM and such a header, and nothing more,
// leave room for a device's 2 KiB request and for a Block1 upload.
func TestHostileTCPHeaderOnly(t *testing.T) {
	f := newFixture(t, "coap+tcp", ServerConfig{MaxInFlightBytes: 4 << 20})
	must(t, f.srv.Handle(Resource{Path: "/v1/upload", Methods: []Method{POST}, Public: true, MaxBody: 8 << 10,
		Handler: func(ctx context.Context, r *Request) (any, error) { return len(r.Body), nil }}))
	udp, err := f.srv.Listen("coap://127.0.0.1:0")
	must(t, err)
	const claim = 1<<20 - 100
	ext := uint32(claim - 65805)
	header := []byte{0x00, 0xe1, 0xf0, byte(ext >> 24), byte(ext >> 16), byte(ext >> 8), byte(ext), 0x02}
	n := scale(66, 1000)
	for i := range n {
		c, err := dialerFrom(fmt.Sprintf("127.0.%d.%d", 20+i/250, 1+i%250)).Dial("tcp", hostPort(t, f.url))
		must(t, err)
		t.Cleanup(func() { c.Close() })
		_, err = c.Write(header)
		must(t, err)
	}
	time.Sleep(200 * time.Millisecond)
	c := f.dial(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var got int
	if err := c.Post(ctx, "/v1/upload", bytes.Repeat([]byte{1}, 2048), &got); err != nil {
		t.Fatalf("a 2 KiB request while %d headers wait: %v", n, err)
	}
	u, err := Dial(ctx5(t), udp, ClientConfig{})
	must(t, err)
	defer u.Close()
	if err := u.Post(ctx, "/v1/upload", bytes.Repeat([]byte{1}, 4096), &got); err != nil {
		t.Fatalf("a Block1 upload while %d headers wait: %v", n, err)
	}
	legit(t, f)
}

// A reassembled body whose request go-coap answers from its cache (a
// reused message ID) never reaches a handler; its bytes still come back
// to the in-flight budget, within RequestTimeout and a few seconds.
func TestHostileBlock1ReusedMID(t *testing.T) {
	const budget = 8 << 10
	f := newFixture(t, "coap", ServerConfig{MaxInFlightBytes: budget, RequestTimeout: time.Second, RateLimit: RateLimit{PerSecond: -1}})
	var calls atomic.Int32
	must(t, f.srv.Handle(Resource{Path: "/v1/upload", Methods: []Method{POST}, Public: true, MaxBody: 4096,
		Handler: func(ctx context.Context, r *Request) (any, error) { calls.Add(1); return len(r.Body), nil }}))
	p := newRawPeer(t, f, "")
	chunk := make([]byte, 1024)
	for i := range 3 * budget / len(chunk) {
		mid := int32(1000 + i)
		p.send(msg{typ: message.Confirmable, code: codes.GET, token: []byte{1}, path: "/v1/status", mid: mid})
		p.recv(time.Second)
		p.send(msg{typ: message.Confirmable, code: codes.POST, token: []byte{2}, path: "/v1/upload", mid: mid, payload: chunk,
			opts: []message.Option{blockOpt(0, false, 6), uintOption(message.ContentFormat, 60)}})
		p.recv(time.Second)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("handler called %d times: the reused message IDs were not answered from go-coap's cache", n)
	}
	waitFor(t, time.Second+handoffSlack+2*time.Second, "the budget came back", func() bool { return budgetFree(f.srv) })
	r := p.call(msg{code: codes.POST, path: "/v1/upload", payload: chunk,
		opts: []message.Option{blockOpt(0, false, 6), uintOption(message.ContentFormat, 60)}})
	if r.Code != codes.Changed {
		t.Fatalf("an upload after them: %v", r.Code)
	}
}

// A registration whose connection closes while its handler runs does not
// outlive the connection.
func TestHostileObserveCloseDuringRegistration(t *testing.T) {
	f := newFixture(t, "coap+tcp", ServerConfig{})
	var calls atomic.Int32
	must(t, f.srv.Handle(Resource{Path: "/v1/slow", Public: true, Observable: true,
		Handler: func(ctx context.Context, r *Request) (any, error) {
			calls.Add(1)
			time.Sleep(100 * time.Millisecond)
			return 0, nil
		}}))
	// CSM, then GET /v1/slow with Observe 0 and a token.
	get := []byte{0x00, 0xe1, 0x91, 0x01, 0x07, 0x60, 0x52, 'v', '1', 0x04, 's', 'l', 'o', 'w'}
	for i := range 20 {
		c, err := dialerFrom(fmt.Sprintf("127.0.30.%d", i+1)).Dial("tcp", hostPort(t, f.url))
		must(t, err)
		_, err = c.Write(get)
		must(t, err)
		time.Sleep(10 * time.Millisecond)
		c.Close()
	}
	waitFor(t, 3*time.Second, "every registration handled", func() bool { return calls.Load() == 20 })
	time.Sleep(200 * time.Millisecond)
	waitFor(t, 3*time.Second, "registrations of closed connections gone", func() bool { return f.srv.obs.count() == 0 })
	if _, err := f.srv.Notify(ctx5(t), "/v1/slow", identity.ID{}, 1); err != nil {
		t.Fatalf("Notify after the connections closed: %v", err)
	}
	legit(t, f)
}

// A device revoked while its handshake is under way (authorized just
// before the revocation) does not keep the session the handshake makes.
func TestHostileRevokeDuringHandshake(t *testing.T) {
	var calls atomic.Int32
	inHook := make(chan struct{})
	revoked := make(chan struct{})
	f := newFixture(t, "coaps", ServerConfig{Authorize: func(ctx context.Context, p Peer) error {
		if calls.Add(1) == 1 {
			close(inHook)
			<-revoked // authorized, but the device is revoked meanwhile
			return nil
		}
		return errors.New("revoked")
	}})
	cfg := f.config(t, true)
	cfg.Retry.Attempts = 1
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := Dial(ctx, f.url, cfg)
		if err == nil {
			err = c.Post(ctx, "/v1/telemetry", []reading{{"p", 1}}, nil)
			c.Close()
		}
		done <- err
	}()
	<-inHook
	f.srv.Revoke(f.dev)
	close(revoked)
	if err := <-done; err == nil {
		t.Fatal("a device revoked during its handshake was served")
	}
	if calls.Load() < 2 {
		t.Fatal("the session was not authorized again after the revocation")
	}
	waitFor(t, 2*time.Second, "no session of the revoked device", func() bool { return len(f.srv.devs.sessions(f.dev)) == 0 })
}

// TestConfirmNotifications: a resource with ConfirmNotifications sends
// every notification confirmable over UDP while the last is acknowledged;
// one without sends most non-confirmable.
func TestConfirmNotifications(t *testing.T) {
	f := observeFixture(t, ServerConfig{})
	must(t, f.srv.Handle(Resource{Path: "/v1/cmds", Public: true, Observable: true, ConfirmNotifications: true,
		Handler: func(ctx context.Context, r *Request) (any, error) { return 0, nil }}))
	p := newRawPeer(t, f, "")
	for _, c := range []struct {
		path string
		want message.Type
	}{{"/v1/cmds", message.Confirmable}, {"/v1/obs", message.NonConfirmable}} {
		tok := []byte(c.path)
		p.call(msg{code: codes.GET, path: c.path, token: tok, opts: []message.Option{uintOption(message.Observe, 0)}})
		for i := range 3 {
			if _, err := f.srv.Notify(ctx5(t), c.path, identity.ID{}, i+1); err != nil {
				t.Fatal(err)
			}
			var got message.Message
			for {
				r, ok := p.recv(3 * time.Second)
				if !ok {
					t.Fatalf("%s: notification %d did not come", c.path, i+1)
				}
				if string(r.Token) == string(tok) {
					got = r
					break
				}
			}
			if got.Type != c.want {
				t.Fatalf("%s: notification %d is %v, want %v", c.path, i+1, got.Type, c.want)
			}
			if got.Type == message.Confirmable {
				p.send(msg{typ: message.Acknowledgement, code: codes.Empty, mid: got.MessageID})
				time.Sleep(20 * time.Millisecond) // the ACK is taken before the next is sent
			}
		}
	}
}
