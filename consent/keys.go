package consent

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"sync"

	"github.com/sensible-iot/sensible/device/identity"
)

// A Role says whose key signed a record.
type Role uint8

// Signer roles.
const (
	// SubjectKey is a key of the subject's own app.
	SubjectKey Role = 1
	// DeviceKey is the key of a device on which the subject gave consent.
	DeviceKey Role = 2
	// ControllerKey is a key of the controller (the product company).
	ControllerKey Role = 3
)

// A TrustedKey is a public key allowed to sign records.
type TrustedKey struct {
	// KID is the key ID carried in the record's protected header.
	KID []byte
	// Key is an ECDSA P-256 or Ed25519 public key.
	Key crypto.PublicKey
	// Role says whose key it is.
	Role Role
	// Subject is the subject whose app or device holds the key; empty for
	// controller keys.
	Subject string
	// Controller is, for a controller key, the controller it speaks for;
	// empty means any.
	Controller string
}

// check validates k as a key that may be trusted.
func (k *TrustedKey) check() error {
	if len(k.KID) == 0 {
		return errors.New("consent: trusted key without a key ID")
	}
	if _, err := identity.TypeOf(k.Key); err != nil {
		return err
	}
	if k.Role == 0 || k.Role > ControllerKey || (k.Role != ControllerKey && k.Subject == "") {
		return errors.New("consent: trusted key needs a role, and a subject unless it is the controller's")
	}
	return nil
}

// Keys finds the keys trusted to sign records and manifests, by the key ID
// a message's header names. KeySet keeps them in memory; the cloud's
// registry implements Keys over its store, so that every node trusts the
// same keys and a key removed on one is refused on all.
type Keys interface {
	// LookupKey returns the trusted key with key ID kid. A key that is
	// not trusted is an error matching ErrUnknownKey; any other error (a
	// store that failed, ctx's own) is returned as it is.
	LookupKey(ctx context.Context, kid []byte) (TrustedKey, error)
}

// A KeySet holds trusted keys in memory. It is safe for concurrent use;
// the zero value is an empty set.
type KeySet struct {
	mu   sync.RWMutex
	keys map[string]TrustedKey
}

// Add trusts k. A key ID may be trusted once: to replace a key, Remove it
// first.
func (s *KeySet) Add(k TrustedKey) error {
	if err := k.check(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keys == nil {
		s.keys = make(map[string]TrustedKey)
	}
	if _, dup := s.keys[string(k.KID)]; dup {
		return fmt.Errorf("consent: key ID %x already trusted", k.KID)
	}
	s.keys[string(k.KID)] = k
	return nil
}

// Remove stops trusting the key with key ID kid, reporting whether it was
// trusted. Messages it signed no longer verify.
func (s *KeySet) Remove(kid []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.keys[string(kid)]
	delete(s.keys, string(kid))
	return ok
}

// LookupKey implements Keys.
func (s *KeySet) LookupKey(ctx context.Context, kid []byte) (TrustedKey, error) {
	if err := ctx.Err(); err != nil {
		return TrustedKey{}, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	k, ok := s.keys[string(kid)]
	if !ok {
		return TrustedKey{}, fmt.Errorf("%w: %x", ErrUnknownKey, kid)
	}
	return k, nil
}
