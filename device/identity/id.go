package identity

import (
	"crypto"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
)

// An ID names a device. It is the first 128 bits of
//
//	SHA-256("sensible device id v1\x00" || DER SubjectPublicKeyInfo)
//
// of the device's public key, so it is stable for the life of the key and
// self-certifying: anyone holding the key can recompute it ([ID.Check]),
// and no registry is needed to know that a key belongs to an ID.
//
// Its text form ([ID.String]) is 27 characters of Crockford's base32
// alphabet (0-9 A-Z without I, L, O, U): 26 carry the 128 bits and the last
// is a Luhn mod 32 check character that catches any single mistyped
// character and most swaps of neighbours. Upper case keeps a QR code in its
// compact alphanumeric mode. [ParseID] also accepts lower case, the look-alikes
// O, I and L for 0, 1 and 1, and hyphens or spaces as separators, so an ID
// read off a label parses.
type ID [16]byte

const idDomain = "sensible device id v1\x00"

// crockford is Crockford's base32 alphabet.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// IDLength is the length of an ID's text form.
const IDLength = 27

// IDFromPublicKey derives the ID of a P-256 or Ed25519 public key.
func IDFromPublicKey(pub crypto.PublicKey) (ID, error) {
	if _, err := TypeOf(pub); err != nil {
		return ID{}, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ID{}, wrap(ErrUnsupportedKey, "%v", err)
	}
	h := sha256.New()
	h.Write([]byte(idDomain))
	h.Write(der)
	var id ID
	copy(id[:], h.Sum(nil))
	return id, nil
}

// IDOf derives the ID of the key behind a signer.
func IDOf(s crypto.Signer) (ID, error) { return IDFromPublicKey(s.Public()) }

// Check returns nil if id was derived from pub, and an error matching
// ErrIDMismatch (or ErrUnsupportedKey) if not.
func (id ID) Check(pub crypto.PublicKey) error {
	got, err := IDFromPublicKey(pub)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(got[:], id[:]) != 1 {
		return wrap(ErrIDMismatch, "key belongs to %s, not %s", got, id)
	}
	return nil
}

// IsZero reports whether id is the zero ID, which no key has.
func (id ID) IsZero() bool { return id == ID{} }

// String returns the 27-character text form.
func (id ID) String() string {
	var b [IDLength]byte
	id.digits(b[:IDLength-1])
	b[IDLength-1] = crockford[luhn32(b[:IDLength-1])]
	return string(b[:])
}

// digits writes the 26 base32 digits of id into d, most significant first;
// the last digit carries the low 3 bits of id shifted left by 2.
func (id ID) digits(d []byte) {
	var acc uint32
	bits := 0
	n := 0
	for _, c := range id {
		acc = acc<<8 | uint32(c)
		bits += 8
		for bits >= 5 {
			bits -= 5
			d[n] = crockford[acc>>uint(bits)&31]
			n++
		}
	}
	d[n] = crockford[acc<<(5-uint(bits))&31]
}

// MarshalText implements encoding.TextMarshaler.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with [ParseID].
func (id *ID) UnmarshalText(b []byte) error {
	v, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// ParseID parses the text form of an ID. See [ID] for what it accepts.
// Errors match ErrMalformedID.
func ParseID(s string) (ID, error) {
	if len(s) > 2*IDLength {
		return ID{}, wrap(ErrMalformedID, "too long")
	}
	var d [IDLength]byte
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '-' || c == ' ' {
			continue
		}
		v := decodeDigit(c)
		if v < 0 {
			return ID{}, wrap(ErrMalformedID, "character %q at %d is not in the ID alphabet", c, i)
		}
		if n == IDLength {
			return ID{}, wrap(ErrMalformedID, "more than %d characters", IDLength)
		}
		d[n] = crockford[v]
		n++
	}
	if n != IDLength {
		return ID{}, wrap(ErrMalformedID, "%d characters, want %d", n, IDLength)
	}
	if crockford[luhn32(d[:IDLength-1])] != d[IDLength-1] {
		return ID{}, wrap(ErrMalformedID, "check character does not match (mistyped?)")
	}
	var id ID
	var acc uint32
	bits, k := 0, 0
	for _, c := range d[:IDLength-1] {
		acc = acc<<5 | uint32(decodeDigit(c))
		bits += 5
		if bits >= 8 && k < len(id) {
			bits -= 8
			id[k] = byte(acc >> uint(bits))
			k++
		}
	}
	if acc&(1<<uint(bits)-1) != 0 {
		return ID{}, wrap(ErrMalformedID, "non-canonical final character")
	}
	return id, nil
}

// digitValue maps a byte to its base32 value plus one; zero means the byte
// is not a digit. It is never written after initialisation.
var digitValue = func() (t [256]int8) {
	for i := 0; i < len(crockford); i++ {
		c := crockford[i]
		t[c] = int8(i + 1)
		if c >= 'A' && c <= 'Z' {
			t[c+'a'-'A'] = int8(i + 1)
		}
	}
	for _, alias := range [...]struct{ c, v byte }{{'O', '0'}, {'o', '0'}, {'I', '1'}, {'i', '1'}, {'L', '1'}, {'l', '1'}} {
		t[alias.c] = t[alias.v]
	}
	return t
}()

// parseCanonicalID parses an ID that a machine wrote, which must be in its
// canonical text form exactly: a certificate name or a token subject has
// one spelling, so that two readers cannot disagree about it.
func parseCanonicalID(s string) (ID, error) {
	if len(s) != IDLength {
		return ID{}, wrap(ErrMalformedID, "not in canonical form")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; digitValue[c] == 0 || crockford[decodeDigit(c)] != c {
			return ID{}, wrap(ErrMalformedID, "not in canonical form")
		}
	}
	return ParseID(s)
}

func decodeDigit(c byte) int { return int(digitValue[c]) - 1 }

// luhn32 returns the Luhn mod 32 check digit value for digits, which must
// be upper-case Crockford characters.
func luhn32(digits []byte) int {
	factor, sum := 2, 0
	for i := len(digits) - 1; i >= 0; i-- {
		a := factor * decodeDigit(digits[i])
		sum += a/32 + a%32
		if factor == 2 {
			factor = 1
		} else {
			factor = 2
		}
	}
	return (32 - sum%32) % 32
}
