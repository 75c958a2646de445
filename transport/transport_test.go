package transport

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/device/identity"
)

// testAudience is the token audience of the test servers.
const testAudience = "coaps://cloud.sensible.test"

// plainSchemes are the transports without client authentication.
var plainSchemes = []string{"coap", "coap+tcp"}

// allSchemes are every transport the conformance table covers;
// "coaps+cert" is coaps:// with certificates instead of PSK.
var allSchemes = []string{"coap", "coaps", "coaps+cert", "coap+tcp", "coaps+tcp"}

// fleetSecret derives the test devices' DTLS pre-shared keys.
var fleetSecret = bytes.Repeat([]byte("sensible fleet secret "), 2)

type reading struct {
	Stream string  `cbor:"stream"`
	Value  float64 `cbor:"value"`
}

type ack struct {
	Device string `cbor:"device"`
	Count  int    `cbor:"count"`
}

type fixture struct {
	scheme string
	pki    *testPKI
	srv    *Server
	url    string
	devKey crypto.Signer
	dev    identity.ID
}

func newFixture(t testing.TB, scheme string, cfg ServerConfig) *fixture {
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
	if cfg.PSK == nil {
		cfg.PSK = func(_ context.Context, id identity.ID) ([]byte, error) {
			if id != f.dev {
				return nil, identity.ErrUnknownDevice
			}
			return DerivePSK(fleetSecret, id)
		}
	}
	if scheme == "coap" {
		// The conformance tables authenticate on every transport; the
		// default refusal of tokens over coap:// has its own tests.
		cfg.TokensOverUDP = true
	}
	f.scheme = scheme
	f.pki = newTestPKI(t, f.devKey)
	if cfg.Certificate == nil {
		cfg.Certificate = &f.pki.server
	}
	if cfg.DeviceRoots == nil {
		cfg.DeviceRoots = f.pki.deviceRoots
	}
	f.srv = NewServer(cfg)
	t.Cleanup(func() { f.srv.Close() })
	listen := scheme + "://127.0.0.1:0"
	if scheme == "coaps+cert" {
		listen = "coaps://127.0.0.1:0?auth=cert"
	}
	f.url, err = f.srv.Listen(listen)
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

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// config returns a client config that authenticates as the fixture's
// device (authed) or not at all; DTLS-PSK always authenticates.
func (f *fixture) config(t *testing.T, authed bool) ClientConfig {
	cfg := ClientConfig{Audience: testAudience}
	if authed {
		cfg.Signer = f.devKey
	}
	switch f.scheme {
	case "coaps":
		psk, err := DerivePSK(fleetSecret, f.dev)
		if err != nil {
			t.Fatal(err)
		}
		cfg.PSK, cfg.Device = psk, f.dev
		cfg.Signer = nil
	case "coaps+cert", "coaps+tcp":
		cfg.ServerRoots = f.pki.serverRoots
		if authed {
			cfg.Certificate = &f.pki.device
			cfg.Signer = nil
		}
	}
	return cfg
}

func (f *fixture) dial(t *testing.T, authed bool) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, f.url, f.config(t, authed))
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
	for _, scheme := range allSchemes {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{})
			anon := f.dial(t, false) // on coaps:// a PSK peer is always a device
			authed := f.dial(t, true)
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
				want := `</v1/auth>;rt="sensible.auth";ct=60,</v1/forbidden>;ct=60,</v1/status>;ct=60,</v1/telemetry>;rt="sensible.telemetry";ct="60 112"`
				if cf != LinkFormat || string(body) != want {
					t.Fatalf("got %d %q\nwant %d %q", cf, body, LinkFormat, want)
				}
			})
			t.Run("unauthenticated", func(t *testing.T) {
				if scheme == "coaps" {
					t.Skip("every DTLS-PSK peer is authenticated; see TestDTLSWrongKey")
				}
				err := anon.Post(ctx5(t), "/v1/telemetry", batch, nil)
				if !errors.Is(err, ErrUnauthorized) {
					t.Fatalf("err = %v, want 4.01", err)
				}
			})
			t.Run("token refused", func(t *testing.T) {
				if scheme == "coaps" {
					t.Skip("DTLS-PSK needs no token")
				}
				base := f.config(t, false)
				cfg := base
				cfg.Signer = mustKey(t)
				if _, err := Dial(ctx5(t), f.url, cfg); !errors.Is(err, ErrUnauthorized) {
					t.Fatalf("unknown device: %v, want 4.01", err)
				}
				cfg = base
				cfg.Signer, cfg.Audience = f.devKey, "coap://elsewhere"
				if _, err := Dial(ctx5(t), f.url, cfg); !errors.Is(err, ErrUnauthorized) {
					t.Fatalf("wrong audience: %v, want 4.01", err)
				}
				// The right token authenticates a session without a
				// device certificate.
				cfg = base
				cfg.Signer = f.devKey
				c, err := Dial(ctx5(t), f.url, cfg)
				must(t, err)
				defer c.Close()
				var got ack
				must(t, c.Post(ctx5(t), "/v1/telemetry", batch, &got))
				if got.Device != f.dev.String() {
					t.Fatalf("token session is device %q, want %s", got.Device, f.dev)
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
	for _, scheme := range allSchemes {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{RateLimit: RateLimit{PerSecond: 0.001, Burst: 5}})
			cfg := f.config(t, true)
			cfg.Retry.Attempts = 1 // count each 4.29 once
			c, err := Dial(ctx5(t), f.url, cfg)
			must(t, err)
			defer c.Close()
			// Burst 5 per device: 8 requests, 3 limited. (The token post
			// of the plain transports counts against the peer's address,
			// not the device.)
			want := 3
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
			if limited != want {
				t.Fatalf("%d of 8 requests limited, want %d", limited, want)
			}
			if scheme == "coaps" {
				return // every DTLS-PSK peer is this device
			}
			// Another peer is not affected.
			other := f.dial(t, false)
			if err := other.Get(ctx5(t), "/v1/status", nil); err != nil {
				t.Fatalf("other peer: %v", err)
			}
		})
	}
}

func TestServerCloseWithClients(t *testing.T) {
	for _, scheme := range allSchemes {
		t.Run(scheme, func(t *testing.T) {
			before := runtime.NumGoroutine()
			f := newFixture(t, scheme, ServerConfig{})
			must(t, f.srv.Handle(Resource{Path: "/v1/state/desired", Observable: true,
				Handler: func(context.Context, *Request) (any, error) { return desired{}, nil }}))
			cfg := f.config(t, true)
			cfg.KeepAlive = 100 * time.Millisecond // the keeper tries to reconnect meanwhile
			c, err := Dial(ctx5(t), f.url, cfg)
			if err != nil {
				t.Fatal(err)
			}
			must(t, c.Post(ctx5(t), "/v1/telemetry", []reading{{"p", 1}}, nil))
			_, err = c.Observe(ctx5(t), "/v1/state/desired", func(Notification) {})
			must(t, err)
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

func TestDTLSWrongKey(t *testing.T) {
	var called atomic.Int32
	f := newFixture(t, "coaps", ServerConfig{})
	must(t, f.srv.Handle(Resource{Path: "/v1/probe", Methods: []Method{POST}, Public: true,
		Handler: func(context.Context, *Request) (any, error) { called.Add(1); return nil, nil }}))
	cfg := f.config(t, true)
	cfg.PSK = bytes.Repeat([]byte{7}, PSKSize)
	// A wrong key fails the handshake: the server cannot check the
	// client's Finished message and drops it, so the client gives up
	// when its context ends.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if c, err := Dial(ctx, f.url, cfg); err == nil {
		c.Close()
		t.Fatal("DTLS-PSK handshake with a wrong key succeeded")
	}
	// An unknown identity fails too.
	cfg = f.config(t, true)
	cfg.Device, _ = identity.IDOf(mustKey(t))
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if c, err := Dial(ctx, f.url, cfg); err == nil {
		c.Close()
		t.Fatal("DTLS-PSK handshake with an unknown identity succeeded")
	}
	// The right key still works, and is the only way in.
	c := f.dial(t, true)
	must(t, c.Post(ctx5(t), "/v1/probe", 1, nil))
	if n := called.Load(); n != 1 {
		t.Fatalf("handler reached %d times, want once (by the valid device)", n)
	}
}

func TestDerivePSK(t *testing.T) {
	a, _ := identity.IDOf(mustKey(t))
	b, _ := identity.IDOf(mustKey(t))
	ka, err := DerivePSK(fleetSecret, a)
	if err != nil || len(ka) != PSKSize {
		t.Fatalf("DerivePSK = %x, %v", ka, err)
	}
	ka2, _ := DerivePSK(fleetSecret, a)
	kb, _ := DerivePSK(fleetSecret, b)
	if !bytes.Equal(ka, ka2) || bytes.Equal(ka, kb) {
		t.Fatal("keys not stable per device or not distinct across devices")
	}
	if _, err := DerivePSK([]byte("short"), a); err == nil {
		t.Fatal("short fleet secret accepted")
	}
}

func mustKey(t testing.TB) crypto.Signer {
	k, err := identity.GenerateKey(identity.P256)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestClientCloseFirstNoLeaks(t *testing.T) {
	for _, scheme := range allSchemes {
		t.Run(scheme, func(t *testing.T) {
			before := runtime.NumGoroutine()
			f := newFixture(t, scheme, ServerConfig{})
			must(t, f.srv.Handle(Resource{Path: "/v1/state/desired", Observable: true,
				Handler: func(context.Context, *Request) (any, error) { return desired{}, nil }}))
			c, err := Dial(ctx5(t), f.url, f.config(t, true))
			must(t, err)
			must(t, c.Post(ctx5(t), "/v1/telemetry", []reading{{"p", 1}}, nil))
			// An observation has a goroutine of its own, and the
			// client's keeper reconnects while there is one.
			_, err = c.Observe(ctx5(t), "/v1/state/desired", func(Notification) {})
			must(t, err)
			must(t, c.Close())
			must(t, f.srv.Close())
			waitGoroutines(t, before)
		})
	}
}

// testPKI is a manufacturer chain for the device and a cloud CA for the
// server, whose certificate names 127.0.0.1.
type testPKI struct {
	device      tls.Certificate
	deviceRoots *x509.CertPool
	server      tls.Certificate
	serverRoots *x509.CertPool
}

func newTestPKI(t testing.TB, devKey crypto.Signer) *testPKI {
	t.Helper()
	p := &testPKI{deviceRoots: x509.NewCertPool(), serverRoots: x509.NewCertPool()}
	root, err := identity.NewRootCA(mustKey(t), "Test Manufacturer Root", nil)
	must(t, err)
	inter, err := root.NewIntermediate(mustKey(t), "Test Factory", nil)
	must(t, err)
	csr, err := identity.NewCSR(devKey)
	must(t, err)
	dev, err := inter.IssueDevice(csr, nil)
	must(t, err)
	p.deviceRoots.AddCert(root.Cert)
	p.device = tls.Certificate{Certificate: [][]byte{dev.Raw, inter.Cert.Raw}, PrivateKey: devKey, Leaf: dev}

	cloud, err := identity.NewRootCA(mustKey(t), "Test Cloud Root", nil)
	must(t, err)
	srvKey := mustKey(t)
	srv, err := cloud.IssueServer(srvKey.Public(), []string{"127.0.0.1"}, nil)
	must(t, err)
	p.serverRoots.AddCert(cloud.Cert)
	p.server = tls.Certificate{Certificate: [][]byte{srv.Raw}, PrivateKey: srvKey, Leaf: srv}
	return p
}

func TestBadDeviceCertificate(t *testing.T) {
	for _, scheme := range []string{"coaps+cert", "coaps+tcp"} {
		t.Run(scheme, func(t *testing.T) {
			var called atomic.Int32
			f := newFixture(t, scheme, ServerConfig{})
			must(t, f.srv.Handle(Resource{Path: "/v1/probe", Methods: []Method{POST}, Public: true,
				Handler: func(context.Context, *Request) (any, error) { called.Add(1); return nil, nil }}))
			// A device chain from another manufacturer fails the handshake.
			other := newTestPKI(t, f.devKey)
			cfg := f.config(t, true)
			cfg.Certificate = &other.device
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if c, err := Dial(ctx, f.url, cfg); err == nil {
				err = c.Post(ctx, "/v1/probe", 1, nil)
				c.Close()
				if err == nil {
					t.Fatal("untrusted device chain reached a handler")
				}
			}
			// A server the client does not trust is refused by the client.
			cfg = f.config(t, true)
			cfg.ServerRoots = other.serverRoots
			if c, err := Dial(ctx, f.url, cfg); err == nil {
				c.Close()
				t.Fatal("client accepted an untrusted server")
			}
			if n := called.Load(); n != 0 {
				t.Fatalf("handler reached %d times", n)
			}
		})
	}
}
