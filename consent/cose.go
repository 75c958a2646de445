package consent

import (
	"context"
	"crypto"
	"crypto/rand"
	"fmt"

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
// the keys and returns its payload and the key that signed it, with the
// same errors as Verify. Package consent/policy opens signed manifests
// with it.
func VerifyPayload(ctx context.Context, keys Keys, msg []byte) ([]byte, TrustedKey, error) {
	return verifySign1(ctx, msg, nil, keys, payloadDecoder)
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

// Verify checks a signed record against the keys and decodes it. It does
// not check the record's validity period (see Record.ValidAt). Errors match
// ErrMalformed, ErrWrongTag, ErrUnknownKey, ErrAlgorithm or
// ErrBadSignature, or are the key lookup's own (a store that failed, or
// ctx's error).
func Verify(ctx context.Context, keys Keys, msg []byte) (*Verified, error) {
	payload, key, err := verifySign1(ctx, msg, nil, keys, coseDecoder)
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

// A parsedSign1 is a COSE_Sign1 message parsed and checked by parseSign1,
// its signature not yet checked.
type parsedSign1 struct {
	m            sign1
	protected    map[int64]cbor.RawMessage
	rawProtected []byte // the protected header as the Sig_structure has it
	kid          []byte
}

// parseSign1 parses a COSE_Sign1 message, tagged (18) or untagged, with
// dec, and checks its headers: integer labels, none both protected and
// not, no critical headers, a key ID.
func parseSign1(data []byte, dec *codec.Decoder) (*parsedSign1, error) {
	if len(data) > dec.Limits().MaxBody {
		return nil, fmt.Errorf("%w: %d bytes", ErrMalformed, len(data))
	}
	body, err := stripSign1Tag(data)
	if err != nil {
		return nil, err
	}
	var m sign1
	if err := dec.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if m.Payload == nil {
		return nil, fmt.Errorf("%w: detached payload", ErrMalformed)
	}
	protected := map[int64]cbor.RawMessage{}
	if len(m.Protected) > 0 {
		if err := coseDecoder.Unmarshal(m.Protected, &protected); err != nil {
			return nil, fmt.Errorf("%w: protected header: %v", ErrMalformed, err)
		}
	}
	rawProtected := appendHead(make([]byte, 0, len(m.Protected)+9), 2, uint64(len(m.Protected)), m.Protected...)
	if len(protected) == 0 {
		// No protected header parameters: the Sig_structure has an empty
		// byte string, whatever empty map the message carried (RFC 9052
		// section 4.4).
		rawProtected = []byte{0x40}
	}
	for label := range protected {
		if _, dup := m.Unprotected[label]; dup {
			return nil, fmt.Errorf("%w: header %d both protected and not", ErrMalformed, label)
		}
	}
	if _, crit := protected[labelCrit]; crit {
		return nil, fmt.Errorf("%w: critical headers are not supported", ErrMalformed)
	}
	var kid []byte
	raw, ok := protected[labelKID]
	if !ok {
		raw, ok = m.Unprotected[labelKID]
	}
	if !ok || coseDecoder.Unmarshal(raw, &kid) != nil {
		return nil, fmt.Errorf("%w: no key ID", ErrUnknownKey)
	}
	return &parsedSign1{m: m, protected: protected, rawProtected: rawProtected, kid: kid}, nil
}

// DecodeAccepted decodes a signed record without checking its signature,
// and returns it with the key ID that signed it. It is for a party that
// checked the signature when it accepted the record, and reads it back
// from its own store after the signer's key is no longer trusted (an app
// key removed, a device reset): the record still stands, as accepted.
// Never use it on a record from anywhere else; Verify is for those.
func DecodeAccepted(msg []byte) (*Record, []byte, error) {
	ps, err := parseSign1(msg, coseDecoder)
	if err != nil {
		return nil, nil, err
	}
	var r Record
	if err := recordDecoder.Unmarshal(ps.m.Payload, &r); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := r.check(); err != nil {
		return nil, nil, err
	}
	return &r, ps.kid, nil
}

// verifySign1 verifies a COSE_Sign1 message, tagged (18) or untagged,
// whose key keys finds by its kid; it returns the payload and the key.
//
// The message is first parsed here, with our strict and bounded decoder
// (go-cose decodes with the CBOR library's default limits, and this is
// network input): integer header labels only, no critical headers, no
// label in both buckets, a key ID, and an alg header, wherever it is,
// that agrees with the algorithm the key's type pins. The signature is
// then checked by go-cose over the message's own protected bytes.
func verifySign1(ctx context.Context, data, external []byte, keys Keys, dec *codec.Decoder) ([]byte, TrustedKey, error) {
	ps, err := parseSign1(data, dec)
	if err != nil {
		return nil, TrustedKey{}, err
	}
	m, protected, rawProtected, kid := ps.m, ps.protected, ps.rawProtected, ps.kid
	key, err := keys.LookupKey(ctx, kid)
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
	verifier, err := cose.NewVerifier(alg, key.Key)
	if err != nil {
		return nil, TrustedKey{}, fmt.Errorf("%w: %v", ErrAlgorithm, err)
	}
	msg := cose.Sign1Message{
		Headers: cose.Headers{
			// What the signer signed: the protected bytes as they came.
			RawProtected: rawProtected,
			// go-cose requires alg among the protected headers; RFC 9052
			// lets it be unprotected, and it was checked above either way.
			// RawProtected, not this map, is what the signature covers.
			Protected: cose.ProtectedHeader{cose.HeaderLabelAlgorithm: alg},
		},
		Payload:   m.Payload,
		Signature: m.Signature,
	}
	if err := msg.Verify(external, verifier); err != nil {
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

// appendHead appends a CBOR head of major type major with argument n, in
// its shortest form, followed by content.
func appendHead(out []byte, major byte, n uint64, content ...byte) []byte {
	return append(head(out, major, n), content...)
}

func head(out []byte, major byte, n uint64) []byte {
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
