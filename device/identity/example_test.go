package identity_test

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sensible-iot/sensible/device/identity"
)

// The whole life of a device identity: a manufacturer's CA, a device key
// and ID, its certificate, the chain checked by the cloud, and a device
// token issued and verified.
func Example() {
	// At the manufacturer: an offline root and a factory intermediate.
	rootKey, _ := identity.GenerateKey(identity.P256)
	root, err := identity.NewRootCA(rootKey, "Acme Devices Root CA", &identity.CertOptions{Organization: "Acme"})
	if err != nil {
		panic(err)
	}
	factoryKey, _ := identity.GenerateKey(identity.P256)
	factory, err := root.NewIntermediate(factoryKey, "Acme Factory 7", nil)
	if err != nil {
		panic(err)
	}
	fmt.Println("root may sign intermediates:", root.Cert.IsCA, root.Cert.MaxPathLen)

	// On the line: the device makes its key (here a fixed one, so that the
	// ID printed below is stable) and asks for a certificate.
	seed, _ := hex.DecodeString("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
	devKey := ed25519.NewKeyFromSeed(seed)
	id, _ := identity.IDOf(devKey)
	fmt.Println("device ID:", id)
	csr, _ := identity.NewCSR(devKey)
	cert, err := factory.IssueDevice(csr, nil)
	if err != nil {
		panic(err)
	}
	fmt.Println("certificate names:", cert.Subject.CommonName, cert.URIs[0])

	// In the cloud: the chain proves the device ID.
	roots := x509.NewCertPool()
	roots.AddCert(root.Cert)
	proved, err := identity.VerifyChain([]*x509.Certificate{cert, factory.Cert}, roots, time.Now())
	fmt.Println("chain proves:", proved, err)

	// Over a transport without client certificates: a device token.
	const aud = "coaps+tcp://cloud.example.com"
	tok, _ := identity.SignToken(devKey, identity.TokenParams{Audience: aud, Lifetime: 5 * time.Minute})
	keys, _ := identity.StaticKeys(cert.PublicKey)
	v, _ := identity.NewTokenVerifier(identity.VerifierConfig{Audience: aud, Keys: keys})
	claims, err := v.Verify(context.Background(), tok)
	fmt.Println("token from:", claims.Device, err)
	_, err = v.Verify(context.Background(), tok)
	fmt.Println("same token again refused as replay:", errors.Is(err, identity.ErrTokenReplay))

	// Output:
	// root may sign intermediates: true 1
	// device ID: X9ZZGH47RJ5KVKZ0HXNY27NN98X
	// certificate names: X9ZZGH47RJ5KVKZ0HXNY27NN98X urn:sensible:device:X9ZZGH47RJ5KVKZ0HXNY27NN98X
	// chain proves: X9ZZGH47RJ5KVKZ0HXNY27NN98X <nil>
	// token from: X9ZZGH47RJ5KVKZ0HXNY27NN98X <nil>
	// same token again refused as replay: true
}

// An ID read off a label parses even when typed in lower case with
// hyphens, and a mistyped one is caught by its check character.
func ExampleParseID() {
	id, err := identity.ParseID("x9zzgh47r-j5kvkz0hx-ny27nn98x")
	fmt.Println(id, err)
	_, err = identity.ParseID("X9ZZGH47RJ5KVKZ0HXNY27NN99X")
	fmt.Println(errors.Is(err, identity.ErrMalformedID))
	// Output:
	// X9ZZGH47RJ5KVKZ0HXNY27NN98X <nil>
	// true
}

// A key file that other users can read is refused, with the fix in the error.
func ExampleLoadKeyFile() {
	dir, _ := os.MkdirTemp("", "keys")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "device.key")
	key, _ := identity.GenerateKey(identity.P256)
	if err := identity.WriteKeyFile(path, key); err != nil {
		panic(err)
	}
	if _, err := identity.LoadKeyFile(path); err == nil {
		fmt.Println("loaded")
	}
	os.Chmod(path, 0o644)
	_, err := identity.LoadKeyFile(path)
	fmt.Println(errors.Is(err, identity.ErrKeyFileMode))
	// Output:
	// loaded
	// true
}

// Two nodes of one service share a replay cache, so that a token one of
// them accepted is refused by the other. Here the cache is in memory; nodes
// in separate processes would share a ReplayCache backed by their common
// database.
func ExampleMemoryReplayCache() {
	const aud = "coaps+tcp://cloud.example.com"
	devKey, _ := identity.GenerateKey(identity.P256)
	keys, _ := identity.StaticKeys(devKey.Public())
	shared := identity.NewMemoryReplayCache(identity.MemoryReplayConfig{})
	nodeA, _ := identity.NewTokenVerifier(identity.VerifierConfig{Audience: aud, Keys: keys, Replay: shared})
	nodeB, _ := identity.NewTokenVerifier(identity.VerifierConfig{Audience: aud, Keys: keys, Replay: shared})

	tok, _ := identity.SignToken(devKey, identity.TokenParams{Audience: aud})
	_, err := nodeA.Verify(context.Background(), tok)
	fmt.Println("node A:", err)
	_, err = nodeB.Verify(context.Background(), tok)
	fmt.Println("node B refuses a replay:", errors.Is(err, identity.ErrTokenReplay))
	fmt.Println("tokens remembered:", shared.Len())
	// Output:
	// node A: <nil>
	// node B refuses a replay: true
	// tokens remembered: 1
}
