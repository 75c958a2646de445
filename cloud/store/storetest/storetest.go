// Package storetest is the conformance suite for store.Store
// implementations: every implementation runs it, so that the cloud
// behaves the same on each.
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store {
//			s, err := mystore.Open(...) // a new, empty store
//			if err != nil {
//				t.Fatal(err)
//			}
//			return s
//		})
//	}
//
// Run includes the consent log's suite (consent/logtest) on the store's
// ConsentLog. RunNodes runs the tests of two nodes sharing one database:
// two consent Logs appending at once, and two token verifiers sharing
// the replay cache.
package storetest

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/logtest"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/protocol"
)

// Run runs the suite, the consent log's (consent/logtest) included. open
// must return a new, empty store for each call; Run closes it when the
// test that opened it ends. RunNodes has the tests of several nodes
// sharing one database.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"Close", testClose},
		{"Models", testModels},
		{"Manifests", testManifests},
		{"Devices", testDevices},
		{"DevicePages", testDevicePages},
		{"AppKeys", testAppKeys},
		{"ConsentRecords", testConsentRecords},
		{"ConsentRetention", testConsentRetention},
		{"Ingest", testIngest},
		{"IngestInvalid", testIngestInvalid},
		{"AllOrNothing", testAllOrNothing},
		{"GroupCommit", testGroupCommit},
		{"ListReadings", testListReadings},
		{"Retention", testRetention},
		{"Gaps", testGaps},
		{"ConcurrentIngest", testConcurrentIngest},
		{"Incidents", testIncidents},
		{"State", testState},
		{"StateLimits", testStateLimits},
		{"ConcurrentState", testConcurrentState},
		{"Commands", testCommands},
		{"CommandExpiry", testCommandExpiry},
		{"Claims", testClaims},
		{"ClaimAttempts", testClaimAttempts},
		{"ConcurrentClaimAttempts", testConcurrentClaimAttempts},
		{"Text", testText},
		{"BadText", testBadText},
		{"Replays", testReplays},
		{"PurgeReplays", testPurgeReplays},
		{"ConcurrentReplays", testConcurrentReplays},
		{"Notify", testNotify},
		{"SlowSubscriber", testSlowSubscriber},
		{"NotifierClose", testNotifierClose},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, s)
		})
	}
	t.Run("ConsentLog", func(t *testing.T) {
		logtest.Run(t, func(t *testing.T) consent.LogStore {
			s := open(t)
			t.Cleanup(func() { s.Close() })
			return s.ConsentLog()
		})
	})
}

// t0 is the suite's clock: every time is t0 plus something.
var t0 = time.Date(2026, 3, 14, 15, 9, 26, 535897932, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

// ok fails the test now if err is not nil.
func ok(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// is fails the test now unless err matches target.
func is(t testing.TB, err, target error, what string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want %v", what, err, target)
	}
}

// same fails the test now unless got and want are deeply equal.
func same(t testing.TB, got, want any, what string) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s:\ngot  %+v\nwant %+v", what, got, want)
	}
}

// newID returns a random device ID.
func newID() identity.ID {
	var id identity.ID
	rand.Read(id[:])
	return id
}

// hashOf returns a hash that stands for s.
func hashOf(s string) protocol.Hash { return sha256.Sum256([]byte(s)) }

// cbor returns a one-field CBOR map, {"v": n}, for n below 256.
func cbor(n int) []byte { return []byte{0xa1, 0x61, 'v', 0x18, byte(n)} }

// pkix stands for a DER public key; the store does not parse it.
var pkix = []byte{0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x00, 0xff}

// A world is a store with a model, a manifest and a device in it.
type world struct {
	s        store.Store
	model    string
	manifest protocol.Hash
	device   identity.ID
}

// newWorld registers model "m", a manifest for it and a device.
func newWorld(t *testing.T, s store.Store) *world {
	t.Helper()
	w := &world{s: s, model: "m", manifest: hashOf("manifest 1")}
	ok(t, s.AddModel(t.Context(), store.Model{ID: w.model, Name: "Model M"}), "AddModel")
	w.addManifest(t, w.manifest)
	w.device = w.addDevice(t, w.model)
	return w
}

func (w *world) addManifest(t *testing.T, h protocol.Hash) {
	t.Helper()
	ok(t, w.s.AddManifest(t.Context(), store.Manifest{Hash: h, Model: w.model, Signed: []byte("signed " + h.String()), Added: t0}), "AddManifest")
}

// addDevice registers a device of the model and returns its ID.
func (w *world) addDevice(t *testing.T, model string) identity.ID {
	t.Helper()
	id := newID()
	ok(t, w.s.CreateDevice(t.Context(), store.Device{ID: id, PublicKey: pkix, Model: model, Created: t0}), "CreateDevice")
	return id
}

// batch returns a batch of n readings for the world's device, taken a
// minute apart from t0, every other one under a consent record.
func (w *world) batch(stream string, seq uint64, n int) store.Batch {
	b := store.Batch{
		Device:   w.device,
		Stream:   stream,
		Manifest: w.manifest,
		Key:      protocol.Key{Epoch: 7, Seq: seq},
		Digest:   hashOf(fmt.Sprintf("%s %d %d", stream, seq, n)),
		Received: at(time.Hour + time.Duration(seq)*time.Second),
	}
	for i := range n {
		r := store.Reading{Time: at(time.Duration(i) * time.Minute), Fields: cbor(i % 256)}
		if i%2 == 0 {
			r.Consent = consent.ID{0xc0, byte(i), byte(i >> 8), 1}
		}
		b.Readings = append(b.Readings, r)
	}
	return b
}

// readings returns every reading of the world's device in a stream.
func (w *world) readings(t *testing.T, stream string) []store.Reading {
	t.Helper()
	rs, err := w.s.ListReadings(t.Context(), store.ReadingQuery{Device: w.device, Stream: stream})
	ok(t, err, "ListReadings")
	return rs
}

func testClose(t *testing.T, s store.Store) {
	ok(t, s.Close(), "Close")
	ok(t, s.Close(), "Close again")
}
