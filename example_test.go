package sensible_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/transport"
)

// The README's quick starts are these examples, line for line (see
// readme_test.go): what the README shows compiles and runs.

// Reading is one telemetry reading, as a product defines it.
type Reading struct {
	Stream string  `cbor:"stream"`
	Value  float64 `cbor:"value"`
}

// Ack is the cloud's answer to a telemetry batch.
type Ack struct {
	Device string `cbor:"device"`
	Stored int    `cbor:"stored"`
}

// Desired is the state the cloud wants a device in.
type Desired struct {
	Mode string `cbor:"mode"`
	Temp int    `cbor:"temp"`
}

// A device identity from the manufacturer's CA to a token the cloud
// verifies.
func Example_identity() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "acme-device")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// At the manufacturer: an offline root and a factory intermediate.
	rootKey, err := identity.GenerateKey(identity.P256)
	if err != nil {
		log.Fatal(err)
	}
	root, err := identity.NewRootCA(rootKey, "Acme Devices Root CA", nil)
	if err != nil {
		log.Fatal(err)
	}
	factoryKey, err := identity.GenerateKey(identity.P256)
	if err != nil {
		log.Fatal(err)
	}
	factory, err := root.NewIntermediate(factoryKey, "Acme Factory 7", nil)
	if err != nil {
		log.Fatal(err)
	}

	// On the line: the device makes its key (or uses its secure element's
	// crypto.Signer), keeps it in a 0600 file, and asks for a certificate.
	devKey, err := identity.GenerateKey(identity.P256)
	if err != nil {
		log.Fatal(err)
	}
	if err := identity.WriteKeyFile(filepath.Join(dir, "device.key"), devKey); err != nil {
		log.Fatal(err)
	}
	id, err := identity.IDOf(devKey) // 27 characters for the label, e.g. X9ZZGH47RJ5KVKZ0HXNY27NN98X
	if err != nil {
		log.Fatal(err)
	}
	csr, err := identity.NewCSR(devKey)
	if err != nil {
		log.Fatal(err)
	}
	cert, err := factory.IssueDevice(csr, nil)
	if err != nil {
		log.Fatal(err)
	}

	// In the cloud: the chain proves the device ID.
	roots := x509.NewCertPool()
	roots.AddCert(root.Cert)
	proved, err := identity.VerifyChain([]*x509.Certificate{cert, factory.Cert}, roots, time.Now())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("the chain proves the device:", proved == id)

	// Without client certificates: a short-lived token the device signs,
	// checked once per session.
	const audience = "coaps+tcp://cloud.example.com"
	tok, err := identity.SignToken(devKey, identity.TokenParams{Audience: audience})
	if err != nil {
		log.Fatal(err)
	}
	keys, err := identity.StaticKeys(devKey.Public()) // in production, a lookup in your device registry
	if err != nil {
		log.Fatal(err)
	}
	v, err := identity.NewTokenVerifier(identity.VerifierConfig{Audience: audience, Keys: keys})
	if err != nil {
		log.Fatal(err)
	}
	claims, err := v.Verify(ctx, tok)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("the token is the device's:", claims.Device == id)
	_, err = v.Verify(ctx, tok)
	fmt.Println("a replayed token is refused:", errors.Is(err, identity.ErrTokenReplay))
	// Output:
	// the chain proves the device: true
	// the token is the device's: true
	// a replayed token is refused: true
}

// A cloud and a device over DTLS-PSK on loopback: telemetry from the
// device, desired state to it.
func Example_deviceToCloud() {
	ctx := context.Background()
	fleetSecret := []byte("a fleet secret of 32 bytes or more") // from your secret store
	devKey, err := identity.GenerateKey(identity.P256)
	if err != nil {
		log.Fatal(err)
	}
	id, err := identity.IDOf(devKey)
	if err != nil {
		log.Fatal(err)
	}

	// Cloud: one handler API, any transport. Devices authenticate with
	// DTLS-PSK here, with per-device keys derived from one fleet secret.
	srv := transport.NewServer(transport.ServerConfig{
		PSK: func(ctx context.Context, id identity.ID) ([]byte, error) {
			return transport.DerivePSK(fleetSecret, id)
		},
	})
	defer srv.Close()
	err = srv.Handle(transport.Resource{
		Path: "/v1/telemetry", Methods: []transport.Method{transport.POST},
		Handler: transport.Typed(func(ctx context.Context, batch []Reading) (Ack, error) {
			dev, _ := transport.DeviceFrom(ctx) // the authenticated device
			return Ack{Device: dev.String(), Stored: len(batch)}, nil
		}),
	})
	if err != nil {
		log.Fatal(err)
	}
	err = srv.Handle(transport.Resource{
		Path: "/v1/state", Observable: true,
		Handler: func(ctx context.Context, r *transport.Request) (any, error) {
			return Desired{Mode: "cool", Temp: 24}, nil
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	addr, err := srv.Listen("coaps://127.0.0.1:0") // port 0 picks a free port; a cloud uses "coaps://:5684"
	if err != nil {
		log.Fatal(err)
	}

	// Device: dial, send, and get typed errors back
	// (errors.Is(err, transport.ErrForbidden), ...).
	psk, err := transport.DerivePSK(fleetSecret, id) // written to the device at the factory
	if err != nil {
		log.Fatal(err)
	}
	c, err := transport.Dial(ctx, addr, transport.ClientConfig{PSK: psk, Device: id})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	var ack Ack
	err = c.Post(ctx, "/v1/telemetry", []Reading{{Stream: "power", Value: 41.5}}, &ack)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("stored:", ack.Stored, "from the device:", ack.Device == id.String())

	// Cloud to device: the device observes its desired state. The client
	// keeps the observation alive by itself, across reconnects and cloud
	// restarts; srv.Notify sends the next value.
	states := make(chan transport.Notification, 8)
	obs, err := c.Observe(ctx, "/v1/state", func(n transport.Notification) { states <- n })
	if err != nil {
		log.Fatal(err)
	}
	defer obs.Cancel(ctx)
	var d Desired
	if err := (<-states).Decode(&d); err != nil {
		log.Fatal(err) // a Notification's Err: values were missed, or the observation ended
	}
	fmt.Println("desired:", d.Mode, d.Temp)
	// Output:
	// stored: 1 from the device: true
	// desired: cool 24
}
