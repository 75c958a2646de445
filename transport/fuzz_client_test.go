package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
)

// fuzzDeadline bounds one fuzzed exchange. Each exchange ends with a
// well-formed answer from the raw server (a fallback response, or a last
// notification), so it normally ends in milliseconds; the deadline only
// bounds an exchange the client cannot finish.
const fuzzDeadline = 2 * time.Second

// fuzzReply describes a fuzzed CoAP datagram sent to the client: its type
// (the low two bits of kind: CON, NON, ACK, RST), code, Observe option
// (absent when observe < 0), Content-Format option (absent when format <
// 0; its value written in the fewest bytes, up to four), options (raw
// option bytes after those, deltas counting on from the last) and payload.
// The token is the request's, and an ACK or RST carries the request's
// message ID, so that the client matches the reply to its request; a CON
// or NON carries the request's message ID xor sep (0x5a5a when zero), as
// the client drops a second message with the same ID.
type fuzzReply struct {
	kind    uint8
	code    uint8
	observe int32
	format  int32
	options []byte
	payload []byte
	sep     uint16
}

// encode returns the datagram answering a request with token tok and
// message ID mid.
func (r fuzzReply) encode(tok []byte, mid uint16) []byte {
	typ := r.kind & 3
	if typ != byte(message.Acknowledgement) && typ != byte(message.Reset) {
		if r.sep == 0 {
			r.sep = 0x5a5a
		}
		mid ^= r.sep // a separate response has a message ID of its own
	}
	b := []byte{0x40 | typ<<4 | byte(len(tok)), r.code, byte(mid >> 8), byte(mid)}
	b = append(b, tok...)
	last := 0
	opt := func(id int, v uint32) {
		var val [4]byte
		binary.BigEndian.PutUint32(val[:], v)
		n := 4
		for n > 0 && val[4-n] == 0 {
			n--
		}
		b = append(b, byte(id-last)<<4|byte(n))
		b = append(b, val[4-n:]...)
		last = id
	}
	if r.observe >= 0 {
		opt(int(message.Observe), uint32(r.observe))
	}
	if r.format >= 0 {
		opt(int(message.ContentFormat), uint32(r.format))
	}
	b = append(b, r.options...)
	if len(r.payload) > 0 {
		b = append(append(b, 0xff), r.payload...)
	}
	return b
}

// decoded returns a datagram as go-coap reads it, or nil if it cannot.
func decoded(datagram []byte) *message.Message {
	m := message.Message{Options: make(message.Options, 0, 16)}
	for {
		_, err := coder.DefaultCoder.Decode(datagram, &m)
		if errors.Is(err, message.ErrOptionsTooSmall) {
			m.Options = make(message.Options, 0, 2*cap(m.Options))
			continue
		}
		if err != nil {
			return nil
		}
		return &m
	}
}

// contentFormat returns the reply's Content-Format, or -1.
func contentFormat(m *message.Message) int {
	cf, err := m.Options.ContentFormat()
	if err != nil {
		return -1
	}
	return int(cf)
}

// fuzzServer is a UDP socket on loopback that answers each request it reads
// with the datagrams answer returns for the request's token and message ID.
type fuzzServer struct {
	conn *net.UDPConn
	wg   sync.WaitGroup

	mu   sync.Mutex
	peer *net.UDPAddr // where the last request came from
}

// send sends datagrams to the client that sent the last request.
func (s *fuzzServer) send(datagrams ...[]byte) {
	s.mu.Lock()
	peer := s.peer
	s.mu.Unlock()
	for _, d := range datagrams {
		s.conn.WriteToUDP(d, peer)
	}
}

func newFuzzServer(t *testing.T, answer func(tok []byte, mid uint16, req []byte) [][]byte) *fuzzServer {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &fuzzServer{conn: conn}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				return // closed
			}
			req := buf[:n]
			if n < 4 || req[0]>>6 != 1 || req[1] == 0 || int(req[0]&0xf) > n-4 {
				continue // an empty ACK or RST from the client, or garbage
			}
			s.mu.Lock()
			s.peer = from
			s.mu.Unlock()
			tok := append([]byte(nil), req[4:4+req[0]&0xf]...)
			for _, d := range answer(tok, binary.BigEndian.Uint16(req[2:]), req) {
				conn.WriteToUDP(d, from)
			}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		s.wg.Wait()
	})
	return s
}

func (s *fuzzServer) url() string { return "coap://" + s.conn.LocalAddr().String() }

// isObserve reports whether req (a raw request) carries an Observe option
// of value 0: a registration.
func isObserve(req []byte) bool {
	m := decoded(req)
	if m == nil {
		return false
	}
	v, err := m.Options.Observe()
	return err == nil && v == 0
}

// checkClientError fails t unless err is nil, an *Error, a *DecodeError,
// one of the typed errors of a reply the client cannot use
// (ErrUnexpectedFormat, ErrReset, ErrNotObservable), or the context's
// deadline.
func checkClientError(t *testing.T, err error) {
	t.Helper()
	var e *Error
	var de *DecodeError
	switch {
	case err == nil, errors.As(err, &e), errors.As(err, &de) && errors.Is(err, ErrDecode),
		errors.Is(err, ErrUnexpectedFormat), errors.Is(err, ErrReset), errors.Is(err, ErrNotObservable),
		errors.Is(err, context.DeadlineExceeded):
	default:
		t.Fatalf("error %q (%T) is not one of the client's typed errors", err, err)
	}
}

// FuzzClientResponse answers a client's GET or POST with a fuzzed
// datagram, then with a well-formed 2.05 "fallback" that the client takes
// only if it did not take the fuzzed one. The client must not panic, must
// return within the deadline, and must return nil (only for a 2.xx reply),
// an *Error carrying the reply's code, a *DecodeError, ErrUnexpectedFormat
// (only for a 2.xx reply in another format) or ErrReset (only for an empty
// reply). Seeds are in testdata/fuzz/FuzzClientResponse.
//
// Regression seeds gocoap-crash-*: with go-coap v3.8.0 a datagram with a
// request's token and a request code or 2.31 Continue (such as CON GET
// with an empty Block2) crashed the client in go-coap's block-wise layer
// (a nil body in createSendingMessage); the client's filter now drops
// them before go-coap sees them.
func FuzzClientResponse(f *testing.F) {
	f.Fuzz(func(t *testing.T, post bool, kind, code uint8, observe, format int32, options, payload []byte) {
		r := fuzzReply{kind: kind, code: code, observe: observe, format: format, options: options, payload: payload}
		var sent record
		srv := newFuzzServer(t, func(tok []byte, mid uint16, _ []byte) [][]byte {
			fallback := fuzzReply{kind: uint8(message.Acknowledgement), code: uint8(codes.Content), observe: -1, format: int32(CBOR),
				payload: []byte{0x68, 'f', 'a', 'l', 'l', 'b', 'a', 'c', 'k'}}
			return [][]byte{sent.set(r.encode(tok, mid)), fallback.encode(tok, mid)}
		})
		ctx, cancel := context.WithTimeout(context.Background(), fuzzDeadline)
		defer cancel()
		c, err := Dial(ctx, srv.url(), ClientConfig{Retry: RetryPolicy{Attempts: 1}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var out any
		start := time.Now()
		if post {
			err = c.Post(ctx, "/v1/fuzz", map[string]int{"n": 1}, &out)
		} else {
			err = c.Get(ctx, "/v1/fuzz", &out)
		}
		if d := time.Since(start); d > fuzzDeadline+time.Second {
			t.Fatalf("client returned after %v", d)
		}
		m := decoded(sent.get())
		checkClientError(t, err)
		if out == "fallback" {
			return // the client did not take the fuzzed reply
		}
		var e *Error
		if errors.As(err, &e) && m != nil && e.Code != Code(m.Code) {
			t.Fatalf("error code %v, but the reply's code is %v", e.Code, Code(m.Code))
		}
		if errors.Is(err, ErrUnexpectedFormat) && (m == nil || !Code(m.Code).IsSuccess() || contentFormat(m) == int(CBOR)) {
			t.Fatalf("%v, from a reply that is not a 2.xx response in another format: %x", err, sent.get())
		}
		if errors.Is(err, ErrReset) && (m == nil || m.Code != codes.Empty) {
			t.Fatalf("%v, from a reply that is not empty: %x", err, sent.get())
		}
		if errors.Is(err, ErrNotObservable) {
			t.Fatalf("%v from a plain request", err)
		}
		if err == nil && (m == nil || !Code(m.Code).IsSuccess()) {
			t.Fatalf("success, with %v, from a reply that is not a 2.xx response: %x", out, sent.get())
		}
	})
}

// record holds the datagram the raw server sent, for the test to read.
type record struct {
	mu sync.Mutex
	b  []byte
}

func (r *record) set(b []byte) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.b = b
	return b
}

func (r *record) get() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.b
}

// FuzzClientNotification runs an Observe against a raw server. When first
// is set, the fuzzed datagram answers the registration itself; otherwise
// the registration succeeds and, once Observe has returned, the fuzzed
// datagram follows as a notification. Either way a last, well-formed
// notification follows, newer than any before it (when first is set, as
// an ACK that registers if the fuzzed datagram did not, and again as a
// notification). The client must not panic; Observe returns within the
// deadline with nil or a typed error (checkClientError); each
// notification decodes or fails with a typed error; and the last
// notification arrives unless the fuzzed datagram ended the observation.
// Seeds are in
// testdata/fuzz/FuzzClientNotification, with the regression seeds of the
// go-coap crash that FuzzClientResponse describes.
func FuzzClientNotification(f *testing.F) {
	f.Fuzz(func(t *testing.T, first bool, kind, code uint8, observe, format int32, options, payload []byte) {
		r := fuzzReply{kind: kind, code: code, observe: observe, format: format, options: options, payload: payload}
		var sent record
		// lasts returns the datagrams that follow the fuzzed one: the last
		// notification, with a sequence number newer than the fuzzed
		// datagram's and again with one newer than the registration's,
		// for the client may or may not have taken the fuzzed one.
		lasts := func(tok []byte, mid uint16, fuzzed []byte) [][]byte {
			seq, ok := optionObserve(decoded(fuzzed))
			if !ok {
				seq = 2
			}
			last := fuzzReply{kind: uint8(message.NonConfirmable), code: uint8(codes.Content), observe: int32((seq + 2) & 0xffffff),
				format: int32(CBOR), payload: []byte{0x64, 'l', 'a', 's', 't'}, sep: 0x0f0f}
			again := last
			again.observe, again.sep = 3, 0x0e0e
			if !first {
				return [][]byte{last.encode(tok, mid), again.encode(tok, mid)}
			}
			// The client waits for an ACK to its registration: when the
			// fuzzed datagram is none, lastACK is, and registers.
			lastACK := last
			lastACK.kind, lastACK.observe = uint8(message.Acknowledgement), int32((seq+1)&0xffffff)
			return [][]byte{lastACK.encode(tok, mid), last.encode(tok, mid)}
		}
		var reg struct {
			sync.Mutex
			tok []byte
			mid uint16
		}
		srv := newFuzzServer(t, func(tok []byte, mid uint16, req []byte) [][]byte {
			if !isObserve(req) {
				// A deregistration: answer it plainly.
				return [][]byte{fuzzReply{kind: uint8(message.Acknowledgement), code: uint8(codes.Content), observe: -1, format: -1}.encode(tok, mid)}
			}
			if first {
				fuzzed := sent.set(r.encode(tok, mid))
				return append([][]byte{fuzzed}, lasts(tok, mid, fuzzed)...)
			}
			reg.Lock()
			reg.tok, reg.mid = tok, mid
			reg.Unlock()
			registered := fuzzReply{kind: uint8(message.Acknowledgement), code: uint8(codes.Content), observe: 2, format: int32(CBOR), payload: []byte{0x00}}
			return [][]byte{registered.encode(tok, mid)}
		})
		ctx, cancel := context.WithTimeout(context.Background(), fuzzDeadline)
		defer cancel()
		c, err := Dial(ctx, srv.url(), ClientConfig{Retry: RetryPolicy{Attempts: 1}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		gotLast := make(chan struct{})
		var once sync.Once
		start := time.Now()
		obs, err := c.Observe(ctx, "/v1/fuzz", func(n Notification) {
			if n.Err != nil {
				// The fuzzed datagram ended the observation, or the
				// client lost the server.
				var e *Error
				if !errors.As(n.Err, &e) && !errors.Is(n.Err, ErrNotObservable) && !errors.Is(n.Err, ErrMissedNotifications) {
					t.Errorf("notification error %q (%T) is not typed", n.Err, n.Err)
				}
				return
			}
			var v any
			if err := n.Decode(&v); err != nil {
				if !errors.Is(err, ErrDecode) && !errors.Is(err, ErrUnexpectedFormat) {
					t.Errorf("notification decode error %q (%T) is not a decode error", err, err)
				}
				return
			}
			if v == "last" {
				once.Do(func() { close(gotLast) })
			}
		})
		if d := time.Since(start); d > fuzzDeadline+time.Second {
			t.Fatalf("Observe returned after %v", d)
		}
		if err != nil {
			checkClientError(t, err)
			if m := decoded(sent.get()); errors.Is(err, ErrNotObservable) && m != nil {
				if _, ok := optionObserve(m); ok && Code(m.Code).IsSuccess() {
					t.Fatalf("%v, from a 2.xx reply with Observe: %x", err, sent.get())
				}
			}
			return
		}
		defer obs.Cancel(ctx)
		if !first {
			// The registration is done (Observe returned), so the server
			// has read it and set reg.
			reg.Lock()
			tok, mid := reg.tok, reg.mid
			reg.Unlock()
			fuzzed := sent.set(r.encode(tok, mid))
			srv.send(append([][]byte{fuzzed}, lasts(tok, mid, fuzzed)...)...)
		}
		if m := decoded(sent.get()); m != nil {
			if _, ok := optionObserve(m); !ok || !Code(m.Code).IsSuccess() || m.Type == message.Reset {
				return // a response without Observe, an error or a reset may end the observation
			}
		}
		select {
		case <-gotLast:
		case <-ctx.Done():
			t.Fatalf("the last notification never arrived after %x", sent.get())
		}
	})
}

func optionObserve(m *message.Message) (uint32, bool) {
	if m == nil {
		return 0, false
	}
	v, err := m.Options.Observe()
	return v, err == nil
}
