package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
)

// KeyType names the kinds of device key this package supports.
type KeyType int

const (
	// P256 is ECDSA over NIST P-256 with SHA-256 (JOSE ES256, COSE -7):
	// the default, and what secure elements and TPMs hold.
	P256 KeyType = iota
	// Ed25519 is EdDSA over Curve25519 (JOSE and COSE EdDSA).
	Ed25519
)

// String returns "P-256" or "Ed25519".
func (t KeyType) String() string {
	switch t {
	case P256:
		return "P-256"
	case Ed25519:
		return "Ed25519"
	}
	return fmt.Sprintf("KeyType(%d)", int(t))
}

// GenerateKey returns a new private key of type t from crypto/rand. The zero
// KeyType is P256. Keys that must never leave hardware are not made here:
// a product passes its own [crypto.Signer] wherever this package takes one.
func GenerateKey(t KeyType) (crypto.Signer, error) {
	switch t {
	case P256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, wrap(ErrUnsupportedKey, "key type %v", t)
}

// TypeOf reports the KeyType of a public key, or ErrUnsupportedKey.
func TypeOf(pub crypto.PublicKey) (KeyType, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k == nil || k.Curve == nil || k.X == nil || k.Y == nil {
			return 0, wrap(ErrUnsupportedKey, "incomplete ECDSA public key")
		}
		if k.Curve != elliptic.P256() {
			return 0, wrap(ErrUnsupportedKey, "ECDSA curve %s", k.Curve.Params().Name)
		}
		return P256, nil
	case ed25519.PublicKey:
		if len(k) == ed25519.PublicKeySize {
			return Ed25519, nil
		}
		return 0, wrap(ErrUnsupportedKey, "Ed25519 public key of %d bytes", len(k))
	}
	return 0, wrap(ErrUnsupportedKey, "%T", pub)
}

// MarshalPrivateKeyPEM encodes a software key as a PKCS#8 "PRIVATE KEY" PEM
// block. A key held in hardware cannot be exported and gives ErrUnsupportedKey.
func MarshalPrivateKeyPEM(key crypto.Signer) ([]byte, error) {
	switch key.(type) {
	case *ecdsa.PrivateKey, ed25519.PrivateKey:
	default:
		return nil, wrap(ErrUnsupportedKey, "cannot export %T", key)
	}
	if _, err := TypeOf(key.Public()); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, wrap(ErrUnsupportedKey, "%v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePrivateKeyPEM decodes one PKCS#8 "PRIVATE KEY" PEM block holding an
// ECDSA P-256 or Ed25519 key. Anything else in the input, a damaged block,
// or another key type is an error matching ErrMalformedKey or
// ErrUnsupportedKey.
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	if !bytes.HasPrefix(bytes.TrimSpace(data), []byte("-----BEGIN ")) {
		return nil, wrap(ErrMalformedKey, "not a PEM block")
	}
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, wrap(ErrMalformedKey, "no PEM block found")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, wrap(ErrMalformedKey, "data after the PEM block")
	}
	if block.Type != "PRIVATE KEY" {
		return nil, wrap(ErrMalformedKey, "PEM block is %q, want \"PRIVATE KEY\" (PKCS#8)", block.Type)
	}
	if len(block.Headers) != 0 {
		return nil, wrap(ErrMalformedKey, "PEM headers are not supported (encrypted key?)")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, wrap(ErrMalformedKey, "%v", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, wrap(ErrUnsupportedKey, "%T", k)
	}
	if _, err := TypeOf(s.Public()); err != nil {
		return nil, err
	}
	return s, nil
}

// WriteKeyFile writes key to path as PKCS#8 PEM with mode 0600. The write is
// atomic: the file is written beside its destination, synced, and renamed
// over it, so a power cut leaves either the old file or the new one.
func WriteKeyFile(path string, key crypto.Signer) error {
	data, err := MarshalPrivateKeyPEM(key)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, data, 0o600)
}

// LoadKeyFile reads a key written by [WriteKeyFile] (or any PKCS#8 PEM file
// holding a P-256 or Ed25519 key). On Unix a file that users other than its
// owner may read or write is refused with a *KeyFileModeError.
func LoadKeyFile(path string) (crypto.Signer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, wrap(ErrMalformedKey, "%s is not a regular file", path)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		return nil, &KeyFileModeError{Path: path, Mode: fi.Mode()}
	}
	const maxKeyFile = 64 << 10
	if fi.Size() > maxKeyFile {
		return nil, wrap(ErrMalformedKey, "%s is %d bytes, too large for a key file", path, fi.Size())
	}
	data := make([]byte, fi.Size())
	if _, err := f.ReadAt(data, 0); err != nil {
		return nil, fmt.Errorf("identity: reading %s: %w", path, err)
	}
	k, err := ParsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%w (file %s)", err, path)
	}
	return k, nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(mode); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	// Make the rename itself durable.
	if d, derr := os.Open(dir); derr == nil {
		serr := d.Sync()
		d.Close()
		if serr != nil && !errors.Is(serr, os.ErrInvalid) {
			return serr
		}
	}
	return nil
}
