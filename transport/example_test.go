package transport_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/transport"
)

type reading struct {
	Stream string  `cbor:"stream"`
	Value  float64 `cbor:"value"`
}

// A cloud serving telemetry over DTLS-PSK on loopback, and a device
// posting a batch to it.
func Example() {
	ctx := context.Background()
	fleetSecret := []byte("an example fleet secret, 32 bytes")
	devKey, _ := identity.GenerateKey(identity.P256)
	id, _ := identity.IDOf(devKey)

	srv := transport.NewServer(transport.ServerConfig{
		PSK: func(ctx context.Context, id identity.ID) ([]byte, error) {
			return transport.DerivePSK(fleetSecret, id)
		},
	})
	defer srv.Close()
	srv.Handle(transport.Resource{
		Path: "/v1/telemetry", Methods: []transport.Method{transport.POST},
		Handler: transport.Typed(func(ctx context.Context, batch []reading) (int, error) {
			dev, _ := transport.DeviceFrom(ctx)
			fmt.Println("from the device:", dev == id, len(batch), "readings")
			return len(batch), nil
		}),
	})
	srv.Handle(transport.Resource{
		Path: "/v1/share", Methods: []transport.Method{transport.POST},
		Handler: func(ctx context.Context, r *transport.Request) (any, error) {
			return nil, transport.Errorf(transport.Forbidden, "no consent")
		},
	})
	addr, err := srv.Listen("coaps://127.0.0.1:0")
	if err != nil {
		panic(err)
	}

	psk, _ := transport.DerivePSK(fleetSecret, id)
	c, err := transport.Dial(ctx, addr, transport.ClientConfig{PSK: psk, Device: id})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	var stored int
	err = c.Post(ctx, "/v1/telemetry", []reading{{"power", 41.5}, {"power", 40}}, &stored)
	fmt.Println("stored:", stored, err)
	err = c.Post(ctx, "/v1/share", "pest-control", nil)
	fmt.Println("share refused:", errors.Is(err, transport.ErrForbidden), err)
	// Output:
	// from the device: true 2 readings
	// stored: 2 <nil>
	// share refused: true transport: 4.03 no consent
}
