package cloud

import (
	"context"
	"errors"
	"strings"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// enroll serves POST /v1/enroll. A device the registry knows gets 2.04;
// one it does not know, which the transport admitted by its verified
// manufacturer chain, is registered with the model it names and gets
// 2.01. Claim tokens are not issued yet, so every one is unknown: 4.03.
// A device that says it was reset to its factory settings is released
// from its owner.
func (d *deviceAPI) enroll(ctx context.Context, r *transport.Request) (any, error) {
	var req protocol.EnrollRequest
	if err := r.Decode(&req); err != nil {
		return nil, err
	}
	if len(req.Claim) > 0 {
		return nil, transport.Errorf(transport.Forbidden, "unknown claim token")
	}
	dev, err := d.n.store.Device(ctx, r.Device)
	code := transport.Changed
	switch {
	case errors.Is(err, store.ErrNotFound):
		dev, err = d.register(ctx, r.Device, req.Model)
		if err != nil {
			return nil, err
		}
		code = transport.Created
	case err != nil:
		return nil, err
	case dev.Model != req.Model:
		return nil, transport.Errorf(transport.Forbidden, "the device is registered as a %q", dev.Model)
	}
	if dev.Standing != store.Active {
		return nil, transport.Errorf(transport.Unauthorized, "device refused")
	}
	if req.Reset && dev.Owner != "" {
		// Reset to its factory settings: the device forgot its owner,
		// and so does the cloud (claim.go).
		if err := d.n.release(ctx, dev.ID, "factory reset"); err != nil {
			return nil, err
		}
		dev.Owner = ""
	}
	e := protocol.Enrollment{Status: protocol.Unclaimed, Time: d.n.now().Unix()}
	if dev.Owner != "" {
		e.Status, e.Subject = protocol.Claimed, dev.Owner
	}
	switch sm, err := d.newestManifest(ctx, dev.Model); {
	case err == nil:
		e.Manifest = sm.Hash
	case !errors.Is(err, store.ErrNotFound):
		return nil, err
	}
	return &transport.Response{Code: code, Body: e}, nil
}

// register registers a device on its first contact from the chain it
// authenticated with (zero-touch), active and without an owner. A device
// registered meanwhile by another request is returned as it is.
func (d *deviceAPI) register(ctx context.Context, id identity.ID, model string) (store.Device, error) {
	chain := transport.PeerCertificates(ctx)
	if chain == nil {
		return store.Device{}, transport.Errorf(transport.Unauthorized, "device not registered")
	}
	// A name the store could not hold is no model's.
	if model == "" || strings.IndexByte(model, 0) >= 0 {
		return store.Device{}, transport.Errorf(transport.Forbidden, "unknown model")
	}
	if _, err := d.n.store.Model(ctx, model); errors.Is(err, store.ErrNotFound) {
		return store.Device{}, transport.Errorf(transport.Forbidden, "unknown model")
	} else if err != nil {
		return store.Device{}, err
	}
	raw := make([][]byte, len(chain))
	for i, c := range chain {
		raw[i] = c.Raw
	}
	dev := store.Device{ID: id, PublicKey: chain[0].RawSubjectPublicKeyInfo, Chain: raw, Model: model,
		Standing: store.Active, StandingReason: "enrolled with its manufacturer certificate", Created: d.n.now()}
	switch err := d.n.store.CreateDevice(ctx, dev); {
	case errors.Is(err, store.ErrConflict):
		return d.n.store.Device(ctx, id)
	case errors.Is(err, store.ErrNotFound):
		return store.Device{}, transport.Errorf(transport.Forbidden, "unknown model")
	case err != nil:
		return store.Device{}, err
	}
	dev.StandingSince = dev.Created
	d.n.log.Info("device enrolled", "device", id, "model", model)
	return dev, nil
}
