package transport

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/sensible-iot/sensible/internal/codec"
)

// The sentinels are constants: this does not compile if one is a
// variable, which a caller could change.
const (
	_ = ErrBadRequest
	_ = ErrUnauthorized
	_ = ErrForbidden
	_ = ErrNotFound
	_ = ErrMethodNotAllowed
	_ = ErrTooLarge
	_ = ErrUnsupportedFormat
	_ = ErrTooManyRequests
	_ = ErrInternal
	_ = ErrUnavailable
	_ = ErrClosed
	_ = ErrBadURL
	_ = ErrAddressInUse
	_ = ErrUnreachable
	_ = ErrDecode
	_ = ErrUnexpectedFormat
	_ = ErrReset
	_ = ErrNotObservable
	_ = ErrMissedNotifications
)

func TestErrorSentinels(t *testing.T) {
	e := Errorf(Forbidden, "no consent")
	if !errors.Is(e, ErrForbidden) || errors.Is(e, ErrNotFound) || !errors.Is(ErrForbidden, ErrForbidden) {
		t.Fatal("code sentinels do not match by code")
	}
	if !errors.Is(e, &Error{Code: Forbidden}) {
		t.Fatal("an *Error does not match another of its code")
	}
	var target *Error
	if errors.As(ErrForbidden, &target) {
		t.Fatal("a sentinel is an *Error whose fields could be changed")
	}
	if ErrForbidden.Error() != "transport: 4.03" || e.Error() != "transport: 4.03 no consent" {
		t.Fatalf("texts %q, %q", ErrForbidden.Error(), e.Error())
	}
	de := &DecodeError{Field: "value", Reason: "codec: does not fit the expected type"}
	if !errors.Is(de, ErrDecode) || de.Error() != `transport: cannot decode the CBOR body: does not fit the expected type (field "value")` {
		t.Fatalf("DecodeError %q", de)
	}
}

func TestListenErrors(t *testing.T) {
	s := NewServer(ServerConfig{})
	defer s.Close()
	u, err := s.Listen("coap://127.0.0.1:0")
	must(t, err)
	for _, tc := range []struct {
		addr string
		want error
	}{
		{u, ErrAddressInUse},
		{"http://127.0.0.1:0", ErrBadURL},
		{"127.0.0.1:5683", ErrBadURL},
		{"", ErrBadURL},
		{"coap://[::1", ErrBadURL},
		{"coaps://127.0.0.1:0?auth=magic", ErrBadURL},
	} {
		if _, err := s.Listen(tc.addr); !errors.Is(err, tc.want) {
			t.Errorf("Listen(%q) = %v, want %v", tc.addr, err, tc.want)
		}
	}
	tcp, err := s.Listen("coap+tcp://127.0.0.1:0")
	must(t, err)
	if _, err := s.Listen(tcp); !errors.Is(err, ErrAddressInUse) {
		t.Errorf("Listen(%q) again = %v, want ErrAddressInUse", tcp, err)
	}
	for _, addr := range []string{"", "coap://", "http://example.com", "coap//host"} {
		if _, err := Dial(ctx5(t), addr, ClientConfig{}); !errors.Is(err, ErrBadURL) {
			t.Errorf("Dial(%q) = %v, want ErrBadURL", addr, err)
		}
	}
	// A server that is not there: over TCP the dial fails.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	addr := l.Addr().String()
	l.Close()
	if _, err := Dial(ctx5(t), "coap+tcp://"+addr, ClientConfig{}); !errors.Is(err, ErrUnreachable) {
		t.Errorf("Dial of a closed port = %v, want ErrUnreachable", err)
	}
}

// TestDiagnostics: an error's diagnostic goes out as UTF-8 text without a
// content-format (RFC 7252 section 5.5.2), with Max-Age when the handler
// set RetryAfter, and the client reads it, and the CBOR form of older
// servers, and cleans what it shows.
func TestDiagnostics(t *testing.T) {
	f := newFixture(t, "coap", ServerConfig{})
	must(t, f.srv.Handle(Resource{Path: "/v1/busy", Public: true,
		Handler: func(context.Context, *Request) (any, error) {
			return nil, &Error{Code: ServiceUnavailable, Diagnostic: "back in a minute, é", RetryAfter: 1500 * time.Millisecond}
		}}))
	p := newRawPeer(t, f, "")
	r := p.call(msg{code: codes.GET, path: "/v1/nothing"})
	if r.Code != codes.NotFound || contentFormat(&r) != -1 || string(r.Payload) != "no resource /v1/nothing" {
		t.Fatalf("4.04 with content-format %d and payload %q, want none and the text", contentFormat(&r), r.Payload)
	}
	r = p.call(msg{code: codes.GET, path: "/v1/busy"})
	maxAge, err := r.Options.GetUint32(message.MaxAge)
	if r.Code != codes.ServiceUnavailable || contentFormat(&r) != -1 || string(r.Payload) != "back in a minute, é" || err != nil || maxAge != 2 {
		t.Fatalf("5.03 %q, content-format %d, Max-Age %d (%v)", r.Payload, contentFormat(&r), maxAge, err)
	}

	c := f.dial(t, false)
	err = c.Get(ctx5(t), "/v1/nothing", nil)
	var e *Error
	if !errors.As(err, &e) || e.Code != NotFound || e.Diagnostic != "no resource /v1/nothing" {
		t.Fatalf("client error %#v", err)
	}

	// Older servers, and others.
	cborText, _ := codec.Marshal("old server")
	for _, tc := range []struct {
		name    string
		format  int32
		payload []byte
		want    string
	}{
		{"CBOR text", int32(CBOR), cborText, "old server"},
		{"text/plain", 0, []byte("plain"), "plain"},
		{"control characters", -1, []byte("a\x1b[31mb\nc"), "a\uFFFD[31mb\uFFFDc"},
		{"invalid UTF-8", -1, []byte("a\xffb"), "a\uFFFDb"},
		{"CBOR that is not text", int32(CBOR), []byte{0x01}, ""},
		{"another format", 50, []byte(`{"a":1}`), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFuzzServer(t, func(tok []byte, mid uint16, _ []byte) [][]byte {
				r := fuzzReply{kind: uint8(message.Acknowledgement), code: uint8(codes.Forbidden), observe: -1, format: tc.format, payload: tc.payload}
				return [][]byte{r.encode(tok, mid)}
			})
			c, err := Dial(ctx5(t), srv.url(), ClientConfig{})
			must(t, err)
			defer c.Close()
			err = c.Get(ctx5(t), "/x", nil)
			var e *Error
			if !errors.As(err, &e) || e.Code != Forbidden || e.Diagnostic != tc.want {
				t.Fatalf("err = %#v, want 4.03 with diagnostic %q", err, tc.want)
			}
		})
	}
}

// TestTolerantResponses: a server may add fields to responses and
// notifications without breaking a client that does not know them;
// requests stay strict.
func TestTolerantResponses(t *testing.T) {
	type newer struct {
		Mode  string `cbor:"mode"`
		Temp  int    `cbor:"temp"`
		Added string `cbor:"added"`
	}
	f := newFixture(t, "coap+tcp", ServerConfig{})
	must(t, f.srv.Handle(Resource{Path: "/v1/state/desired", Observable: true, Methods: []Method{GET, POST},
		Handler: func(ctx context.Context, r *Request) (any, error) {
			if r.Method == POST {
				var d desired
				return nil, r.Decode(&d)
			}
			return newer{Mode: "cool", Temp: 21, Added: "later"}, nil
		}}))
	c := f.dial(t, true)
	var d desired
	if err := c.Get(ctx5(t), "/v1/state/desired", &d); err != nil || d.Temp != 21 {
		t.Fatalf("GET of a newer value = %+v, %v", d, err)
	}
	got := make(chan error, 4)
	obs, err := c.Observe(ctx5(t), "/v1/state/desired", func(n Notification) {
		var d desired
		got <- n.Decode(&d)
	})
	must(t, err)
	defer obs.Cancel(ctx5(t))
	waitObservers(t, f.srv, "/v1/state/desired", 1)
	if _, err := f.srv.Notify(ctx5(t), "/v1/state/desired", f.dev, newer{Temp: 22, Added: "x"}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case err := <-got:
			must(t, err)
		case <-time.After(3 * time.Second):
			t.Fatal("no notification")
		}
	}
	err = c.Post(ctx5(t), "/v1/state/desired", newer{Temp: 1, Added: "x"}, nil)
	if !errors.Is(err, ErrBadRequest) {
		t.Fatalf("a request with an unknown field: %v, want 4.00", err)
	}
	// A request field of the wrong type is named in the diagnostic.
	err = c.Post(ctx5(t), "/v1/state/desired", map[string]any{"temp": "warm"}, nil)
	var e *Error
	if !errors.As(err, &e) || e.Code != BadRequest || !strings.Contains(e.Diagnostic, `field "temp"`) {
		t.Fatalf("wrong type: %v, want 4.00 naming the field", err)
	}
}

// TestObserveConfirmable: over UDP and DTLS every eighth notification is
// confirmable; the client acknowledges it, so the server keeps the
// observer.
func TestObserveConfirmable(t *testing.T) {
	for _, scheme := range []string{"coap", "coaps"} {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{})
			f.srv.ackTimeout = 50 * time.Millisecond
			must(t, f.srv.Handle(Resource{Path: "/v1/commands", Observable: true,
				Handler: func(context.Context, *Request) (any, error) { return 0, nil }}))
			c := f.dial(t, true)
			got := make(chan int, 64)
			_, err := c.Observe(ctx5(t), "/v1/commands", func(n Notification) {
				var v int
				if n.Decode(&v) == nil {
					got <- v
				}
			})
			must(t, err)
			<-got
			waitObservers(t, f.srv, "/v1/commands", 1)
			ob := f.srv.obs.list("/v1/commands", f.dev)[0]
			start := time.Now()
			for i := 1; i <= 2*confirmEvery; i++ {
				if n, err := f.srv.Notify(ctx5(t), "/v1/commands", f.dev, i); n != 1 || err != nil {
					t.Fatalf("Notify %d = %d, %v", i, n, err)
				}
				select {
				case v := <-got:
					if v != i {
						t.Fatalf("notification %d, want %d", v, i)
					}
				case <-time.After(3 * time.Second):
					t.Fatalf("notification %d never arrived", i)
				}
			}
			// The confirmable ones were acknowledged: the server is not
			// waiting on one, and keeps the observer.
			waitFor(t, 3*time.Second, "acknowledgement", func() bool {
				ob.mu.Lock()
				defer ob.mu.Unlock()
				return !ob.pending && ob.lastCON.After(start)
			})
			if n := len(f.srv.obs.list("/v1/commands", f.dev)); n != 1 {
				t.Fatalf("%d observers after confirmable notifications, want 1", n)
			}
		})
	}
}

// TestObserveEnds: a notification with an error code, or without
// Observe, ends the observation; the handler is told, and not called
// again.
func TestObserveEnds(t *testing.T) {
	for _, tc := range []struct {
		name  string
		last  fuzzReply
		check func(error) bool
	}{
		{"error", fuzzReply{kind: uint8(message.NonConfirmable), code: uint8(codes.NotFound), observe: -1, format: -1, payload: []byte("gone")},
			func(err error) bool { return errors.Is(err, ErrNotFound) }},
		{"no Observe", fuzzReply{kind: uint8(message.NonConfirmable), code: uint8(codes.Content), observe: -1, format: int32(CBOR), payload: []byte{0x02}},
			func(err error) bool { return errors.Is(err, ErrNotObservable) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFuzzServer(t, func(tok []byte, mid uint16, req []byte) [][]byte {
				if !isObserve(req) {
					return nil
				}
				reg := fuzzReply{kind: uint8(message.Acknowledgement), code: uint8(codes.Content), observe: 2, format: int32(CBOR), payload: []byte{0x00}}
				next := fuzzReply{kind: uint8(message.NonConfirmable), code: uint8(codes.Content), observe: 3, format: int32(CBOR), payload: []byte{0x01}, sep: 1}
				last, after := tc.last, next
				last.sep, after.sep, after.observe, after.payload = 2, 3, 4, []byte{0x03}
				return [][]byte{reg.encode(tok, mid), next.encode(tok, mid), last.encode(tok, mid), after.encode(tok, mid)}
			})
			c, err := Dial(ctx5(t), srv.url(), ClientConfig{KeepAlive: -1})
			must(t, err)
			defer c.Close()
			var mu sync.Mutex
			var events []Notification
			_, err = c.Observe(ctx5(t), "/v1/x", func(n Notification) {
				mu.Lock()
				events = append(events, n)
				mu.Unlock()
			})
			must(t, err)
			time.Sleep(300 * time.Millisecond)
			mu.Lock()
			defer mu.Unlock()
			var vals []int
			var end error
			for i, n := range events {
				if n.Err != nil {
					if i != len(events)-1 {
						t.Fatalf("events after the end: %+v", events)
					}
					end = n.Err
					continue
				}
				var v int
				must(t, n.Decode(&v))
				vals = append(vals, v)
			}
			if !tc.check(end) {
				t.Fatalf("observation ended with %v", end)
			}
			// go-coap may hand over the datagrams out of order: a
			// value may be dropped as older than one delivered, or come
			// after the end, and then not at all. The values that carry
			// sequence numbers (0, 1, 3) must come in their order; a last
			// value without one (2) must be the last.
			seqd := vals
			if i := slices.Index(vals, 2); i >= 0 {
				if i != len(vals)-1 {
					t.Fatalf("values %v: a value after the last", vals)
				}
				seqd = vals[:i]
			}
			for i := 1; i < len(seqd); i++ {
				if seqd[i] <= seqd[i-1] {
					t.Fatalf("values %v out of order", vals)
				}
			}
			c.mu.Lock()
			n := len(c.observations)
			c.mu.Unlock()
			if n != 0 {
				t.Fatalf("the client keeps %d observations", n)
			}
		})
	}
}

// TestObserveSlowHandler: notifications wait for a busy handler; one that
// falls far behind is told so, loses older values and gets the latest,
// in order; and a handler may call the client.
func TestObserveSlowHandler(t *testing.T) {
	f := newFixture(t, "coap+tcp", ServerConfig{})
	must(t, f.srv.Handle(Resource{Path: "/v1/state/desired", Observable: true,
		Handler: func(context.Context, *Request) (any, error) { return 0, nil }}))
	c := f.dial(t, true)
	release := make(chan struct{})
	var mu sync.Mutex
	var vals []int
	missed := 0
	calls := 0
	_, err := c.Observe(ctx5(t), "/v1/state/desired", func(n Notification) {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if first {
			<-release
		}
		// A handler may use the client: here, on the connection that
		// carries the notifications.
		if err := c.Get(ctx5(t), "/v1/status", nil); err != nil {
			t.Errorf("GET from a handler: %v", err)
		}
		var v int
		err := n.Decode(&v)
		mu.Lock()
		defer mu.Unlock()
		if errors.Is(err, ErrMissedNotifications) {
			missed++
			return
		}
		vals = append(vals, v)
	})
	must(t, err)
	waitObservers(t, f.srv, "/v1/state/desired", 1)
	const n = 3 * maxQueued
	for i := 1; i <= n; i++ {
		if _, err := f.srv.Notify(ctx5(t), "/v1/state/desired", f.dev, i); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // let them all arrive
	close(release)
	waitFor(t, 3*time.Second, "the last value", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(vals) > 0 && vals[len(vals)-1] == n
	})
	mu.Lock()
	defer mu.Unlock()
	// The handler is slow for every event (it makes a request), so on a
	// loaded machine it may fall behind more than once.
	if missed == 0 || len(vals) > n-maxQueued {
		t.Fatalf("%d missed events and values %v; want at least one, and at most %d values", missed, vals, n-maxQueued)
	}
	for i := 1; i < len(vals); i++ {
		if vals[i] <= vals[i-1] {
			t.Fatalf("values out of order: %v", vals)
		}
	}
}

// TestObserveCancelAndClose: Cancel tells the server and stops the
// handler; Close ends every goroutine of the client.
func TestObserveCancelAndClose(t *testing.T) {
	for _, scheme := range allSchemes {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{})
			must(t, f.srv.Handle(Resource{Path: "/v1/a", Observable: true,
				Handler: func(context.Context, *Request) (any, error) { return 0, nil }}))
			c := f.dial(t, true)
			a, err := c.Observe(ctx5(t), "/v1/a", func(Notification) {})
			must(t, err)
			_, err = c.Observe(ctx5(t), "/v1/a", func(Notification) {})
			must(t, err)
			waitObservers(t, f.srv, "/v1/a", 2)
			must(t, a.Cancel(ctx5(t)))
			must(t, a.Cancel(ctx5(t)))
			waitObservers(t, f.srv, "/v1/a", 1)
			must(t, c.Close())
			if _, err := c.Observe(ctx5(t), "/v1/a", func(Notification) {}); !errors.Is(err, ErrClosed) {
				t.Fatalf("Observe after Close: %v", err)
			}
		})
	}
}
