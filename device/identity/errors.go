package identity

import (
	"errors"
	"fmt"
	"io/fs"
)

// Sentinel errors. Every error returned by this package that has one of
// these causes matches it with [errors.Is]; callers never need to read
// error strings.
var (
	// ErrUnsupportedKey means the key is neither ECDSA P-256 nor Ed25519,
	// or (when writing a key file) it cannot be exported, as with a key
	// held in hardware.
	ErrUnsupportedKey = errors.New("identity: unsupported key (want ECDSA P-256 or Ed25519)")

	// ErrMalformedKey means a key file or PEM block could not be parsed.
	ErrMalformedKey = errors.New("identity: malformed private key")

	// ErrKeyFileMode means a private key file can be read or written by
	// users other than its owner. The error is a *KeyFileModeError that
	// says how to fix it.
	ErrKeyFileMode = errors.New("identity: key file is accessible by other users")

	// ErrMalformedID means a string is not a well-formed device ID: wrong
	// length, a character outside the alphabet, or a failed check character.
	ErrMalformedID = errors.New("identity: malformed device ID")

	// ErrIDMismatch means a device ID was not derived from the public key
	// it was presented with.
	ErrIDMismatch = errors.New("identity: device ID does not match key")

	// ErrMalformedCSR means a certificate signing request could not be
	// parsed or its signature does not verify.
	ErrMalformedCSR = errors.New("identity: invalid certificate request")

	// ErrCertExpired means a certificate in the chain is past its NotAfter.
	ErrCertExpired = errors.New("identity: certificate expired")

	// ErrCertNotYetValid means a certificate in the chain is before its NotBefore.
	ErrCertNotYetValid = errors.New("identity: certificate not yet valid")

	// ErrUntrustedChain means the chain does not lead to a trusted root.
	ErrUntrustedChain = errors.New("identity: certificate chain not trusted")

	// ErrKeyUsage means a certificate's key usage, extended key usage or
	// basic constraints do not allow the use it is put to.
	ErrKeyUsage = errors.New("identity: certificate key usage does not allow this use")

	// ErrNotDeviceCert means a leaf certificate lacks the device ID in its
	// subject common name or URI SAN.
	ErrNotDeviceCert = errors.New("identity: not a device certificate")
)

// Token errors. An error from [TokenVerifier.Verify] matches one of these
// with [errors.Is], or ErrIDMismatch or ErrUnsupportedKey for a registered
// key that does not fit the device, or is whatever the KeyFunc or the
// ReplayCache returned.
var (
	// ErrTokenTooLarge means the token is longer than VerifierConfig.MaxSize;
	// it was rejected before any parsing.
	ErrTokenTooLarge = errors.New("identity: token too large")
	// ErrTokenMalformed means the token is not a well-formed compact JWS with
	// JSON claims, or is written in a way readers could disagree about: a
	// JSON member name repeated, written with escapes, or differing from a
	// registered one only in case; base64 that is padded or not canonical;
	// arrays or objects nested deeply; or a header with crit or a
	// parameter that names a key (kid, jku, jwk, x5u, x5c, x5t, x5t#S256).
	ErrTokenMalformed = errors.New("identity: malformed token")
	// ErrTokenAlgorithm means the token's alg is not the one the device's key
	// type pins (ES256 for P-256, EdDSA for Ed25519): alg none, HS256 and
	// every other algorithm are refused before any key is used.
	ErrTokenAlgorithm = errors.New("identity: token algorithm does not match device key")
	// ErrTokenSignature means the signature does not verify with the device key.
	ErrTokenSignature = errors.New("identity: token signature invalid")
	// ErrTokenClaims means a required claim (iss, sub, iat, exp, jti) is
	// missing or inconsistent, such as iss differing from sub, or a time
	// claim is not a time (negative, or more than 2^40 seconds).
	ErrTokenClaims = errors.New("identity: token claims missing or invalid")
	// ErrTokenExpired means the token's exp lies in the past, beyond the allowed skew.
	ErrTokenExpired = errors.New("identity: token expired")
	// ErrTokenNotYetValid means the token's iat or nbf lies in the future, beyond the allowed skew.
	ErrTokenNotYetValid = errors.New("identity: token not yet valid")
	// ErrTokenLifetime means exp minus iat exceeds VerifierConfig.MaxLifetime.
	ErrTokenLifetime = errors.New("identity: token lifetime too long")
	// ErrTokenAudience means the token is not addressed to this verifier's audience.
	ErrTokenAudience = errors.New("identity: token audience mismatch")
	// ErrTokenReplay means a token with the same device and jti was accepted
	// before, by this verifier or another sharing its ReplayCache, and has
	// not yet expired.
	ErrTokenReplay = errors.New("identity: token replayed")
	// ErrReplayCacheFull means a MemoryReplayCache holds as many unexpired
	// tokens as it may, in all or of one device; it fails closed rather
	// than forget one. Raise its capacity (VerifierConfig.ReplayCapacity,
	// MaxLiveTokens) or shorten token lifetimes.
	ErrReplayCacheFull = errors.New("identity: token replay cache full")
	// ErrUnknownDevice is what a [KeyFunc] returns for a device it does not know.
	ErrUnknownDevice = errors.New("identity: unknown device")
)

// KeyFileModeError reports a private key file whose permission bits let
// other users read or write it. It matches [ErrKeyFileMode].
type KeyFileModeError struct {
	Path string      // the key file
	Mode fs.FileMode // its mode, as found
}

// Error says which file, its mode, and the command that fixes it.
func (e *KeyFileModeError) Error() string {
	return fmt.Sprintf("identity: key file %s has mode %04o, readable by other users; fix with: chmod 600 %s",
		e.Path, e.Mode.Perm(), e.Path)
}

// Is reports whether target is [ErrKeyFileMode].
func (e *KeyFileModeError) Is(target error) bool { return target == ErrKeyFileMode }

// wrap returns an error that matches sentinel and whose message adds detail.
func wrap(sentinel error, detail string, args ...any) error {
	return fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(detail, args...))
}
