package cloud_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/sensible-iot/sensible/cloud"
	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/internal/codec"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// enroll posts a device's first contact.
func enroll(c *transport.Client, model string) (protocol.Enrollment, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var e protocol.Enrollment
	err := c.Post(ctx, protocol.EnrollPath, protocol.EnrollRequest{Model: model, Firmware: "1.4.2"}, &e)
	return e, err
}

// TestEnrollKnown: an imported device, over DTLS-PSK and over TCP with a
// token, is told its owner, its model's manifest and the time.
func TestEnrollKnown(t *testing.T) {
	f := newFixture(t, "sqlite", cloud.Config{})
	for _, scheme := range []string{"coaps", "coap+tcp"} {
		t.Run(scheme, func(t *testing.T) {
			d := f.importDevice(aircon)
			c := f.dial(d, scheme)
			e, err := enroll(c, aircon)
			must(t, err)
			want := protocol.Enrollment{Status: protocol.Claimed, Subject: owner, Manifest: f.manifests[aircon].hash, Time: f.clock.now().Unix()}
			if e != want {
				t.Fatalf("enrollment %+v, want %+v", e, want)
			}
			// What it says again is answered the same.
			if e, err = enroll(c, aircon); err != nil || e != want {
				t.Fatalf("enrolling again: %+v, %v", e, err)
			}
			code, _ := f.rawPost(d, "coap+tcp", protocol.EnrollPath, protocol.FormatCBOR, nil, mustCBOR(t, protocol.EnrollRequest{Model: aircon, Firmware: "1"}))
			if code != transport.Changed {
				t.Fatalf("a known device's enrollment answered %v, want 2.04", code)
			}
		})
	}

	t.Run("unclaimed without manifest", func(t *testing.T) {
		d := f.importDevice(nothing)
		must(t, f.st.SetOwner(context.Background(), d.id, ""))
		e, err := enroll(f.dial(d, "coaps"), nothing)
		must(t, err)
		if e.Status != protocol.Unclaimed || e.Subject != "" || !e.Manifest.IsZero() {
			t.Fatalf("enrollment %+v, want unclaimed without a manifest", e)
		}
	})
}

// TestEnrollRefused: the documented refusals, each changing nothing.
func TestEnrollRefused(t *testing.T) {
	f := newFixture(t, "sqlite", cloud.Config{})
	d := f.importDevice(aircon)
	c := f.dial(d, "coaps")
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		req  any
		code transport.Code
	}{
		{"another model", protocol.EnrollRequest{Model: vacuum, Firmware: "1"}, transport.Forbidden},
		{"a claim token", protocol.EnrollRequest{Model: aircon, Firmware: "1", Claim: bytes.Repeat([]byte{7}, 16)}, transport.Forbidden},
		{"not a request", "hello", transport.BadRequest},
		{"an unknown key", map[int]any{1: aircon, 2: "1", 9: true}, transport.BadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Post(ctx, protocol.EnrollPath, tc.req, nil)
			if codeOf(err) != tc.code {
				t.Fatalf("got %v, want %v", err, tc.code)
			}
		})
	}
	got, err := f.st.Device(ctx, d.id)
	must(t, err)
	if got.Model != aircon || got.Owner != owner {
		t.Fatalf("device changed: %+v", got)
	}
	if _, err := enroll(c, aircon); err != nil {
		t.Fatalf("the node stopped serving: %v", err)
	}
}

// TestZeroTouch: a device the node does not know, with a chain from the
// manufacturer, is registered when it first enrolls (2.01), over TLS and
// over DTLS, with its key and chain; before that it has no manifest and
// may send nothing.
func TestZeroTouch(t *testing.T) {
	f := newFixture(t, "sqlite", cloud.Config{})
	ctx := context.Background()
	body := mustCBOR(t, protocol.EnrollRequest{Model: vacuum, Firmware: "2.0.1"})

	t.Run("coaps+tcp", func(t *testing.T) {
		d := f.factoryDevice(vacuum)
		c := f.dial(d, "coaps+tcp")
		if _, _, err := c.GetRaw(ctx, protocol.ManifestPath); codeOf(err) != transport.NotFound {
			t.Fatalf("manifest before enrolling: %v, want 4.04", err)
		}
		if _, err := post(t, c, f.pests(d, 1, "cockroach", "")); codeOf(err) != transport.Unauthorized {
			t.Fatalf("telemetry before enrolling: %v, want 4.01", err)
		}
		code, resp := f.rawPost(d, "coaps+tcp", protocol.EnrollPath, protocol.FormatCBOR, nil, body)
		if code != transport.Created {
			t.Fatalf("first contact answered %v (%s), want 2.01", code, resp)
		}
		var e protocol.Enrollment
		must(t, codec.Unmarshal(resp, &e))
		if e.Status != protocol.Unclaimed || e.Manifest != f.manifests[vacuum].hash {
			t.Fatalf("enrollment %+v", e)
		}
		checkRegistered(t, f, d)
		code, _ = f.rawPost(d, "coaps+tcp", protocol.EnrollPath, protocol.FormatCBOR, nil, body)
		if code != transport.Changed {
			t.Fatalf("second contact answered %v, want 2.04", code)
		}
		// Now it may fetch its manifest.
		var mr protocol.ManifestResponse
		must(t, c.Get(ctx, protocol.ManifestPath, &mr))
		if !bytes.Equal(mr.Signed, f.manifests[vacuum].signed) {
			t.Fatal("not the model's manifest")
		}
	})

	t.Run("coaps+cert", func(t *testing.T) {
		d := f.factoryDevice(vacuum)
		e, err := enroll(f.dial(d, "coaps+cert"), vacuum)
		must(t, err)
		if e.Status != protocol.Unclaimed || e.Manifest != f.manifests[vacuum].hash {
			t.Fatalf("enrollment %+v", e)
		}
		checkRegistered(t, f, d)
	})

	t.Run("unknown model", func(t *testing.T) {
		d := f.factoryDevice(vacuum)
		for _, model := range []string{"acme-toaster", "", "x'; DROP TABLE devices; --", "nul\x00"} {
			req := mustCBOR(t, protocol.EnrollRequest{Model: model, Firmware: "1"})
			if code, _ := f.rawPost(d, "coaps+tcp", protocol.EnrollPath, protocol.FormatCBOR, nil, req); code != transport.Forbidden {
				t.Fatalf("model %q answered %v, want 4.03", model, code)
			}
		}
		if _, err := f.st.Device(ctx, d.id); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("device registered anyway: %v", err)
		}
		if models, err := f.st.ListModels(ctx); err != nil || len(models) != 3 {
			t.Fatalf("models after the refusals: %v, %v", models, err)
		}
	})

	t.Run("claim token", func(t *testing.T) {
		d := f.factoryDevice(vacuum)
		req := mustCBOR(t, protocol.EnrollRequest{Model: vacuum, Firmware: "1", Claim: []byte("claim-0123456789abcdef")})
		if code, _ := f.rawPost(d, "coaps+tcp", protocol.EnrollPath, protocol.FormatCBOR, nil, req); code != transport.Forbidden {
			t.Fatalf("an unknown claim token answered %v, want 4.03", code)
		}
		if _, err := f.st.Device(ctx, d.id); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("device registered anyway: %v", err)
		}
	})
}

// checkRegistered checks that the node registered a factory device with
// its key, chain and model, active and without an owner.
func checkRegistered(t *testing.T, f *fixture, d *device) {
	t.Helper()
	got, err := f.st.Device(context.Background(), d.id)
	must(t, err)
	pub, err := x509.MarshalPKIXPublicKey(d.key.Public())
	must(t, err)
	if !bytes.Equal(got.PublicKey, pub) || got.Model != d.model || got.Owner != "" || got.Standing != store.Active ||
		len(got.Chain) != 2 || !bytes.Equal(got.Chain[0], d.cert.Certificate[0]) || !bytes.Equal(got.Chain[1], d.cert.Certificate[1]) {
		t.Fatalf("registered as %+v", got)
	}
}

// TestManifest: a device fetches the newest manifest of its model, signed
// by the maker, whose hash its enrollment named; one without a manifest
// gets 4.04.
func TestManifest(t *testing.T) {
	f := newFixture(t, "sqlite", cloud.Config{})
	ctx := context.Background()
	d := f.importDevice(aircon)
	c := f.dial(d, "coaps")
	var mr protocol.ManifestResponse
	must(t, c.Get(ctx, protocol.ManifestPath, &mr))
	var makers consent.KeySet
	must(t, makers.Add(consent.TrustedKey{KID: []byte("maker-1"), Key: f.maker.Public(), Role: consent.ControllerKey}))
	m, err := policy.OpenSigned(ctx, mr.Signed, &makers)
	must(t, err)
	h, err := m.Hash()
	must(t, err)
	if e, err := enroll(c, aircon); err != nil || e.Manifest != h {
		t.Fatalf("enrollment names %v (%v), the manifest is %x", e.Manifest, err, h)
	}

	// A new version of the manifest is the one devices fetch from now on;
	// batches shaped by the old one are still taken.
	f.clock.add(time.Minute)
	m.Version = "2026.12.1"
	signed, err := m.Sign(f.maker, []byte("maker-1"))
	must(t, err)
	h2, err := f.node.AddManifest(ctx, signed)
	must(t, err)
	must(t, c.Get(ctx, protocol.ManifestPath, &mr))
	if !bytes.Equal(mr.Signed, signed) {
		t.Fatal("GET /v1/manifest did not give the newest manifest")
	}
	if e, err := enroll(c, aircon); err != nil || e.Manifest != h2 {
		t.Fatalf("enrollment names %v (%v), want the new manifest", e.Manifest, err)
	}
	if _, err := f.node.AddManifest(ctx, signed); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("the same manifest again: %v", err)
	}
	other := newEd25519(t)
	forged, err := m.Sign(other, []byte("maker-1"))
	must(t, err)
	if _, err := f.node.AddManifest(ctx, forged); !errors.Is(err, consent.ErrBadSignature) {
		t.Fatalf("a manifest signed by another key: %v", err)
	}

	// The answer's ETag is the first 8 bytes of the manifest's hash; a
	// device that names it is told 2.03 Valid, without the manifest.
	co := f.rawConn(ctx, d, "coap+tcp")
	resp, err := co.Get(ctx, protocol.ManifestPath)
	must(t, err)
	etag, err := resp.Options().GetBytes(message.ETag)
	if resp.Code() != codes.Content || err != nil || !bytes.Equal(etag, h2[:8]) {
		t.Fatalf("GET /v1/manifest: %v, ETag %x (%v), want 2.05 and %x", resp.Code(), etag, err, h2[:8])
	}
	resp, err = co.Get(ctx, protocol.ManifestPath, message.Option{ID: message.ETag, Value: etag})
	must(t, err)
	if body, _ := resp.ReadBody(); resp.Code() != codes.Valid || len(body) != 0 {
		t.Fatalf("GET /v1/manifest with its ETag: %v and %d bytes, want 2.03 and none", resp.Code(), len(body))
	}
	resp, err = co.Get(ctx, protocol.ManifestPath, message.Option{ID: message.ETag, Value: h[:8]})
	must(t, err)
	if resp.Code() != codes.Content {
		t.Fatalf("GET /v1/manifest with the old manifest's ETag: %v, want 2.05", resp.Code())
	}

	n := f.importDevice(nothing)
	if _, _, err := f.dial(n, "coap+tcp").GetRaw(ctx, protocol.ManifestPath); codeOf(err) != transport.NotFound {
		t.Fatalf("a model without a manifest: %v, want 4.04", err)
	}
}

func mustCBOR(t testing.TB, v any) []byte {
	t.Helper()
	b, err := codec.Marshal(v)
	must(t, err)
	return b
}
