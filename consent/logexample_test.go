package consent_test

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sensible-iot/sensible/consent"
)

// A consent log in a file, signing its checkpoints with an Ed25519 key
// behind crypto.Signer (here in memory; in production a secure element or
// an HSM holds it). Appending the same record twice stores it once.
func ExampleOpenLog() {
	ctx := context.Background()
	seed := sha256.Sum256([]byte("example log key"))
	var key ed25519.PrivateKey = ed25519.NewKeyFromSeed(seed[:]) // any crypto.Signer with an Ed25519 public key
	signer, err := consent.NewNoteSigner("consent.acme.example", key)
	if err != nil {
		panic(err)
	}
	vkey := signer.VerifierKey() // published: anyone can check receipts with it

	dir, _ := os.MkdirTemp("", "consent")
	defer os.RemoveAll(dir)
	store, err := consent.OpenFileLogStore(filepath.Join(dir, "consent.log"))
	if err != nil {
		panic(err)
	}
	defer store.Close()
	log, err := consent.OpenLog(ctx, store, signer)
	if err != nil {
		panic(err)
	}

	for _, record := range []string{"signed record A", "signed record B", "signed record A"} {
		receipt, err := log.Append(ctx, []byte(record))
		if err != nil {
			panic(err)
		}
		fmt.Printf("%s: index %d, verifies: %v\n", record, receipt.Index, consent.VerifyReceipt(receipt, []byte(record), vkey) == nil)
	}
	ck, _ := log.Checkpoint(ctx)
	fmt.Println("entries:", ck.Size)
	// Output:
	// signed record A: index 0, verifies: true
	// signed record B: index 1, verifies: true
	// signed record A: index 0, verifies: true
	// entries: 2
}
