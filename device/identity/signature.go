package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
)

// VerifySignature checks a signature in the fixed-size form JOSE (ES256,
// EdDSA) and COSE (-7, -8) use: for a P-256 key, the 64-byte r||s ECDSA
// signature over SHA-256 of msg; for an Ed25519 key, the 64-byte Ed25519
// signature of msg. Other keys never verify.
//
// For P-256 the signature is put into ASN.1 form for ecdsa.VerifyASN1,
// which spares the math/big conversions of ecdsa.Verify.
func VerifySignature(pub crypto.PublicKey, msg, sig []byte) bool {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return len(k) == ed25519.PublicKeySize && ed25519.Verify(k, msg, sig)
	case *ecdsa.PublicKey:
		if _, err := TypeOf(k); err != nil || len(sig) != 64 {
			return false
		}
		var buf [72]byte
		digest := sha256.Sum256(msg)
		return ecdsa.VerifyASN1(k, digest[:], asn1Signature(buf[:0], sig[:32], sig[32:]))
	}
	return false
}

// asn1Signature appends the DER ECDSA-Sig-Value SEQUENCE { r, s } for the
// big-endian 32-byte integers r and s.
func asn1Signature(dst, r, s []byte) []byte {
	intLen := func(x []byte) int {
		for len(x) > 1 && x[0] == 0 {
			x = x[1:]
		}
		if x[0]&0x80 != 0 {
			return len(x) + 1
		}
		return len(x)
	}
	appendInt := func(dst, x []byte) []byte {
		for len(x) > 1 && x[0] == 0 {
			x = x[1:]
		}
		dst = append(dst, 0x02, byte(intLen(x)))
		if x[0]&0x80 != 0 {
			dst = append(dst, 0)
		}
		return append(dst, x...)
	}
	dst = append(dst, 0x30, byte(2+intLen(r)+2+intLen(s)))
	return appendInt(appendInt(dst, r), s)
}
