package protocol_test

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/protocol"
)

func mustManifest(name string) *policy.Manifest {
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		panic(err)
	}
	m, err := policy.Parse(data)
	if err != nil {
		panic(err)
	}
	return m
}

func printReadings(rs []policy.Reading) {
	for i, r := range rs {
		names := make([]string, 0, len(r))
		for k := range r {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			v := r[k]
			if t, ok := v.(time.Time); ok {
				v = t.Format(time.RFC3339Nano)
			}
			fmt.Printf("  reading %d: %s = %v (%T)\n", i, k, v, r[k])
		}
	}
}

// A device shapes readings with its manifest and sends them as a batch;
// the cloud decodes the batch against the manifest it names, gets back
// what the device's enforcer made, and checks it again.
func Example() {
	manifest := mustManifest("mower.json")
	hash, _ := manifest.Hash()

	// On the device.
	enforcer, _ := policy.NewEnforcer(manifest, "PEYT32HXJN7P3KF7YKZ5YK8FZWZ", []byte("this device's own secret key"))
	out, _ := enforcer.Apply("trip", policy.Reading{
		"ts":     time.Date(2026, 11, 23, 9, 7, 12, 500_000_000, time.UTC),
		"dock":   policy.Point{Lat: 52.51634, Lon: 13.37771},
		"area":   policy.Point{Lat: 52.516275, Lon: 13.377704},
		"zone":   3,
		"camera": "<jpeg>", // dropped: it never leaves
	})
	batch := protocol.Batch{
		Manifest: hash, Stream: "trip",
		Key:      protocol.Key{Epoch: 0x5eed, Seq: 1}, // the outbox's epoch, the batch's number
		Readings: []policy.Reading{out.Fields},
	}
	body, err := batch.MarshalCBOR() // or transport.Client.Post(ctx, protocol.TelemetryPath, batch, &ack)
	if err != nil {
		panic(err)
	}

	// In the cloud.
	var manifests policy.Manifests
	manifests.Add(manifest)
	got, err := protocol.DecodeBatch(body, &manifests)
	if err != nil {
		panic(err) // a *protocol.BatchError: 4.00, 4.03 or 4.13
	}
	if err := manifests.Check(got.Policy()); err != nil {
		panic(err) // a *policy.Violation: 4.03
	}
	fmt.Printf("%s, key %d/%d, %d bytes:\n", got.Stream, got.Key.Epoch, got.Key.Seq, len(body))
	printReadings(got.Readings)
	// Output:
	// trip, key 24301/1, 108 bytes:
	//   reading 0: area = u33db (string)
	//   reading 0: dock = {52.52 13.38} (policy.Point)
	//   reading 0: ts = 2026-11-23T09:07:12.5Z (time.Time)
	//   reading 0: zone = 3 (int64)
}

// A gateway that speaks SenML sends the same readings as a SenML-CBOR
// pack, with the batch's header in the Uri-Query options.
func ExampleDecodeSenML() {
	manifest := mustManifest("aircon.json")
	var manifests policy.Manifests
	hash, _ := manifests.Add(manifest)

	// [{0: "watts", 2: 1230.0, 6: 1795424400}, {0: "watts", 2: 990.0, 6: 1795428000}]
	pack := []byte{0x82,
		0xa3, 0x00, 0x65, 'w', 'a', 't', 't', 's', 0x02, 0xf9, 0x64, 0xce, 0x06, 0x1a, 0x6b, 0x04, 0x00, 0x90,
		0xa3, 0x00, 0x65, 'w', 'a', 't', 't', 's', 0x02, 0xf9, 0x63, 0xbc, 0x06, 0x1a, 0x6b, 0x04, 0x0e, 0xa0}
	header := protocol.Batch{Manifest: hash, Stream: "power", Key: protocol.Key{Epoch: 7, Seq: 1}}
	query := header.Query() // manifest=<hex>, stream=power, epoch=7, seq=1

	got, err := protocol.DecodeSenML(query, pack, &manifests)
	if err != nil {
		panic(err)
	}
	fmt.Println(manifests.Check(got.Policy()))
	printReadings(got.Readings)
	// Output:
	// <nil>
	//   reading 0: ts = 2026-11-23T09:00:00Z (time.Time)
	//   reading 0: watts = 1230 (float64)
	//   reading 1: ts = 2026-11-23T10:00:00Z (time.Time)
	//   reading 1: watts = 990 (float64)
}

// A batch that names a manifest the cloud does not hold cannot be typed:
// the cloud answers 4.00 with DiagnosticUnknownManifest, and the device
// fetches /v1/manifest.
func ExampleDecodeBatch_unknownManifest() {
	batch := protocol.Batch{Manifest: protocol.Hash{0xde, 0xad}, Stream: "power", Key: protocol.Key{Epoch: 7, Seq: 2},
		Readings: []policy.Reading{{"watts": 1230.0}}}
	body, _ := batch.MarshalCBOR()

	var manifests policy.Manifests
	_, err := protocol.DecodeBatch(body, &manifests)
	fmt.Println(errors.Is(err, protocol.ErrUnknownManifest), errors.Is(err, policy.ErrUnknownManifest))
	fmt.Println(protocol.DiagnosticUnknownManifest)
	// Output:
	// true true
	// unknown manifest: GET /v1/manifest
}
