package store

import (
	"errors"
	"fmt"

	"github.com/sensible-iot/sensible/device/identity"
)

// Errors an implementation returns, each matched with errors.Is. An error
// that matches none of them is a failure of the database itself (it is
// unreachable, full, or ctx ended) and is returned as the driver gave it.
var (
	// ErrNotFound means the thing asked for does not exist: no such
	// device, model, manifest, command, claim or reading, or an app key
	// that was removed. An operation that names a device (or model, or
	// manifest) that does not exist fails with it too.
	ErrNotFound = errors.New("store: not found")
	// ErrConflict means the operation clashes with what is stored: the ID
	// is taken, an idempotency key was stored with other content, or a
	// command or device is in a state that does not allow the change.
	ErrConflict = errors.New("store: conflict")
	// ErrStale means a version the caller named is not the current one;
	// the error is a *StaleError that says which is.
	ErrStale = errors.New("store: stale version")
	// ErrTooLarge means a document is over MaxDocument; the error is a
	// *TooLargeError.
	ErrTooLarge = errors.New("store: document too large")
	// ErrInvalid means an argument can never be stored: a zero ID, a
	// missing time, an empty name, a text with a NUL byte or invalid
	// UTF-8, an unknown standing or state.
	ErrInvalid = errors.New("store: invalid argument")
	// ErrClosed means the Notifier or Subscription was closed, or the
	// store that owns it.
	ErrClosed = errors.New("store: closed")
)

// A StaleError says that a version named by the caller is not the current
// one. It matches ErrStale.
type StaleError struct {
	// What names the versioned document, e.g. "desired state".
	What string
	// Named is the version the caller named.
	Named uint64
	// Current is the version stored now.
	Current uint64
}

// Error says which version is current.
func (e *StaleError) Error() string {
	return fmt.Sprintf("store: stale version: %s is at version %d, not %d", e.What, e.Current, e.Named)
}

// Is reports whether target is ErrStale.
func (e *StaleError) Is(target error) bool { return target == ErrStale }

// A TooLargeError says that a document is over its limit. It matches
// ErrTooLarge.
type TooLargeError struct {
	// What names the document, e.g. "desired state".
	What string
	// Size is the document's size in bytes.
	Size int
	// Limit is the most bytes allowed.
	Limit int
}

// Error says how large the document is.
func (e *TooLargeError) Error() string {
	return fmt.Sprintf("store: %s of %d bytes, limit %d", e.What, e.Size, e.Limit)
}

// Is reports whether target is ErrTooLarge.
func (e *TooLargeError) Is(target error) bool { return target == ErrTooLarge }

// A TokenLimitError says that a replay cache refused a device's token
// because it remembers as many unexpired tokens of the device as it keeps
// for one device (ReplayConfig.MaxLiveTokens). It matches
// identity.ErrReplayCacheFull, which is how a TokenVerifier's caller
// knows a full replay cache.
type TokenLimitError struct {
	// Device is the device whose token was refused.
	Device identity.ID
	// Limit is the most unexpired tokens kept for one device.
	Limit int
}

// Error says which device has too many tokens.
func (e *TokenLimitError) Error() string {
	return fmt.Sprintf("store: device %s has %d unexpired tokens remembered, the most kept for one device", e.Device, e.Limit)
}

// Is reports whether target is identity.ErrReplayCacheFull.
func (e *TokenLimitError) Is(target error) bool { return target == identity.ErrReplayCacheFull }
