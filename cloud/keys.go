package cloud

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/device/identity"
)

// Keys is the consent.Keys of a cloud: the keys that may sign consent
// records and manifests, looked up in the registry on every verification,
// so that a key removed through one node is refused by all of them.
//
// A key ID that is a device ID (its 27-character text form) names that
// device's key, trusted as a DeviceKey of the device's owner; any other key
// ID names a subject's app key (SubjectKey), or one of the maker's
// controller keys given to NewKeys.
type Keys struct {
	store       store.Store
	controllers consent.KeySet
}

// NewKeys returns the keys of the registry in st, with the maker's
// controller keys.
func NewKeys(st store.Store, controllers []consent.TrustedKey) (*Keys, error) {
	k := &Keys{store: st}
	for _, c := range controllers {
		if c.Role != consent.ControllerKey {
			return nil, fmt.Errorf("cloud: controller key %x has role %d", c.KID, c.Role)
		}
		if err := k.controllers.Add(c); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// LookupKey implements consent.Keys.
func (k *Keys) LookupKey(ctx context.Context, kid []byte) (consent.TrustedKey, error) {
	if c, err := k.controllers.LookupKey(ctx, kid); err == nil {
		return c, nil
	}
	if len(kid) == identity.IDLength {
		if id, err := identity.ParseID(string(kid)); err == nil && id.String() == string(kid) {
			return k.deviceKey(ctx, id, kid)
		}
	}
	a, err := k.store.AppKey(ctx, kid)
	if errors.Is(err, store.ErrNotFound) {
		return consent.TrustedKey{}, fmt.Errorf("%w: %x", consent.ErrUnknownKey, kid)
	}
	if err != nil {
		return consent.TrustedKey{}, err
	}
	pub, err := x509.ParsePKIXPublicKey(a.PublicKey)
	if err != nil {
		return consent.TrustedKey{}, fmt.Errorf("cloud: app key %x: %w", kid, err)
	}
	return consent.TrustedKey{KID: a.KID, Key: pub, Role: consent.SubjectKey, Subject: a.Subject}, nil
}

// deviceKey returns the key of an active device that has an owner, as the
// owner's DeviceKey.
func (k *Keys) deviceKey(ctx context.Context, id identity.ID, kid []byte) (consent.TrustedKey, error) {
	d, err := k.store.Device(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return consent.TrustedKey{}, fmt.Errorf("%w: device %s", consent.ErrUnknownKey, id)
	}
	if err != nil {
		return consent.TrustedKey{}, err
	}
	if d.Standing != store.Active || d.Owner == "" {
		return consent.TrustedKey{}, fmt.Errorf("%w: device %s is %s and owned by %q", consent.ErrUnknownKey, id, d.Standing, d.Owner)
	}
	pub, err := x509.ParsePKIXPublicKey(d.PublicKey)
	if err != nil {
		return consent.TrustedKey{}, fmt.Errorf("cloud: device key %s: %w", id, err)
	}
	return consent.TrustedKey{KID: kid, Key: pub, Role: consent.DeviceKey, Subject: d.Owner}, nil
}
