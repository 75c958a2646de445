// Package identity gives a device an identity rooted in manufacturing: its
// key, an ID derived from that key, a certificate chain from the
// manufacturer, and short-lived tokens it signs to prove who it is.
//
// # Keys
//
// A device key is ECDSA P-256 (the default: what secure elements and TPMs
// hold) or Ed25519. [GenerateKey] makes one in software; [WriteKeyFile] and
// [LoadKeyFile] keep it in a PKCS#8 PEM file of mode 0600, written
// atomically. Everything that signs takes a [crypto.Signer], so a product
// whose key lives in hardware passes its own signer instead: a type whose
// Public method returns an *ecdsa.PublicKey on P-256 (or an
// ed25519.PublicKey) and whose Sign method asks the chip to sign. For
// P-256, Sign receives a SHA-256 digest with opts crypto.SHA256 and returns
// an ASN.1 DER signature, the convention of crypto/ecdsa; PKCS#11 and TPM
// libraries for Go provide such signers.
//
// # Device IDs
//
// An [ID] is 128 bits of a hash of the device's public key, written as 27
// characters that survive a label and a QR code. It needs no registry:
// [ID.Check] tells whether a key belongs to an ID.
//
// # Manufacturing chain
//
// As in Matter (PAA → PAI → DAC), a manufacturer keeps a root CA
// ([NewRootCA]) offline, which signs intermediates ([CA.NewIntermediate]) for
// factories or product lines, which sign device certificates. On the line,
// the device makes a request for its own key ([NewCSR]) and the intermediate
// issues its certificate ([CA.IssueDevice]), carrying the device ID in the
// subject and in a URI SAN ([URIPrefix]). The cloud checks a chain with
// [VerifyChain], which returns the device ID the chain proves.
//
// # Device tokens
//
// Where a transport has no client certificates, a device proves its
// identity with a short-lived JWT it signs itself ([SignToken]), in the
// style of Google Cloud IoT Core's device tokens: ES256 or EdDSA, iss and sub
// the device ID, aud, iat, exp, jti. A [TokenVerifier] looks the device's key
// up by the token's subject ([KeyFunc]), checks that the key is the one the
// device ID names, and has golang-jwt (github.com/golang-jwt/jwt/v5) parse
// the token and check its signature and claims, configured strictly: the
// algorithm pinned to the key's type (so alg none, HS256 forged with the
// public key, and an algorithm of the other key type fail), canonical
// base64, every claim required, the lifetime and clock skew capped. Before
// that it caps the token's size and refuses JSON that readers could
// disagree about (repeated, escaped or case-variant member names) and
// header parameters that name a key, all in time linear in the token's
// size.
//
// A verifier accepts each token once: a [ReplayCache] remembers the jti of
// every token accepted until it expires. The default, [MemoryReplayCache],
// lives in the verifier's process, in bounded memory. A service of several
// nodes gives them all one ReplayCache backed by a shared store, so that a
// token accepted by one node is refused by the others; the interface is an
// atomic insert-if-absent, which a SQL table does with a unique key.
//
// # Errors
//
// Every failure matches a documented sentinel with [errors.Is]:
// ErrMalformedKey, ErrIDMismatch, ErrCertExpired, ErrTokenReplay and so on.
package identity
