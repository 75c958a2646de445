package device_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/sensible-iot/sensible/cloud"
	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/transport"
)

// The manifest of the example's product: power readings, the time
// coarsened to the hour and the watts rounded to 10 W, sent to the cloud
// under the customer's contract, and a waveform that never leaves the
// device.
const exampleManifest = `{
  "product": "acme-meter-m1",
  "version": "1",
  "streams": [
    {
      "name": "power",
      "description": "how much power the household used",
      "purposes": ["billing"],
      "fields": [
        {"name": "ts", "type": "timestamp", "category": "device.usage", "transform": {"op": "coarsen_time", "bucket": "1h"}},
        {"name": "watts", "type": "number", "category": "device.sensor.power", "transform": {"op": "round", "step": 10}}
      ],
      "destinations": [{"to": "cloud"}],
      "contract": true
    },
    {
      "name": "waveform",
      "description": "the current's waveform, from which the meter tells appliances apart",
      "purposes": ["appliance-detection"],
      "fields": [{"name": "samples", "type": "string", "category": "device.sensor.power", "transform": {"op": "keep"}}]
    }
  ]
}`

// Example records readings on a device and finds them in a cloud on the
// loopback interface, over DTLS with the device's pre-shared key.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "device-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// The maker signs its manifest; the device's firmware holds the
	// maker's public key.
	_, maker, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	m, err := policy.Parse([]byte(exampleManifest))
	if err != nil {
		log.Fatal(err)
	}
	signed, err := m.Sign(maker, []byte("maker-1"))
	if err != nil {
		log.Fatal(err)
	}
	makerKey := consent.TrustedKey{KID: []byte("maker-1"), Key: maker.Public(), Role: consent.ControllerKey}

	// The cloud: a node on SQLite, with the model, its manifest, and the
	// device from the factory's list.
	fleet := []byte("the fleet secret of the meter factory")
	node, err := cloud.New(ctx, cloud.Config{Dir: filepath.Join(dir, "cloud"), FleetSecret: fleet, Controllers: []consent.TrustedKey{makerKey}})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	if err := node.Store().AddModel(ctx, store.Model{ID: m.Product, Name: "Acme meter"}); err != nil {
		log.Fatal(err)
	}
	if _, err := node.AddManifest(ctx, signed); err != nil {
		log.Fatal(err)
	}
	url, err := node.Listen("coaps://127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	key, err := identity.GenerateKey(identity.P256)
	if err != nil {
		log.Fatal(err)
	}
	id, err := node.ImportDevice(ctx, cloud.ImportedDevice{Key: key.Public(), Model: m.Product})
	if err != nil {
		log.Fatal(err)
	}
	psk, err := transport.DerivePSK(fleet, id)
	if err != nil {
		log.Fatal(err)
	}

	// The device: its agent keeps an outbox sealed under a key derived
	// from its own key, and delivers to the cloud.
	var makers consent.KeySet
	if err := makers.Add(makerKey); err != nil {
		log.Fatal(err)
	}
	agent, err := device.New(ctx, device.Config{
		Dir:       filepath.Join(dir, "device"),
		Manifest:  signed,
		Makers:    &makers,
		Key:       key,
		URL:       url,
		Transport: transport.ClientConfig{PSK: psk},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer agent.Close()
	if err := agent.Start(); err != nil {
		log.Fatal(err)
	}

	err = agent.Record(ctx, "power", policy.Reading{"ts": time.Now(), "watts": 1234.5, "phase": "L2"})
	fmt.Println("power:", err)
	err = agent.Record(ctx, "waveform", policy.Reading{"samples": "00ff7f80"})
	fmt.Println("waveform:", err)
	err = agent.Record(ctx, "power", policy.Reading{"watts": "a lot"})
	fmt.Println("refused by the manifest:", errors.Is(err, device.ErrManifest))

	wait, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := agent.Drain(wait); err != nil {
		log.Fatal(err)
	}
	h := agent.Health()
	fmt.Println("delivered:", h.Delivered, "kept on the device:", h.LocalOnly)

	readings, err := node.Store().ListReadings(ctx, store.ReadingQuery{Device: id, Stream: "power"})
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range readings {
		var fields map[string]any
		if err := cbor.Unmarshal(r.Fields, &fields); err != nil {
			log.Fatal(err)
		}
		fmt.Println("the cloud holds:", fields["watts"], "W, at the top of the hour:", r.Time.Minute() == 0 && r.Time.Second() == 0)
	}
	// Output:
	// power: <nil>
	// waveform: <nil>
	// refused by the manifest: true
	// delivered: 1 kept on the device: 1
	// the cloud holds: 1230 W, at the top of the hour: true
}
