package cloud_test

import (
	"context"
	"math"
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

// total counts every reading the store holds of the devices.
func (f *fixture) total(ds ...*device) int {
	n := 0
	for _, d := range ds {
		for _, s := range []string{"power", "occupancy", "pest-sighting"} {
			n += len(f.readings(d, s))
		}
	}
	return n
}

// TestTelemetryRefused: every bad batch gets its documented code and
// diagnostic, stores nothing, counts as an incident when it breaks the
// manifest, and the node goes on serving.
func TestTelemetryRefused(t *testing.T) {
	for _, kind := range []string{"sqlite", "postgres"} {
		t.Run(kind, func(t *testing.T) {
			f := newFixture(t, kind, cloud.Config{MaxIncidents: -1})
			ac, vac := f.importDevice(aircon), f.importDevice(vacuum)
			f.give(powerGrant(f.clock.now().Add(-24 * time.Hour)))
			f.give(pestGrant(f.clock.now().Add(-24 * time.Hour)))
			clients := map[*device]*transport.Client{ac: f.dial(ac, "coaps"), vac: f.dial(vac, "coap+tcp")}
			seq := uint64(1) // the last sequence number stored
			encode := func(b protocol.Batch) []byte {
				body, err := b.MarshalCBOR()
				must(t, err)
				return body
			}
			hour := f.clock.now().Truncate(time.Hour)

			// A batch stored before, for the repeats below.
			stored := f.power(ac, 1, 3)
			if _, err := post(t, clients[ac], stored); err != nil {
				t.Fatal(err)
			}
			reused := f.power(ac, 1, 2)

			for _, tc := range []struct {
				name     string
				dev      *device
				format   transport.Format
				body     []byte
				code     transport.Code
				diag     string // exact diagnostic, if any
				incident string // the incident's kind, if any
			}{
				{name: "unknown manifest", dev: ac, body: encode(func() protocol.Batch {
					b := f.power(ac, 2, 1)
					b.Manifest[0] ^= 1
					return b
				}()), code: transport.BadRequest, diag: protocol.DiagnosticUnknownManifest},
				{name: "undeclared field", dev: ac, body: encode(protocol.Batch{Manifest: f.manifests[aircon].hash, Stream: "power", Key: protocol.Key{Epoch: 1, Seq: 1},
					Readings: []policy.Reading{{"ts": hour, "watts": 1000.0, "colour": "red"}}}),
					code: transport.Forbidden, incident: cloud.IncidentManifest},
				{name: "dropped field", dev: ac, body: encode(protocol.Batch{Manifest: f.manifests[aircon].hash, Stream: "camera-frame", Key: protocol.Key{Epoch: 1, Seq: 1},
					Readings: []policy.Reading{{"frame": "<jpeg>"}}}),
					code: transport.Forbidden, incident: cloud.IncidentManifest},
				{name: "finer than its transform", dev: ac, body: encode(protocol.Batch{Manifest: f.manifests[aircon].hash, Stream: "power", Key: protocol.Key{Epoch: 1, Seq: 1},
					Readings: []policy.Reading{{"ts": hour, "watts": 1234.5}}}),
					code: transport.Forbidden, incident: cloud.IncidentManifest},
				{name: "time finer than its bucket", dev: ac, body: encode(protocol.Batch{Manifest: f.manifests[aircon].hash, Stream: "power", Key: protocol.Key{Epoch: 1, Seq: 1},
					Readings: []policy.Reading{{"ts": hour.Add(time.Minute), "watts": 1230.0}}}),
					code: transport.Forbidden, incident: cloud.IncidentManifest},
				{name: "undeclared partner", dev: vac, body: encode(f.pests(vac, 2, "ant", "x'); DROP TABLE readings; --")),
					code: transport.Forbidden, incident: cloud.IncidentManifest},
				{name: "undeclared stream", dev: ac, body: encode(protocol.Batch{Manifest: f.manifests[aircon].hash, Stream: "'; DROP TABLE batches; --", Key: protocol.Key{Epoch: 1, Seq: 1},
					Readings: []policy.Reading{{"ts": hour}}}),
					code: transport.Forbidden, incident: cloud.IncidentManifest},
				{name: "another model's manifest", dev: vac, body: encode(f.power(ac, 2, 1)), code: transport.Forbidden, incident: cloud.IncidentManifest},
				{name: "not CBOR", dev: ac, body: []byte("DROP TABLE readings"), code: transport.BadRequest},
				{name: "no readings", dev: ac, body: mustCBOR(t, map[int]any{1: f.manifests[aircon].hash[:], 2: "power", 3: []uint64{1, 9}, 5: []any{}}), code: transport.BadRequest},
				{name: "oversize", dev: ac, body: make([]byte, protocol.MaxBatchBody+1), code: transport.RequestEntityTooLarge},
				{name: "oversize over TCP", dev: vac, body: make([]byte, protocol.MaxBatchBody+1), code: transport.RequestEntityTooLarge},
				{name: "other content-format", dev: ac, format: 50, body: []byte("{}"), code: transport.UnsupportedFormat},
				{name: "sequence number out of range", dev: ac, body: encode(func() protocol.Batch {
					b := f.power(ac, 2, 1)
					b.Key.Seq = math.MaxUint64
					return b
				}()), code: transport.BadRequest},
				{name: "time out of range", dev: vac, body: encode(protocol.Batch{Manifest: f.manifests[vacuum].hash, Stream: "pest-sighting", Key: protocol.Key{Epoch: 1, Seq: 1},
					Readings: []policy.Reading{{"ts": time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC), "species": "ant"}}}), code: transport.BadRequest},
				{name: "key reused", dev: ac, body: encode(reused), code: transport.BadRequest, diag: protocol.DiagnosticKeyReused},
				{name: "SenML without its header", dev: ac, format: protocol.FormatSenMLCBOR, body: mustCBOR(t, []map[int]any{{0: "watts", 2: 1230.0}}), code: transport.BadRequest},
			} {
				t.Run(tc.name, func(t *testing.T) {
					before, incidents := f.total(ac, vac), len(f.incidents(tc.dev))
					format := tc.format
					if format == 0 {
						format = protocol.FormatCBOR
					}
					_, err := postRaw(clients[tc.dev], format, tc.body)
					t.Log(err)
					if codeOf(err) != tc.code {
						t.Fatalf("got %v, want %v", err, tc.code)
					}
					if tc.diag != "" && diagnosticOf(err) != tc.diag {
						t.Fatalf("diagnostic %q, want %q", diagnosticOf(err), tc.diag)
					}
					if n := f.total(ac, vac); n != before {
						t.Fatalf("%d readings stored", n-before)
					}
					got := f.incidents(tc.dev)
					switch {
					case tc.incident == "" && len(got) != incidents:
						t.Fatalf("incidents recorded: %+v", got[incidents:])
					case tc.incident != "" && (len(got) != incidents+1 || got[incidents].Kind != tc.incident):
						t.Fatalf("incidents %+v, want one more of kind %s", got, tc.incident)
					}
					// The node goes on serving.
					seq++
					if _, err := post(t, clients[ac], f.power(ac, seq, 1)); err != nil {
						t.Fatalf("a good batch after: %v", err)
					}
				})
			}

			t.Run("repeat", func(t *testing.T) {
				before := f.total(ac)
				ack, err := post(t, clients[ac], stored)
				must(t, err)
				if ack != (protocol.Ack{Key: stored.Key, Stored: 3, Duplicate: true}) {
					t.Fatalf("ack of a repeat %+v", ack)
				}
				if n := f.total(ac); n != before {
					t.Fatalf("a repeat stored %d readings", n-before)
				}
			})

			t.Run("gap", func(t *testing.T) {
				b := f.power(ac, seq+5, 1)
				if _, err := post(t, clients[ac], b); err != nil {
					t.Fatal(err)
				}
				gaps, err := f.st.ListGaps(context.Background(), ac.id)
				must(t, err)
				if len(gaps) != 1 || gaps[0].Epoch != b.Key.Epoch || gaps[0].First != seq+1 || gaps[0].Last != seq+4 {
					t.Fatalf("gaps %+v, want %d to %d", gaps, seq+1, seq+4)
				}
			})

			t.Run("SQL in values", func(t *testing.T) {
				for i, species := range []string{"'); DROP TABLE readings; --", "x' OR '1'='1", `"\'; --`, "Robert'); DROP TABLE devices;--"} {
					if _, err := post(t, clients[vac], f.pests(vac, uint64(10+i), species, "")); err != nil {
						t.Fatal(err)
					}
				}
				rs := f.readings(vac, "pest-sighting")
				var got []string
				for _, r := range rs {
					var fields map[string]any
					must(t, codec.Unmarshal(r.Fields, &fields))
					got = append(got, fields["species"].(string))
				}
				if len(got) != 4 || got[0] != "'); DROP TABLE readings; --" || got[3] != "Robert'); DROP TABLE devices;--" {
					t.Fatalf("species stored %q", got)
				}
			})
		})
	}
}
