package protocol_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// TestTelemetryOverTransport is the seam the device agent and the cloud
// will use: readings shaped by the device's own Enforcer (timestamps,
// locations, pseudonyms), sent as a Batch over DTLS-PSK on real loopback
// sockets, decoded by the cloud against the manifest the batch names and
// checked again. A batch naming an unknown manifest gets 4.00 with the
// diagnostic that sends the device to /v1/manifest; a reading the
// manifest does not allow gets 4.03.
func TestTelemetryOverTransport(t *testing.T) {
	manifest := mustManifest("mower.json")
	var manifests policy.Manifests
	hash, err := manifests.Add(manifest)
	if err != nil {
		t.Fatal(err)
	}
	fleet := []byte("a fleet secret of at least sixteen bytes")
	key, err := identity.GenerateKey(identity.P256)
	if err != nil {
		t.Fatal(err)
	}
	dev, _ := identity.IDOf(key)

	srv := transport.NewServer(transport.ServerConfig{
		PSK: func(_ context.Context, id identity.ID) ([]byte, error) { return transport.DerivePSK(fleet, id) },
	})
	defer srv.Close()
	err = srv.Handle(transport.Resource{
		Path: protocol.TelemetryPath, Methods: []transport.Method{transport.POST},
		Formats: []transport.Format{protocol.FormatCBOR}, MaxBody: protocol.MaxBatchBody,
		Handler: func(ctx context.Context, r *transport.Request) (any, error) {
			b, err := protocol.DecodeBatch(r.Body, &manifests)
			var be *protocol.BatchError
			switch {
			case errors.As(err, &be) && be.Kind == protocol.ErrUnknownManifest:
				return nil, transport.Errorf(transport.BadRequest, "%s", protocol.DiagnosticUnknownManifest)
			case errors.As(err, &be) && be.Kind == protocol.ErrRefused:
				return nil, transport.Errorf(transport.Forbidden, "%v", err)
			case err != nil:
				return nil, transport.Errorf(transport.BadRequest, "%v", err)
			}
			if err := manifests.Check(b.Policy()); err != nil {
				return nil, transport.Errorf(transport.Forbidden, "%v", err)
			}
			return protocol.Ack{Key: b.Key, Stored: uint64(len(b.Readings))}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	url, err := srv.Listen("coaps://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	psk, _ := transport.DerivePSK(fleet, dev)
	c, err := transport.Dial(ctx, url, transport.ClientConfig{PSK: psk, Device: dev})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	enforcer, err := policy.NewEnforcer(manifest, dev.String(), []byte("this device's own secret key"))
	if err != nil {
		t.Fatal(err)
	}
	var readings []policy.Reading
	for i := range 3 {
		out, err := enforcer.Apply("trip", policy.Reading{
			"ts":     time.Date(2026, 11, 23, 9, 7, 12+i, 500_000_000, time.UTC),
			"dock":   policy.Point{Lat: 52.51634, Lon: 13.37771},
			"area":   policy.Point{Lat: 52.516275 + float64(i)/1000, Lon: 13.377704},
			"zone":   3,
			"camera": "<jpeg>",
		})
		if err != nil {
			t.Fatal(err)
		}
		readings = append(readings, out.Fields)
	}
	batch := protocol.Batch{Manifest: hash, Stream: "trip", Key: protocol.Key{Epoch: 0x5eed, Seq: 1}, Readings: readings}
	body, err := batch.MarshalCBOR()
	if err != nil {
		t.Fatal(err)
	}
	var ack protocol.Ack
	if err := c.DoRaw(ctx, transport.POST, protocol.TelemetryPath, protocol.FormatCBOR, body, &ack); err != nil {
		t.Fatalf("a batch the device's enforcer made: %v", err)
	}
	if ack.Key != batch.Key || ack.Stored != 3 {
		t.Fatalf("ack %+v, want key %+v and 3 stored", ack, batch.Key)
	}

	unknown := batch
	unknown.Manifest[0] ^= 1
	body, err = unknown.MarshalCBOR()
	if err != nil {
		t.Fatal(err)
	}
	err = c.DoRaw(ctx, transport.POST, protocol.TelemetryPath, protocol.FormatCBOR, body, nil)
	var te *transport.Error
	if !errors.As(err, &te) || te.Code != transport.BadRequest || te.Diagnostic != protocol.DiagnosticUnknownManifest {
		t.Fatalf("unknown manifest: %v, want 4.00 %q", err, protocol.DiagnosticUnknownManifest)
	}

	raw := batch
	raw.Readings = []policy.Reading{{"ts": time.Unix(1795424400, 0).UTC(), "camera": "<jpeg>"}}
	if body, err = raw.MarshalCBOR(); err != nil {
		t.Fatal(err)
	}
	err = c.DoRaw(ctx, transport.POST, protocol.TelemetryPath, protocol.FormatCBOR, body, nil)
	if !errors.Is(err, transport.ErrForbidden) {
		t.Fatalf("a field that never leaves the device: %v, want 4.03", err)
	}
}
