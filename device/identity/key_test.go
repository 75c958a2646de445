package identity

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

func TestKeyFileRoundTrip(t *testing.T) {
	for _, kt := range []KeyType{P256, Ed25519} {
		t.Run(kt.String(), func(t *testing.T) {
			k, err := GenerateKey(kt)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "device.key")
			if err := WriteKeyFile(path, k); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600 {
				t.Errorf("mode %04o, want 0600", fi.Mode().Perm())
			}
			got, err := LoadKeyFile(path)
			if err != nil {
				t.Fatal(err)
			}
			a, _ := IDOf(k)
			b, _ := IDOf(got)
			if a != b {
				t.Errorf("loaded key has ID %s, wrote %s", b, a)
			}
			if gt, _ := TypeOf(got.Public()); gt != kt {
				t.Errorf("loaded %v, want %v", gt, kt)
			}
			// Overwriting leaves exactly one file, no temporaries.
			if err := WriteKeyFile(path, k); err != nil {
				t.Fatal(err)
			}
			ents, _ := os.ReadDir(filepath.Dir(path))
			if len(ents) != 1 {
				t.Errorf("directory holds %d entries after rewrite, want 1", len(ents))
			}
		})
	}
}

func TestLoadKeyFileRefusesReadableByOthers(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("Unix permission bits only")
	}
	k, _ := GenerateKey(P256)
	path := filepath.Join(t.TempDir(), "device.key")
	if err := WriteKeyFile(path, k); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadKeyFile(path)
		if !errors.Is(err, ErrKeyFileMode) {
			t.Fatalf("mode %04o: err = %v, want ErrKeyFileMode", mode, err)
		}
		var me *KeyFileModeError
		if !errors.As(err, &me) || me.Path != path {
			t.Fatalf("mode %04o: err = %#v, want *KeyFileModeError for %s", mode, err, path)
		}
		if want := "chmod 600 " + path; !contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyFile(path); err != nil {
		t.Errorf("mode 0400: %v", err)
	}
}

func TestParsePrivateKeyPEMBadInput(t *testing.T) {
	good, err := MarshalPrivateKeyPEM(mustKey(t, P256))
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaDER, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384DER, _ := x509.MarshalPKCS8PrivateKey(p384)
	sec1DER, _ := x509.MarshalECPrivateKey(mustKey(t, P256).(*ecdsa.PrivateKey))
	block, _ := pem.Decode(good)
	corrupt := append([]byte(nil), block.Bytes...)
	corrupt[len(corrupt)/2] ^= 0xff

	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrMalformedKey},
		{"not PEM", []byte("hello"), ErrMalformedKey},
		{"truncated PEM", good[:len(good)/2], ErrMalformedKey},
		{"truncated DER", pemBlock("PRIVATE KEY", block.Bytes[:len(block.Bytes)-10]), ErrMalformedKey},
		{"corrupted DER", pemBlock("PRIVATE KEY", corrupt), ErrMalformedKey},
		{"SEC1 block type", pemBlock("EC PRIVATE KEY", sec1DER), ErrMalformedKey},
		{"two blocks", append(append([]byte(nil), good...), good...), ErrMalformedKey},
		{"encrypted headers", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: block.Bytes}), ErrMalformedKey},
		{"RSA key", pemBlock("PRIVATE KEY", rsaDER), ErrUnsupportedKey},
		{"P-384 key", pemBlock("PRIVATE KEY", p384DER), ErrUnsupportedKey},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k, err := ParsePrivateKeyPEM(c.data)
			if !errors.Is(err, c.want) {
				t.Fatalf("got key %T, err %v; want %v", k, err, c.want)
			}
		})
	}
	if _, err := ParsePrivateKeyPEM(append(good, "\n\n"...)); err != nil {
		t.Errorf("trailing whitespace refused: %v", err)
	}
}

func TestKeyFileFromDiskBadInput(t *testing.T) {
	path := filepath.Join(t.TempDir(), "device.key")
	good, _ := MarshalPrivateKeyPEM(mustKey(t, Ed25519))
	if err := os.WriteFile(path, good[:40], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyFile(path); !errors.Is(err, ErrMalformedKey) {
		t.Errorf("truncated file: %v, want ErrMalformedKey", err)
	}
	if _, err := LoadKeyFile(path + ".missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want os.ErrNotExist", err)
	}
}

func TestUnsupportedKeys(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := IDFromPublicKey(p384.Public()); !errors.Is(err, ErrUnsupportedKey) {
		t.Errorf("P-384 ID: %v", err)
	}
	if _, err := NewRootCA(p384, "x", nil); !errors.Is(err, ErrUnsupportedKey) {
		t.Errorf("P-384 CA: %v", err)
	}
	if _, err := SignToken(p384, TokenParams{Audience: "a"}); !errors.Is(err, ErrUnsupportedKey) {
		t.Errorf("P-384 token: %v", err)
	}
	if _, err := MarshalPrivateKeyPEM(hwSigner{mustKey(t, P256)}); !errors.Is(err, ErrUnsupportedKey) {
		t.Errorf("hardware key export: %v", err)
	}
	if _, err := GenerateKey(KeyType(7)); !errors.Is(err, ErrUnsupportedKey) {
		t.Errorf("key type 7: %v", err)
	}
	if _, err := IDFromPublicKey(ed25519.PublicKey{1, 2, 3}); !errors.Is(err, ErrUnsupportedKey) {
		t.Errorf("short Ed25519 key: %v", err)
	}
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
