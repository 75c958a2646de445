package transport

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/device/identity"
)

// testAudience is the token audience of the test servers.
const testAudience = "coaps://cloud.sensible.test"

// plainSchemes are the transports without client authentication.
var plainSchemes = []string{"coap", "coap+tcp"}

type reading struct {
	Stream string  `cbor:"stream"`
	Value  float64 `cbor:"value"`
}

type ack struct {
	Device string `cbor:"device"`
	Count  int    `cbor:"count"`
}

type fixture struct {
	srv    *Server
	url    string
	devKey crypto.Signer
	dev    identity.ID
}

func newFixture(t *testing.T, scheme string, cfg ServerConfig) *fixture {
	t.Helper()
	f := &fixture{}
	var err error
	f.devKey, err = identity.GenerateKey(identity.P256)
	if err != nil {
		t.Fatal(err)
	}
	f.dev, _ = identity.IDOf(f.devKey)
	keys, _ := identity.StaticKeys(f.devKey.Public())
	if cfg.Tokens == nil {
		cfg.Tokens, err = identity.NewTokenVerifier(identity.VerifierConfig{Audience: testAudience, Keys: keys})
		if err != nil {
			t.Fatal(err)
		}
	}
	f.srv = NewServer(cfg)
	t.Cleanup(func() { f.srv.Close() })
	f.url, err = f.srv.Listen(scheme + "://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	must(t, f.srv.Handle(Resource{
		Path: "/v1/telemetry", Methods: []Method{POST}, Formats: []Format{CBOR, SenMLCBOR}, MaxBody: 1024,
		Attributes: []string{`rt="sensible.telemetry"`},
		Handler: Typed(func(ctx context.Context, in []reading) (ack, error) {
			dev, _ := DeviceFrom(ctx)
			return ack{Device: dev.String(), Count: len(in)}, nil
		}),
	}))
	must(t, f.srv.Handle(Resource{
		Path: "/v1/status", Public: true,
		Handler: func(ctx context.Context, r *Request) (any, error) { return "ok", nil },
	}))
	must(t, f.srv.Handle(Resource{
		Path: "/v1/forbidden", Methods: []Method{POST},
		Handler: func(ctx context.Context, r *Request) (any, error) {
			return nil, Errorf(Forbidden, "no consent for purpose %q", "analytics")
		},
	}))
	return f
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) dial(t *testing.T, signer crypto.Signer) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, f.url, ClientConfig{Signer: signer, Audience: testAudience})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestConformance(t *testing.T) {
	for _, scheme := range plainSchemes {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{})
			anon := f.dial(t, nil)
			authed := f.dial(t, f.devKey)
			batch := []reading{{"power", 41.5}, {"power", 42}}

			t.Run("request/response", func(t *testing.T) {
				var got ack
				if err := authed.Post(ctx5(t), "/v1/telemetry", batch, &got); err != nil {
					t.Fatal(err)
				}
				if got.Device != f.dev.String() || got.Count != 2 {
					t.Fatalf("got %+v, want device %s count 2", got, f.dev)
				}
				var s string
				if err := anon.Get(ctx5(t), "/v1/status", &s); err != nil || s != "ok" {
					t.Fatalf("public GET = %q, %v", s, err)
				}
			})
			t.Run("well-known core", func(t *testing.T) {
				cf, body, err := anon.GetRaw(ctx5(t), "/.well-known/core")
				if err != nil {
					t.Fatal(err)
				}
				want := `</v1/auth>;rt="sensible.auth";ct=60,</v1/forbidden>;ct=60,</v1/status>;ct=60,</v1/telemetry>;rt="sensible.telemetry";ct=60 112`
				if cf != LinkFormat || string(body) != want {
					t.Fatalf("got %d %q\nwant %d %q", cf, body, LinkFormat, want)
				}
			})
			t.Run("unauthenticated", func(t *testing.T) {
				err := anon.Post(ctx5(t), "/v1/telemetry", batch, nil)
				if !errors.Is(err, ErrUnauthorized) {
					t.Fatalf("err = %v, want 4.01", err)
				}
			})
			t.Run("token refused", func(t *testing.T) {
				other, _ := identity.GenerateKey(identity.P256)
				_, err := Dial(ctx5(t), f.url, ClientConfig{Signer: other, Audience: testAudience})
				if !errors.Is(err, ErrUnauthorized) {
					t.Fatalf("unknown device: %v, want 4.01", err)
				}
				_, err = Dial(ctx5(t), f.url, ClientConfig{Signer: f.devKey, Audience: "coap://elsewhere"})
				if !errors.Is(err, ErrUnauthorized) {
					t.Fatalf("wrong audience: %v, want 4.01", err)
				}
			})
			t.Run("handler error code", func(t *testing.T) {
				err := authed.Post(ctx5(t), "/v1/forbidden", 1, nil)
				var e *Error
				if !errors.Is(err, ErrForbidden) || !errors.As(err, &e) || !strings.Contains(e.Diagnostic, "analytics") {
					t.Fatalf("err = %v, want 4.03 with diagnostic", err)
				}
			})
			t.Run("bad content-format", func(t *testing.T) {
				err := authed.DoRaw(ctx5(t), POST, "/v1/telemetry", Format(50), []byte(`[{"stream":"x"}]`), nil)
				if !errors.Is(err, ErrUnsupportedFormat) {
					t.Fatalf("err = %v, want 4.15", err)
				}
			})
			t.Run("oversize", func(t *testing.T) {
				big := bytes.Repeat([]byte{0x01}, 2000)
				err := authed.DoRaw(ctx5(t), POST, "/v1/telemetry", CBOR, big, nil)
				if !errors.Is(err, ErrTooLarge) {
					t.Fatalf("err = %v, want 4.13", err)
				}
			})
			t.Run("malformed CBOR", func(t *testing.T) {
				for name, body := range map[string][]byte{
					"truncated":     {0x82, 0xa2},
					"duplicate key": {0x81, 0xa2, 0x66, 's', 't', 'r', 'e', 'a', 'm', 0x61, 'a', 0x66, 's', 't', 'r', 'e', 'a', 'm', 0x61, 'b'},
					"indefinite":    {0x9f, 0xff},
					"wrong type":    {0x63, 'a', 'b', 'c'},
				} {
					err := authed.DoRaw(ctx5(t), POST, "/v1/telemetry", CBOR, body, nil)
					var e *Error
					if !errors.Is(err, ErrBadRequest) || !errors.As(err, &e) || !strings.HasPrefix(e.Diagnostic, "codec: ") {
						t.Errorf("%s: err = %v, want 4.00 with a codec diagnostic", name, err)
					}
				}
			})
			t.Run("not found and method", func(t *testing.T) {
				if err := authed.Get(ctx5(t), "/v1/nothing", nil); !errors.Is(err, ErrNotFound) {
					t.Errorf("unknown path: %v", err)
				}
				if err := authed.Get(ctx5(t), "/v1/telemetry", nil); !errors.Is(err, ErrMethodNotAllowed) {
					t.Errorf("GET telemetry: %v", err)
				}
			})
		})
	}
}

func TestRateLimit(t *testing.T) {
	for _, scheme := range plainSchemes {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{RateLimit: RateLimit{PerSecond: 0.001, Burst: 5}})
			c := f.dial(t, f.devKey) // the token post takes one token
			var limited int
			for range 8 {
				err := c.Post(ctx5(t), "/v1/telemetry", []reading{{"p", 1}}, nil)
				switch {
				case err == nil:
				case errors.Is(err, ErrTooManyRequests):
					limited++
				default:
					t.Fatal(err)
				}
			}
			if limited != 3 {
				t.Fatalf("%d of 8 requests limited, want 3 (burst 5 per device; the token post counted against the address)", limited)
			}
			// Another device is not affected.
			other := f.dial(t, nil)
			if err := other.Get(ctx5(t), "/v1/status", nil); err != nil {
				t.Fatalf("other peer: %v", err)
			}
		})
	}
}

func TestServerCloseWithClients(t *testing.T) {
	for _, scheme := range plainSchemes {
		t.Run(scheme, func(t *testing.T) {
			before := runtime.NumGoroutine()
			f := newFixture(t, scheme, ServerConfig{})
			c, err := Dial(ctx5(t), f.url, ClientConfig{Signer: f.devKey, Audience: testAudience})
			if err != nil {
				t.Fatal(err)
			}
			must(t, c.Post(ctx5(t), "/v1/telemetry", []reading{{"p", 1}}, nil))
			must(t, f.srv.Close())
			must(t, f.srv.Close()) // idempotent
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if err := c.Post(ctx, "/v1/telemetry", []reading{{"p", 1}}, nil); err == nil {
				t.Fatal("request to a closed server succeeded")
			}
			must(t, c.Close())
			must(t, c.Close())
			if err := c.Get(ctx, "/v1/status", nil); !errors.Is(err, ErrClosed) {
				t.Fatalf("request on closed client: %v", err)
			}
			waitGoroutines(t, before)
		})
	}
}

// waitGoroutines fails unless the goroutine count falls back to n.
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines, want %d:\n%s", runtime.NumGoroutine(), n, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
