package sqlite_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/cloud/store/sqlite"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/protocol"
)

// Open a store in a directory, register a model, its manifest and a
// device, and store a telemetry batch twice: the second time is a
// repeat, and nothing is stored again.
func ExampleOpen() {
	dir, err := os.MkdirTemp("", "store-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	s, err := sqlite.Open(ctx, dir, sqlite.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		log.Fatal(err)
	}
	id, err := identity.IDOf(key)
	if err != nil {
		log.Fatal(err)
	}
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	manifest := protocol.Hash{0x4d} // policy.Manifest.Hash of the signed manifest
	for _, err := range []error{
		s.AddModel(ctx, store.Model{ID: "acme-aircon-x1", Name: "Acme Aircon X1"}),
		s.AddManifest(ctx, store.Manifest{Hash: manifest, Model: "acme-aircon-x1", Signed: []byte("signed manifest"), Added: now}),
		s.CreateDevice(ctx, store.Device{ID: id, PublicKey: pub, Model: "acme-aircon-x1", Created: now}),
	} {
		if err != nil {
			log.Fatal(err)
		}
	}

	batch := store.Batch{
		Device:   id,
		Stream:   "energy",
		Manifest: manifest,
		Key:      protocol.Key{Epoch: 0x5eed, Seq: 1},
		Digest:   protocol.Hash{0xd1}, // protocol.Batch.Digest of the batch received
		Received: now,
		Readings: []store.Reading{
			{Time: now.Add(-time.Minute), Fields: []byte{0xa1, 0x61, 'w', 0x18, 0x64}}, // {"w": 100}
			{Time: now, Fields: []byte{0xa1, 0x61, 'w', 0x18, 0x65}},                   // {"w": 101}
		},
	}
	for range 2 {
		r, err := s.StoreBatch(ctx, batch)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("batch %d: %d readings, duplicate: %v\n", r.ID, r.Stored, r.Duplicate)
	}
	readings, err := s.ListReadings(ctx, store.ReadingQuery{Device: id, Stream: "energy"})
	if err != nil {
		log.Fatal(err)
	}
	p, err := s.ReadingProvenance(ctx, readings[0].ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d readings stored; the first shaped by manifest %x…, under consent: %v\n", len(readings), p.Manifest[:1], !p.Consent.IsZero())
	// Output:
	// batch 1: 2 readings, duplicate: false
	// batch 1: 2 readings, duplicate: true
	// 2 readings stored; the first shaped by manifest 4d…, under consent: false
}
