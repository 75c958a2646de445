package cloud_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/internal/codec"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// TestTelemetry: devices post batches over DTLS-PSK and over TCP with a
// token, as CBOR and as SenML, to the cloud and to a partner; each batch
// is stored once, with its manifest and the consent record that allowed
// each reading, and acknowledged.
func TestTelemetry(t *testing.T) {
	for _, kind := range []string{"sqlite", "postgres"} {
		t.Run(kind, func(t *testing.T) {
			f := newFixture(t, kind, cloud.Config{})
			ctx := context.Background()
			ac := f.importDevice(aircon)
			vac := f.importDevice(vacuum)
			power, pests := powerGrant(f.clock.now().Add(-24*time.Hour)), pestGrant(f.clock.now().Add(-24*time.Hour))
			f.give(power)
			f.give(pests)
			powerID, pestsID := power.ID, pests.ID

			c := f.dial(ac, "coaps")
			b := f.power(ac, 1, 3)
			ack, err := post(t, c, b)
			must(t, err)
			if ack != (protocol.Ack{Key: b.Key, Stored: 3}) {
				t.Fatalf("ack %+v", ack)
			}
			rs := f.readings(ac, "power")
			if len(rs) != 3 {
				t.Fatalf("%d readings stored, want 3", len(rs))
			}
			for _, r := range rs {
				p, err := f.st.ReadingProvenance(ctx, r.ID)
				must(t, err)
				if p.Manifest != f.manifests[aircon].hash || p.Consent != powerID || p.Device != ac.id || p.Key != b.Key || p.Stream != "power" {
					t.Fatalf("provenance %+v", p)
				}
			}
			var fields map[string]any
			must(t, codec.Unmarshal(rs[0].Fields, &fields))
			if fields["watts"] != 1000.0 || !strings.HasPrefix(fields["serial"].(string), "k1:") {
				t.Fatalf("stored fields %v", fields)
			}

			// The occupancy stream is under contract: no consent needed,
			// none recorded.
			window := f.clock.now().Add(-time.Hour).Truncate(15 * time.Minute)
			occ := protocol.Batch{Manifest: f.manifests[aircon].hash, Stream: "occupancy", Key: protocol.Key{Epoch: 0x5eed, Seq: 2},
				Readings: []policy.Reading{{"ts": window, "people": 1.5}}}
			if _, err := post(t, c, occ); err != nil {
				t.Fatal(err)
			}
			if rs := f.readings(ac, "occupancy"); len(rs) != 1 || !rs[0].Consent.IsZero() || !rs[0].Time.Equal(window) {
				t.Fatalf("occupancy stored as %+v", rs)
			}

			// The vacuum over TCP with a token, to the cloud and to the
			// partner its consent names.
			vc := f.dial(vac, "coap+tcp")
			for seq, partner := range []string{"", "pestco"} {
				b := f.pests(vac, uint64(seq+1), "cockroach", partner)
				if _, err := post(t, vc, b); err != nil {
					t.Fatalf("pests for %q: %v", partner, err)
				}
			}
			// SenML over TCP.
			sb := f.pests(vac, 3, "silverfish", "")
			query, body, err := sb.MarshalSenML(f.manifests[vacuum].m)
			must(t, err)
			code, resp := f.rawPost(vac, "coap+tcp", protocol.TelemetryPath, protocol.FormatSenMLCBOR, query, body)
			if code != transport.Changed {
				t.Fatalf("SenML batch answered %v: %s", code, resp)
			}
			must(t, codec.Unmarshal(resp, &ack))
			if ack != (protocol.Ack{Key: sb.Key, Stored: 1}) {
				t.Fatalf("SenML ack %+v", ack)
			}
			rs = f.readings(vac, "pest-sighting")
			if len(rs) != 3 {
				t.Fatalf("%d pest sightings stored, want 3", len(rs))
			}
			for _, r := range rs {
				if r.Consent != pestsID {
					t.Fatalf("pest sighting stored under %s, want %s", r.Consent, pestsID)
				}
			}
		})
	}
}

