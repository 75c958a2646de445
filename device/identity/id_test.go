package identity

import (
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// rfc8032Seed is the secret key of RFC 8032 section 7.1, TEST 1.
const rfc8032Seed = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"

func rfcKey(t testing.TB) ed25519.PrivateKey {
	seed, _ := hex.DecodeString(rfc8032Seed)
	return ed25519.NewKeyFromSeed(seed)
}

func TestIDGolden(t *testing.T) {
	// The ID of a fixed key must never change: IDs are printed on labels.
	id, err := IDOf(rfcKey(t))
	if err != nil {
		t.Fatal(err)
	}
	// Computed independently from the definition in the ID doc comment.
	const want = "X9ZZGH47RJ5KVKZ0HXNY27NN98X"
	if id.String() != want {
		t.Fatalf("ID of the RFC 8032 test key = %s, want %s", id, want)
	}
}

func TestIDRoundTripAndCheck(t *testing.T) {
	for _, kt := range []KeyType{P256, Ed25519} {
		for i := 0; i < 50; i++ {
			k := mustKey(t, kt)
			id, err := IDOf(k)
			if err != nil {
				t.Fatal(err)
			}
			s := id.String()
			if len(s) != IDLength {
				t.Fatalf("len(%q) = %d", s, len(s))
			}
			if strings.ContainsAny(s, "ILOU") || strings.ToUpper(s) != s {
				t.Fatalf("%q has ambiguous or lower-case characters", s)
			}
			back, err := ParseID(s)
			if err != nil || back != id {
				t.Fatalf("ParseID(%q) = %s, %v", s, back, err)
			}
			if err := id.Check(k.Public()); err != nil {
				t.Fatalf("Check with own key: %v", err)
			}
			other := mustKey(t, kt)
			if err := id.Check(other.Public()); !errors.Is(err, ErrIDMismatch) {
				t.Fatalf("Check with another key: %v, want ErrIDMismatch", err)
			}
		}
	}
}

func TestParseIDLenient(t *testing.T) {
	id, _ := IDOf(rfcKey(t))
	s := id.String()
	variants := []string{
		strings.ToLower(s),
		s[:9] + "-" + s[9:18] + "-" + s[18:],
		s[:9] + " " + s[9:18] + " " + s[18:],
		strings.NewReplacer("0", "O", "1", "I").Replace(s),
		strings.NewReplacer("1", "l").Replace(s),
	}
	for _, v := range variants {
		got, err := ParseID(v)
		if err != nil || got != id {
			t.Errorf("ParseID(%q) = %s, %v; want %s", v, got, err, id)
		}
	}
}

func TestParseIDDetectsTypos(t *testing.T) {
	id, _ := IDOf(rfcKey(t))
	s := id.String()
	// Every single-character substitution is caught by the check character.
	for i := 0; i < len(s); i++ {
		for _, c := range crockford {
			if byte(c) == s[i] {
				continue
			}
			typo := s[:i] + string(c) + s[i+1:]
			if _, err := ParseID(typo); !errors.Is(err, ErrMalformedID) {
				t.Fatalf("typo %q at %d accepted (err %v)", typo, i, err)
			}
		}
	}
	// Adjacent swaps are caught unless the two characters are equal.
	caught, total := 0, 0
	for i := 0; i+1 < len(s); i++ {
		if s[i] == s[i+1] {
			continue
		}
		total++
		swapped := s[:i] + string(s[i+1]) + string(s[i]) + s[i+2:]
		if _, err := ParseID(swapped); err != nil {
			caught++
		}
	}
	if caught < total-1 {
		t.Errorf("only %d of %d adjacent swaps caught", caught, total)
	}
}

func TestParseIDBadInput(t *testing.T) {
	id, _ := IDOf(rfcKey(t))
	s := id.String()
	bad := []string{
		"",
		s[:IDLength-1],
		s + "0",
		s[:5] + "U" + s[6:],
		s[:5] + "!" + s[6:],
		s[:5] + "é" + s[7:],
		strings.Repeat("-", 100),
		strings.Repeat("0", IDLength-1) + "1",
	}
	for _, b := range bad {
		if _, err := ParseID(b); !errors.Is(err, ErrMalformedID) {
			t.Errorf("ParseID(%q) err = %v, want ErrMalformedID", b, err)
		}
	}
	// A 26th digit with its two padding bits set is not canonical even
	// when the check character is made to fit.
	d := []byte(s[:IDLength-1])
	v := strings.IndexByte(crockford, d[25])
	d[25] = crockford[v|1]
	forged := string(d) + string(crockford[luhn32(d)])
	if _, err := ParseID(forged); !errors.Is(err, ErrMalformedID) {
		t.Errorf("non-canonical %q accepted: %v", forged, err)
	}
}

func TestIDText(t *testing.T) {
	id, _ := IDOf(rfcKey(t))
	b, _ := id.MarshalText()
	var back ID
	if err := back.UnmarshalText(b); err != nil || back != id {
		t.Fatalf("UnmarshalText: %s, %v", back, err)
	}
	if err := back.UnmarshalText([]byte("nope")); !errors.Is(err, ErrMalformedID) {
		t.Fatalf("UnmarshalText(nope) = %v", err)
	}
	if id.IsZero() || !(ID{}).IsZero() {
		t.Error("IsZero wrong")
	}
}

func FuzzParseID(f *testing.F) {
	id, _ := IDOf(rfcKey(f))
	f.Add(id.String())
	f.Add(strings.ToLower(id.String()))
	f.Add("")
	f.Add("----")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseID(s)
		if err != nil {
			if !errors.Is(err, ErrMalformedID) {
				t.Fatalf("error %v does not match ErrMalformedID", err)
			}
			return
		}
		// Whatever parses has exactly one canonical form, which parses back.
		again, err := ParseID(got.String())
		if err != nil || again != got {
			t.Fatalf("canonical form %q of %q does not round-trip: %v", got, s, err)
		}
	})
}
