package consent

import (
	"crypto"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"

	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
)

// MaxRecordSize bounds a signed record accepted for verification.
const MaxRecordSize = 16 << 10

// recordDecoder decodes record payloads: small, flat, strict.
var recordDecoder = func() *codec.Decoder {
	d, err := codec.NewDecoder(codec.Limits{MaxBody: MaxRecordSize, MaxDepth: 6, MaxArray: 1024, MaxMap: 16})
	if err != nil {
		panic(err) // fixed limits
	}
	return d
}()

// A Role says whose key signed a record.
type Role uint8

// Signer roles.
const (
	// SubjectKey is a key of the subject's own app.
	SubjectKey Role = 1
	// DeviceKey is the key of a device on which the subject gave consent.
	DeviceKey Role = 2
	// ControllerKey is a key of the controller (the product company).
	ControllerKey Role = 3
)

// A TrustedKey is a public key allowed to sign records.
type TrustedKey struct {
	// KID is the key ID carried in the record's protected header.
	KID []byte
	// Key is an ECDSA P-256 or Ed25519 public key.
	Key crypto.PublicKey
	// Role says whose key it is.
	Role Role
	// Subject is the subject whose app or device holds the key; empty for
	// controller keys.
	Subject string
	// Controller is, for a controller key, the controller it speaks for;
	// empty means any.
	Controller string
}

// A KeySet holds the keys trusted to sign records. It is safe for
// concurrent use.
type KeySet struct {
	mu   sync.RWMutex
	keys map[string]TrustedKey
}

// Add trusts k. A key ID may be added once.
func (s *KeySet) Add(k TrustedKey) error {
	if len(k.KID) == 0 {
		return errors.New("consent: trusted key without a key ID")
	}
	if _, err := identity.TypeOf(k.Key); err != nil {
		return err
	}
	if k.Role == 0 || k.Role > ControllerKey || (k.Role != ControllerKey && k.Subject == "") {
		return errors.New("consent: trusted key needs a role, and a subject unless it is the controller's")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keys == nil {
		s.keys = make(map[string]TrustedKey)
	}
	if _, dup := s.keys[string(k.KID)]; dup {
		return fmt.Errorf("consent: key ID %x already trusted", k.KID)
	}
	s.keys[string(k.KID)] = k
	return nil
}

// Lookup returns the trusted key with key ID kid, or ErrUnknownKey.
func (s *KeySet) Lookup(kid []byte) (TrustedKey, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k, ok := s.keys[string(kid)]
	if !ok {
		return TrustedKey{}, fmt.Errorf("%w: %x", ErrUnknownKey, kid)
	}
	return k, nil
}

// algorithmFor pins the COSE algorithm to a key's type.
func algorithmFor(pub crypto.PublicKey) (cose.Algorithm, error) {
	t, err := identity.TypeOf(pub)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrAlgorithm, err)
	}
	if t == identity.Ed25519 {
		return cose.AlgorithmEdDSA, nil
	}
	return cose.AlgorithmES256, nil
}

// Sign checks r and returns it as a tagged COSE_Sign1 message (RFC 9052)
// over its deterministic CBOR encoding, signed by signer (ES256 for P-256,
// EdDSA for Ed25519; any crypto.Signer, so the key may be in hardware),
// with the algorithm and kid in the protected header.
func Sign(r *Record, signer crypto.Signer, kid []byte) ([]byte, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	payload, err := codec.Marshal(r)
	if err != nil {
		return nil, err
	}
	return SignPayload(payload, signer, kid)
}

// SignPayload signs any payload the way Sign signs records: a tagged
// COSE_Sign1 message with the algorithm and kid protected. Package
// consent/policy signs manifests with it.
func SignPayload(payload []byte, signer crypto.Signer, kid []byte) ([]byte, error) {
	alg, err := algorithmFor(signer.Public())
	if err != nil {
		return nil, err
	}
	cs, err := cose.NewSigner(alg, signer)
	if err != nil {
		return nil, err
	}
	headers := cose.Headers{Protected: cose.ProtectedHeader{
		cose.HeaderLabelAlgorithm: alg,
		cose.HeaderLabelKeyID:     kid,
	}}
	return cose.Sign1(rand.Reader, cs, headers, payload, nil)
}

// VerifyPayload checks a COSE_Sign1 message made by SignPayload against
// the trusted keys and returns its payload and the key that signed it,
// with the same errors as Verify.
func (s *KeySet) VerifyPayload(msg []byte) ([]byte, TrustedKey, error) {
	return verifySign1(msg, nil, s.Lookup, payloadDecoder)
}

// A Verified record is a record whose signature checked out, with the key
// that signed it.
type Verified struct {
	// Record is the decoded record.
	Record *Record
	// Signer is the trusted key that signed it.
	Signer TrustedKey
	// Raw is the signed message as received.
	Raw []byte
}

// Verify checks a signed record against the trusted keys and decodes it.
// It does not check the record's validity period (see Record.ValidAt).
// Errors match ErrMalformed, ErrWrongTag, ErrUnknownKey, ErrAlgorithm or
// ErrBadSignature.
func (s *KeySet) Verify(msg []byte) (*Verified, error) {
	payload, key, err := verifySign1(msg, nil, s.Lookup, coseDecoder)
	if err != nil {
		return nil, err
	}
	var r Record
	if err := recordDecoder.Unmarshal(payload, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := r.check(); err != nil {
		return nil, err
	}
	return &Verified{Record: &r, Signer: key, Raw: msg}, nil
}

// sign1 is a COSE_Sign1 message (RFC 9052 section 4.2) as decoded by our
// strict codec: go-cose decodes with the CBOR library's default limits,
// and network input is decoded with ours.
type sign1 struct {
	_           struct{} `cbor:",toarray"`
	Protected   []byte
	Unprotected map[int64]cbor.RawMessage
	Payload     []byte
	Signature   []byte
}

// MaxPayloadMessage bounds a message checked by KeySet.VerifyPayload
// (a signed manifest, say).
const MaxPayloadMessage = 1<<20 + 1024

// coseDecoder decodes COSE_Sign1 records and their headers; payloadDecoder
// decodes the larger messages of VerifyPayload.
var coseDecoder, payloadDecoder = func() (*codec.Decoder, *codec.Decoder) {
	rec, err := codec.NewDecoder(codec.Limits{MaxBody: MaxRecordSize, MaxDepth: 4, MaxArray: 16, MaxMap: 16})
	if err != nil {
		panic(err) // fixed limits
	}
	big, err := codec.NewDecoder(codec.Limits{MaxBody: MaxPayloadMessage, MaxDepth: 4, MaxArray: 16, MaxMap: 16})
	if err != nil {
		panic(err)
	}
	return rec, big
}()

// COSE header labels used here (RFC 9052 section 3.1).
const (
	labelAlg  = 1
	labelCrit = 2
	labelKID  = 4
)

// verifySign1 verifies a COSE_Sign1 message, tagged (18) or untagged,
// whose key is found by its kid; it returns the payload and the key. The
// algorithm is pinned to the key's type; an alg header, protected or not,
// must agree. Header labels must be integers, and no critical header is
// understood. The message is parsed and the Sig_structure checked here:
// go-cose, which signs our records, also requires alg in the protected
// header where RFC 9052 lets it be unprotected.
func verifySign1(data, external []byte, keys func(kid []byte) (TrustedKey, error), dec *codec.Decoder) ([]byte, TrustedKey, error) {
	if len(data) > dec.Limits().MaxBody {
		return nil, TrustedKey{}, fmt.Errorf("%w: %d bytes", ErrMalformed, len(data))
	}
	body, err := stripSign1Tag(data)
	if err != nil {
		return nil, TrustedKey{}, err
	}
	var m sign1
	if err := dec.Unmarshal(body, &m); err != nil {
		return nil, TrustedKey{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if m.Payload == nil {
		return nil, TrustedKey{}, fmt.Errorf("%w: detached payload", ErrMalformed)
	}
	protected := map[int64]cbor.RawMessage{}
	if len(m.Protected) > 0 {
		if err := coseDecoder.Unmarshal(m.Protected, &protected); err != nil {
			return nil, TrustedKey{}, fmt.Errorf("%w: protected header: %v", ErrMalformed, err)
		}
	}
	for label := range protected {
		if _, dup := m.Unprotected[label]; dup {
			return nil, TrustedKey{}, fmt.Errorf("%w: header %d both protected and not", ErrMalformed, label)
		}
	}
	if _, crit := protected[labelCrit]; crit {
		return nil, TrustedKey{}, fmt.Errorf("%w: critical headers are not supported", ErrMalformed)
	}
	var kid []byte
	raw, ok := protected[labelKID]
	if !ok {
		raw, ok = m.Unprotected[labelKID]
	}
	if !ok || coseDecoder.Unmarshal(raw, &kid) != nil {
		return nil, TrustedKey{}, fmt.Errorf("%w: no key ID", ErrUnknownKey)
	}
	key, err := keys(kid)
	if err != nil {
		return nil, TrustedKey{}, err
	}
	alg, err := algorithmFor(key.Key)
	if err != nil {
		return nil, TrustedKey{}, err
	}
	for _, h := range []map[int64]cbor.RawMessage{protected, m.Unprotected} {
		if v, present := h[labelAlg]; present {
			var a int64
			if coseDecoder.Unmarshal(v, &a) != nil || cose.Algorithm(a) != alg {
				return nil, TrustedKey{}, fmt.Errorf("%w: header names %x, key needs %v", ErrAlgorithm, []byte(v), alg)
			}
		}
	}
	prot := m.Protected
	if len(protected) == 0 {
		// No protected header parameters: the Sig_structure has an empty
		// byte string, whatever empty map the message carried (RFC 9052
		// section 4.4).
		prot = nil
	}
	tbs, err := sigStructure(prot, external, m.Payload)
	if err != nil {
		return nil, TrustedKey{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if !identity.VerifySignature(key.Key, tbs, m.Signature) {
		return nil, TrustedKey{}, ErrBadSignature
	}
	return m.Payload, key, nil
}

// stripSign1Tag removes a leading COSE_Sign1 tag (18); any other tag is
// ErrWrongTag.
func stripSign1Tag(data []byte) ([]byte, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrMalformed)
	}
	switch {
	case data[0] == 0xd2: // tag 18
		return data[1:], nil
	case data[0]>>5 == 6:
		return nil, ErrWrongTag
	}
	return data, nil
}

// sigStructure returns the ToBeSigned bytes of RFC 9052 section 4.4:
// ["Signature1", protected, external_aad, payload], written directly (it
// is on every verification's path) in the deterministic encoding.
func sigStructure(protected, external, payload []byte) ([]byte, error) {
	out := make([]byte, 0, 16+len(protected)+len(external)+len(payload)+27)
	out = append(out, 0x84, 0x6a)
	out = append(out, "Signature1"...)
	for _, b := range [][]byte{protected, external, payload} {
		out = appendHead(out, 2, uint64(len(b)))
		out = append(out, b...)
	}
	return out, nil
}

// appendHead appends a CBOR head of major type major with argument n, in
// its shortest form.
func appendHead(out []byte, major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return append(out, m|byte(n))
	case n <= 0xff:
		return append(out, m|24, byte(n))
	case n <= 0xffff:
		return append(out, m|25, byte(n>>8), byte(n))
	case n <= 0xffffffff:
		return append(out, m|26, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(out, m|27, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}
