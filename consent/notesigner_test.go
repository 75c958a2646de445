package consent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

// hardwareKey is a crypto.Signer that is not an ed25519.PrivateKey, as a
// secure element's or an HSM's key is: it only signs.
type hardwareKey struct {
	priv  ed25519.PrivateKey
	calls int
}

func (k *hardwareKey) Public() crypto.PublicKey { return k.priv.Public() }

func (k *hardwareKey) Sign(_ io.Reader, msg []byte, opts crypto.SignerOpts) ([]byte, error) {
	k.calls++
	return k.priv.Sign(nil, msg, opts)
}

// TestNoteSigner: a NoteSigner on a key behind crypto.Signer signs as
// note.NewSigner does with the same private key and name: the same key
// hash, verifier key and signatures, and its checkpoints verify with the
// standard verifier.
func TestNoteSigner(t *testing.T) {
	ctx := context.Background()
	seed := sha256.Sum256([]byte("note signer test"))
	const name = "consent.example/log"
	skey, vkey, err := note.GenerateKey(bytes.NewReader(seed[:]), name)
	if err != nil {
		t.Fatal(err)
	}
	std, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	hw := &hardwareKey{priv: ed25519.NewKeyFromSeed(seed[:])}
	s, err := NewNoteSigner(name, hw)
	if err != nil {
		t.Fatal(err)
	}
	if s.Name() != std.Name() || s.KeyHash() != std.KeyHash() {
		t.Fatalf("name and hash %s %08x, note's %s %08x", s.Name(), s.KeyHash(), std.Name(), std.KeyHash())
	}
	if s.VerifierKey() != vkey {
		t.Fatalf("verifier key %s, note's %s", s.VerifierKey(), vkey)
	}
	if vk, _ := note.NewEd25519VerifierKey(name, hw.priv.Public().(ed25519.PublicKey)); vk != vkey {
		t.Fatalf("note.NewEd25519VerifierKey gives %s", vk)
	}
	msg := &note.Note{Text: "consent.example/log\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"}
	a, err := note.Sign(msg, s)
	if err != nil {
		t.Fatal(err)
	}
	b, err := note.Sign(msg, std)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatalf("signed notes differ:\n%s\n%s", a, b)
	}

	// A log signing through the hardware key: its checkpoints open with
	// note's own verifier and with OpenCheckpoint, and its receipts
	// verify.
	l, err := OpenLog(ctx, &MemLogStore{}, s)
	if err != nil {
		t.Fatal(err)
	}
	r, err := l.Append(ctx, entry(0))
	if err != nil {
		t.Fatal(err)
	}
	if hw.calls == 0 {
		t.Fatal("the log did not sign through the key")
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := note.Open(r.Checkpoint, note.VerifierList(v)); err != nil {
		t.Fatalf("note.Open: %v", err)
	}
	if err := VerifyReceipt(r, entry(0), vkey); err != nil {
		t.Fatal(err)
	}
	// The same log signed with note's signer gives the same checkpoint.
	l2, err := OpenLog(ctx, l.store, std)
	if err != nil {
		t.Fatal(err)
	}
	c1, _ := l.Checkpoint(ctx)
	c2, _ := l2.Checkpoint(ctx)
	if !bytes.Equal(c1.Signed, c2.Signed) {
		t.Fatal("checkpoints of one log differ between the two signers")
	}
}

func TestNoteSignerRefuses(t *testing.T) {
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, c := range []struct {
		name string
		key  crypto.Signer
	}{
		{"consent.example/log", p256},
		{"consent.example/log", nil},
		{"", ed},
		{"a log", ed},
		{"a+log", ed},
		{"a\nlog", ed},
		{"\xff", ed},
	} {
		if _, err := NewNoteSigner(c.name, c.key); err == nil {
			t.Errorf("NewNoteSigner(%q, %T) succeeded", c.name, c.key)
		}
	}
	// A device that returns a bad signature makes no checkpoint.
	s, err := NewNoteSigner("consent.example/log", &badKey{ed})
	if err != nil {
		t.Fatal(err)
	}
	l, err := OpenLog(context.Background(), &MemLogStore{}, s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Checkpoint(context.Background()); err == nil {
		t.Fatal("checkpoint signed with a bad signature")
	}
}

// badKey signs wrongly.
type badKey struct{ ed25519.PrivateKey }

func (k *badKey) Sign(r io.Reader, msg []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := k.PrivateKey.Sign(r, msg, opts)
	sig[0] ^= 1
	return sig, err
}
