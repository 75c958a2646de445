package policy

import (
	"context"
	"crypto"
	"errors"
	"fmt"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/internal/codec"
)

// ErrNotMaker means a manifest was signed by a trusted key that is not a
// manufacturer's (controller's) key.
var ErrNotMaker = errors.New("policy: manifest not signed by the maker")

// manifestDecoder decodes signed manifests: larger than records, still
// bounded.
var manifestDecoder = func() *codec.Decoder {
	d, err := codec.NewDecoder(codec.Limits{MaxBody: MaxManifestSize, MaxDepth: 8, MaxArray: 1024, MaxMap: 32})
	if err != nil {
		panic(err) // fixed limits
	}
	return d
}()

// clone returns a deep copy of m, so that what a hash or an Enforcer
// names cannot change under it.
func (m *Manifest) clone() (*Manifest, error) {
	b, err := codec.Marshal(m)
	if err != nil {
		return nil, err
	}
	var c Manifest
	if err := manifestDecoder.Unmarshal(b, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// Sign validates m and signs its deterministic CBOR encoding as a
// COSE_Sign1 message, as consent records are signed, so a device can run
// only a manifest its maker signed.
func (m *Manifest) Sign(signer crypto.Signer, kid []byte) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	payload, err := codec.Marshal(m)
	if err != nil {
		return nil, err
	}
	return consent.SignPayload(payload, signer, kid)
}

// OpenSigned checks a signed manifest against makers, which must hold the
// manufacturer's keys with the controller role, and returns the manifest.
// Errors match consent's verification errors (consent.ErrBadSignature,
// consent.ErrUnknownKey, ...), ErrNotMaker, or ErrInvalid.
func OpenSigned(ctx context.Context, msg []byte, makers consent.Keys) (*Manifest, error) {
	payload, key, err := consent.VerifyPayload(ctx, makers, msg)
	if err != nil {
		return nil, err
	}
	if key.Role != consent.ControllerKey {
		return nil, fmt.Errorf("%w: key %x", ErrNotMaker, key.KID)
	}
	var m Manifest
	if err := manifestDecoder.Unmarshal(payload, &m); err != nil {
		var de *durationError
		if errors.As(err, &de) {
			return nil, &ManifestError{Path: "(signed manifest)", Problem: de.Error()}
		}
		return nil, &ManifestError{Path: "(signed manifest)", Problem: err.Error()}
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}
