package cloud

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
)

// An ImportedDevice is a device from the factory's list: its public key
// and model, for devices that use DTLS-PSK or tokens rather than a
// manufacturer certificate.
type ImportedDevice struct {
	// Key is the device's public key; its ID is derived from it.
	Key crypto.PublicKey
	// Model is the device's product model, which must be registered.
	Model string
}

// ImportDevice registers a device from the factory's list, active, with no
// owner. A device already registered is store.ErrConflict.
func (n *Node) ImportDevice(ctx context.Context, d ImportedDevice) (identity.ID, error) {
	id, err := identity.IDFromPublicKey(d.Key)
	if err != nil {
		return identity.ID{}, err
	}
	der, err := x509.MarshalPKIXPublicKey(d.Key)
	if err != nil {
		return identity.ID{}, err
	}
	now := n.now()
	err = n.store.CreateDevice(ctx, store.Device{ID: id, PublicKey: der, Model: d.Model, Standing: store.Active, StandingReason: "imported", Created: now})
	if err != nil {
		return identity.ID{}, fmt.Errorf("cloud: importing device %s: %w", id, err)
	}
	return id, nil
}

// SetStanding suspends, reactivates or decommissions a device, and closes
// every session it has at once, on this node and, through the store's
// notifier, on every node sharing the store, so that it is refused from its
// next request on.
func (n *Node) SetStanding(ctx context.Context, id identity.ID, s store.Standing, reason string) error {
	if err := n.store.SetStanding(ctx, id, s, reason, n.now()); err != nil {
		return err
	}
	if s != store.Active {
		n.srv.Revoke(id)
		n.log.Info("device refused", "device", id, "standing", s, "reason", reason)
		n.announceStanding(ctx, id)
	}
	return nil
}

// selfSignedCertificate makes a server certificate for localhost under a
// throwaway root, for a node started without one.
func selfSignedCertificate() (*tls.Certificate, error) {
	rootKey, err := identity.GenerateKey(identity.P256)
	if err != nil {
		return nil, err
	}
	root, err := identity.NewRootCA(rootKey, "Sensible development root", nil)
	if err != nil {
		return nil, err
	}
	key, err := identity.GenerateKey(identity.P256)
	if err != nil {
		return nil, err
	}
	cert, err := root.IssueServer(key.Public(), []string{"localhost", "127.0.0.1", "::1"}, nil)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{cert.Raw, root.Cert.Raw}, PrivateKey: key, Leaf: cert}, nil
}
