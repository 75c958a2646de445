package device

import (
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
)

// MinSecret is the shortest Config.Secret accepted, in bytes.
const MinSecret = 16

// HKDF info strings: one key per use of the device's secret.
const (
	infoOutbox     = "sensible device outbox v1"
	infoPseudonyms = "sensible device pseudonyms v1"
)

// secretOf returns the device secret the config gives: Config.Secret, or
// one derived from a software device key.
func secretOf(cfg *Config) ([]byte, error) {
	if len(cfg.Secret) > 0 {
		if len(cfg.Secret) < MinSecret {
			return nil, fmt.Errorf("device: Config.Secret of %d bytes, want at least %d", len(cfg.Secret), MinSecret)
		}
		return cfg.Secret, nil
	}
	switch k := cfg.Key.(type) {
	case *ecdsa.PrivateKey:
		b, err := k.Bytes()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrNoSecret, err)
		}
		return b, nil
	case ed25519.PrivateKey:
		return k.Seed(), nil
	}
	return nil, ErrNoSecret
}

// deriveKey derives a 32-byte key for one use (info) from the secret.
func deriveKey(secret []byte, info string) ([]byte, error) {
	return hkdf.Key(sha256.New, secret, nil, info, 32)
}

// Kinds of sealed record, the first byte of their associated data.
const (
	adCheck   = 'k' // the canary in the meta bucket
	adQueue   = 'q' // a queue's descriptor
	adReading = 'r' // a queued reading
	adBatch   = 'b' // a formed batch
	adConsent = 'c' // a consent record
)

// A sealer encrypts what the outbox keeps with XChaCha20-Poly1305: a
// random 24-byte nonce before each ciphertext, and associated data that
// names the record's place (its kind, the outbox's epoch, its bucket and
// key), so that a record moved to another place, or into another outbox,
// no longer opens.
type sealer struct {
	aead  cipher.AEAD
	epoch uint64
}

func newSealer(key []byte, epoch uint64) (*sealer, error) {
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead, epoch: epoch}, nil
}

// An ad is the associated data of one record: kind, epoch, and up to
// two numbers naming its bucket and key.
type ad [1 + 8 + 4 + 8]byte

func (s *sealer) ad(kind byte, bucket uint32, key uint64) ad {
	var a ad
	a[0] = kind
	binary.BigEndian.PutUint64(a[1:], s.epoch)
	binary.BigEndian.PutUint32(a[9:], bucket)
	binary.BigEndian.PutUint64(a[13:], key)
	return a
}

// seal appends the sealed plain to dst.
func (s *sealer) seal(dst []byte, a ad, plain []byte) []byte {
	n := len(dst)
	dst = append(dst, make([]byte, chacha20poly1305.NonceSizeX)...)
	nonce := dst[n:]
	rand.Read(nonce) // never fails (crypto/rand)
	return s.aead.Seal(dst, nonce, plain, a[:])
}

var errUnsealed = errors.New("device: record does not decrypt")

// open returns the plain text of sealed, appended to dst.
func (s *sealer) open(dst []byte, a ad, sealed []byte) ([]byte, error) {
	if len(sealed) < chacha20poly1305.NonceSizeX+s.aead.Overhead() {
		return nil, errUnsealed
	}
	nonce, ct := sealed[:chacha20poly1305.NonceSizeX], sealed[chacha20poly1305.NonceSizeX:]
	out, err := s.aead.Open(dst, nonce, ct, a[:])
	if err != nil {
		return nil, errUnsealed
	}
	return out, nil
}

// sealOverhead is what sealing adds to a record.
const sealOverhead = chacha20poly1305.NonceSizeX + chacha20poly1305.Overhead
