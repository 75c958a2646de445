package transport

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
)

// TestRetryOnlyWhatMayNotHaveArrived counts how many times the server's
// handler runs for one call, for each way a call can fail: a request is
// sent again only when it may not have reached the server (a connection
// closed before the response), or the server asked for it (5.03, 4.29);
// never for a response the client cannot use or a local error.
func TestRetryOnlyWhatMayNotHaveArrived(t *testing.T) {
	for _, scheme := range []string{"coap", "coap+tcp"} {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{})
			var calls atomic.Int32
			// count serves path with fn, given the number of the call.
			count := func(path string, fn func(n int32) (any, error)) {
				must(t, f.srv.Handle(Resource{Path: path, Methods: []Method{POST},
					Handler: func(ctx context.Context, r *Request) (any, error) { return fn(calls.Add(1)) }}))
			}
			count("/v1/undecodable", func(int32) (any, error) { return map[string]any{"count": "many"}, nil })
			count("/v1/forbidden4", func(int32) (any, error) { return nil, Errorf(Forbidden, "no consent") })
			count("/v1/sentinel", func(int32) (any, error) { return nil, ErrForbidden })
			count("/v1/busy", func(n int32) (any, error) {
				if n == 1 {
					return nil, &Error{Code: ServiceUnavailable, Diagnostic: "busy", RetryAfter: time.Second}
				}
				return ack{Count: int(n)}, nil
			})
			count("/v1/long-busy", func(int32) (any, error) {
				return nil, &Error{Code: ServiceUnavailable, RetryAfter: time.Minute}
			})
			count("/v1/limited", func(n int32) (any, error) {
				if n == 1 {
					return nil, Errorf(TooManyRequests, "slow down")
				}
				return ack{Count: int(n)}, nil
			})
			count("/v1/dropped", func(n int32) (any, error) {
				if n == 1 {
					// The connection closes before the response.
					f.srv.Revoke(f.dev)
					time.Sleep(50 * time.Millisecond)
				}
				return ack{Count: int(n)}, nil
			})
			cfg := f.config(t, true)
			// Over UDP a revoked session is a request without a response,
			// which the client takes for lost after Timeout.
			cfg.Retry = RetryPolicy{Base: 10 * time.Millisecond, Timeout: time.Second}
			c, err := Dial(ctx5(t), f.url, cfg)
			must(t, err)
			defer c.Close()

			cases := []struct {
				path  string
				in    any
				calls int32
				check func(err error) bool
				min   time.Duration // the least the call takes
			}{
				{"/v1/undecodable", 1, 1, func(err error) bool {
					var de *DecodeError
					return errors.Is(err, ErrDecode) && errors.As(err, &de) && de.Field == "count"
				}, 0},
				{"/v1/forbidden4", 1, 1, func(err error) bool { return errors.Is(err, ErrForbidden) }, 0},
				{"/v1/sentinel", 1, 1, func(err error) bool { return errors.Is(err, ErrForbidden) }, 0},
				{"/v1/busy", 1, 2, func(err error) bool { return err == nil }, time.Second},
				{"/v1/limited", 1, 2, func(err error) bool { return err == nil }, 0},
				{"/v1/dropped", 1, 2, func(err error) bool { return err == nil }, 0},
				// A local error: the body cannot be encoded.
				{"/v1/telemetry", make(chan int), 0, func(err error) bool { return err != nil && !errors.Is(err, ErrUnreachable) }, 0},
			}
			for _, tc := range cases {
				t.Run(tc.path, func(t *testing.T) {
					calls.Store(0)
					var out ack
					start := time.Now()
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					err := c.Post(ctx, tc.path, tc.in, &out)
					if !tc.check(err) {
						t.Fatalf("err = %v", err)
					}
					if n := calls.Load(); n != tc.calls {
						t.Fatalf("handler ran %d times, want %d (err %v)", n, tc.calls, err)
					}
					if d := time.Since(start); d < tc.min {
						t.Fatalf("retried after %v, before the server's Max-Age of %v", d, tc.min)
					}
				})
			}
			t.Run("Max-Age past the deadline", func(t *testing.T) {
				calls.Store(0)
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				start := time.Now()
				err := c.Post(ctx, "/v1/long-busy", 1, nil)
				var e *Error
				if !errors.Is(err, ErrUnavailable) || !errors.As(err, &e) || e.RetryAfter != time.Minute {
					t.Fatalf("err = %#v, want 5.03 with RetryAfter 1m", err)
				}
				if n, d := calls.Load(), time.Since(start); n != 1 || d > time.Second {
					t.Fatalf("handler ran %d times in %v; want once, at once", n, d)
				}
			})
		})
	}
}

// TestRetryRawReplies counts the requests a raw UDP server receives for
// replies our server never sends: a body in another content-format, a
// Reset, a 2.05 whose CBOR does not fit, and no response at all.
func TestRetryRawReplies(t *testing.T) {
	cbor := int32(CBOR)
	for _, tc := range []struct {
		name  string
		reply func(n int) *fuzzReply // nil: no answer
		want  int
		check func(err error) bool
	}{
		{"wrong content-format", func(int) *fuzzReply {
			return &fuzzReply{kind: uint8(message.Acknowledgement), code: uint8(codes.Content), observe: -1, format: 0, payload: []byte("plain text")}
		}, 1, func(err error) bool { return errors.Is(err, ErrUnexpectedFormat) }},
		{"no content-format", func(int) *fuzzReply {
			return &fuzzReply{kind: uint8(message.Acknowledgement), code: uint8(codes.Content), observe: -1, format: -1, payload: []byte{0x01}}
		}, 1, func(err error) bool { return errors.Is(err, ErrUnexpectedFormat) }},
		{"undecodable", func(int) *fuzzReply {
			return &fuzzReply{kind: uint8(message.Acknowledgement), code: uint8(codes.Content), observe: -1, format: cbor, payload: []byte{0x82, 0x01}}
		}, 1, func(err error) bool { return errors.Is(err, ErrDecode) }},
		{"reset", func(int) *fuzzReply {
			return &fuzzReply{kind: uint8(message.Reset), code: 0, observe: -1, format: -1}
		}, 1, func(err error) bool { return errors.Is(err, ErrReset) }},
		{"bad request", func(int) *fuzzReply {
			return &fuzzReply{kind: uint8(message.Acknowledgement), code: uint8(codes.BadRequest), observe: -1, format: -1, payload: []byte("no")}
		}, 1, func(err error) bool { return errors.Is(err, ErrBadRequest) }},
		{"no response, then one", func(n int) *fuzzReply {
			if n == 1 {
				return nil
			}
			return &fuzzReply{kind: uint8(message.Acknowledgement), code: uint8(codes.Changed), observe: -1, format: cbor, payload: []byte{0xa1, 0x65, 'c', 'o', 'u', 'n', 't', 0x02}}
		}, 2, func(err error) bool { return err == nil }},
		{"no response ever", func(int) *fuzzReply { return nil }, 3, func(err error) bool { return errors.Is(err, ErrUnreachable) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			seen := map[uint16]bool{} // requests, by message ID: go-coap's retransmissions are one request
			srv := newFuzzServer(t, func(tok []byte, mid uint16, req []byte) [][]byte {
				mu.Lock()
				if m := decoded(req); m == nil || m.Code != codes.POST {
					mu.Unlock()
					return nil
				}
				seen[mid] = true
				n := len(seen)
				mu.Unlock()
				r := tc.reply(n)
				if r == nil {
					return nil
				}
				return [][]byte{r.encode(tok, mid)}
			})
			c, err := Dial(ctx5(t), srv.url(), ClientConfig{Retry: RetryPolicy{Attempts: 3, Base: 10 * time.Millisecond, Timeout: 300 * time.Millisecond}})
			must(t, err)
			defer c.Close()
			var out ack
			err = c.Post(ctx5(t), "/v1/x", 1, &out)
			if !tc.check(err) {
				t.Fatalf("err = %v", err)
			}
			mu.Lock()
			n := len(seen)
			mu.Unlock()
			if n != tc.want {
				t.Fatalf("server received %d requests, want %d (err %v)", n, tc.want, err)
			}
		})
	}
}

// TestRetryCallerDeadline: when the caller's context ends, the error says
// so, and not that the server is unreachable.
func TestRetryCallerDeadline(t *testing.T) {
	srv := newFuzzServer(t, func([]byte, uint16, []byte) [][]byte { return nil })
	c, err := Dial(ctx5(t), srv.url(), ClientConfig{})
	must(t, err)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err = c.Post(ctx, "/v1/x", 1, nil)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrUnreachable) {
		t.Fatalf("err = %v, want the caller's deadline", err)
	}
}
