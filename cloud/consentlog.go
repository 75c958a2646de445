package cloud

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/sensible-iot/sensible/consent"
)

// ConsentLogKeyFile is the file in Config.Dir that holds the consent
// log's signing key when Config.ConsentLogSigner is nil: an Ed25519 key in
// PKCS #8 PEM, readable by its owner only.
const ConsentLogKeyFile = "consent-log-key.pem"

// ConsentLogName is the name (origin) of a consent log whose signer the
// node makes itself.
const ConsentLogName = "sensible.consent.log"

// openConsentLog opens the consent log in the store, with the configured
// signer, the key in Dir, or a key of this process.
func (n *Node) openConsentLog(ctx context.Context) error {
	signer := n.cfg.ConsentLogSigner
	if signer == nil {
		key, err := n.loadConsentLogKey()
		if err != nil {
			return err
		}
		s, err := consent.NewNoteSigner(ConsentLogName, key)
		if err != nil {
			return err
		}
		signer = s
	}
	l, err := consent.OpenLog(ctx, n.store.ConsentLog(), signer)
	if err != nil {
		return err
	}
	vk, ok := signer.(interface{ VerifierKey() string })
	if !ok {
		return errors.New("cloud: Config.ConsentLogSigner must have a VerifierKey method (consent.NoteSigner has)")
	}
	n.consentLog, n.consentLogKey = l, vk.VerifierKey()
	return nil
}

// loadConsentLogKey loads the consent log's key from Dir, making it on first
// start; without Dir it makes one for this process.
func (n *Node) loadConsentLogKey() (ed25519.PrivateKey, error) {
	if n.cfg.Dir == "" {
		n.log.Warn("no consent log signer and no directory: the consent log's key lasts as long as this process")
		_, key, err := ed25519.GenerateKey(rand.Reader)
		return key, err
	}
	path := filepath.Join(n.cfg.Dir, ConsentLogKeyFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("cloud: making the consent log key: %w", err)
		}
		if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
			f.Close()
			return nil, err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, err
		}
		return key, f.Close()
	}
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("cloud: %s holds no PKCS #8 PEM key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("cloud: %s: %w", path, err)
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("cloud: %s holds a %T, not an Ed25519 key", path, k)
	}
	return key, nil
}
