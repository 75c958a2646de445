package consent

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/mod/sumdb/note"
)

// noteAlgEd25519 is the note package's algorithm byte for Ed25519 keys.
const noteAlgEd25519 = 1

// A NoteSigner signs notes, and so log checkpoints, with an Ed25519 key
// behind a crypto.Signer: an ed25519.PrivateKey, or a key that never
// leaves a secure element or an HSM. It implements note.Signer, and signs
// exactly as note.NewSigner does for the same key and name, so its notes
// verify with the standard note verifier of VerifierKey.
type NoteSigner struct {
	name string
	key  crypto.Signer
	pub  ed25519.PublicKey
	hash uint32
}

var _ note.Signer = (*NoteSigner)(nil)

// NewNoteSigner returns a note signer named name (the log's origin: no
// spaces and no '+') for key, whose public key must be an
// ed25519.PublicKey. The key must be safe for concurrent use, as
// crypto.Signer keys generally are; a Log signs one checkpoint at a time.
func NewNoteSigner(name string, key crypto.Signer) (*NoteSigner, error) {
	if !validNoteName(name) {
		return nil, fmt.Errorf("consent: note key name %q has a space or '+', or is empty", name)
	}
	if key == nil {
		return nil, errors.New("consent: no note signing key")
	}
	pub, ok := key.Public().(ed25519.PublicKey)
	if !ok || len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("consent: note signing key is %T, not Ed25519", key.Public())
	}
	return &NoteSigner{name: name, key: key, pub: pub, hash: noteKeyHash(name, pub)}, nil
}

// noteKeyHash is the note package's key hash: the first four bytes of
// SHA-256(name, "\n", algorithm byte, public key), big-endian.
func noteKeyHash(name string, pub ed25519.PublicKey) uint32 {
	h := sha256.New()
	h.Write([]byte(name))
	h.Write([]byte("\n"))
	h.Write([]byte{noteAlgEd25519})
	h.Write(pub)
	return binary.BigEndian.Uint32(h.Sum(nil))
}

// Name returns the key's name.
func (s *NoteSigner) Name() string { return s.name }

// KeyHash returns the key hash that names the key in signatures.
func (s *NoteSigner) KeyHash() uint32 { return s.hash }

// Sign signs msg with the key (pure Ed25519). It checks the signature
// before returning it, so a faulty device never makes a checkpoint that
// does not verify.
func (s *NoteSigner) Sign(msg []byte) ([]byte, error) {
	sig, err := s.key.Sign(rand.Reader, msg, crypto.Hash(0))
	if err != nil {
		return nil, fmt.Errorf("consent: note signing key: %w", err)
	}
	if len(sig) != ed25519.SignatureSize || !ed25519.Verify(s.pub, msg, sig) {
		return nil, errors.New("consent: note signing key returned a signature that does not verify")
	}
	return sig, nil
}

// VerifierKey returns the public key in the note verifier key format
// (name+hash+key), for note.NewVerifier, OpenCheckpoint, VerifyReceipt and
// NewMonitor.
func (s *NoteSigner) VerifierKey() string {
	return fmt.Sprintf("%s+%08x+%s", s.name, s.hash, base64.StdEncoding.EncodeToString(append([]byte{noteAlgEd25519}, s.pub...)))
}
