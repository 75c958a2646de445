package cloud

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
)

// Claim labels. A device's label carries its ID and its claim code in one
// string, ClaimLabelPrefix, the ID, a colon and the code:
//
//	SNSBL1:8F5SGT11E0RD77NCH3SEBMDKPGD:60RK4CSM6MV3EE1SC5H66S35CR
//
// Every character is upper case, a digit or a colon, so that a QR code
// holds the label in its alphanumeric mode: the 61 characters fit a
// version 3 code (29 by 29 modules) at error correction level M.
const (
	// ClaimLabelPrefix starts every claim label; the 1 is the label's
	// version.
	ClaimLabelPrefix = "SNSBL1:"
	// ClaimCodeLength is the length of a claim code: 128 random bits in
	// Crockford's base32.
	ClaimCodeLength = 26
	// maxClaimLabel bounds the text ParseClaimLabel reads, separators and
	// white space included.
	maxClaimLabel = 256
)

// claimCodeEncoding writes claim codes in Crockford's base32, as device
// IDs are written: no look-alike letters, upper case for QR codes.
var claimCodeEncoding = base32.NewEncoding("0123456789ABCDEFGHJKMNPQRSTVWXYZ").WithPadding(base32.NoPadding)

// claimCodeBytes is how many random bytes a claim code carries: 128 bits,
// ClaimCodeLength characters.
const claimCodeBytes = 16

// Defaults of ClaimConfig.
const (
	// DefaultClaimWindow is the window claim attempts are counted in.
	DefaultClaimWindow = time.Hour
	// DefaultMaxClaimsPerDevice is how many attempts to claim one device
	// a window allows.
	DefaultMaxClaimsPerDevice = 5
	// DefaultMaxClaimsPerClaimant is how many attempts of one claimant,
	// on any devices, a window allows.
	DefaultMaxClaimsPerClaimant = 20
)

// ClaimConfig limits the attempts to claim devices (Node.ClaimDevice).
// Its zero value has the defaults.
type ClaimConfig struct {
	// Window is how long a counter of attempts lasts from its first
	// attempt; zero means DefaultClaimWindow.
	Window time.Duration
	// PerDevice is how many attempts on one device, by anyone, a window
	// allows; zero means DefaultMaxClaimsPerDevice, negative no limit.
	PerDevice int
	// PerClaimant is how many attempts of one claimant, on any devices, a
	// window allows; zero means DefaultMaxClaimsPerClaimant, negative no
	// limit.
	PerClaimant int
}

// withDefaults returns c with its zero fields set to their defaults.
func (c ClaimConfig) withDefaults() ClaimConfig {
	if c.Window <= 0 {
		c.Window = DefaultClaimWindow
	}
	if c.PerDevice == 0 {
		c.PerDevice = DefaultMaxClaimsPerDevice
	}
	if c.PerClaimant == 0 {
		c.PerClaimant = DefaultMaxClaimsPerClaimant
	}
	return c
}

// Errors of claiming and transferring devices.
var (
	// ErrBadClaimLabel means a claim label, or a claim code, is not
	// written as ClaimLabel writes it.
	ErrBadClaimLabel = errors.New("cloud: malformed claim label")
	// ErrBadClaim means a claim was refused: the code is not the
	// device's, the device has no claim code, or there is no such
	// device. Which of them is not said, so that a claimant learns
	// nothing of the devices it cannot claim.
	ErrBadClaim = errors.New("cloud: wrong claim code")
	// ErrClaimLimited means a claim was refused unseen because its
	// device, or its claimant, made as many attempts as a window allows;
	// the error is a *ClaimLimitError.
	ErrClaimLimited = errors.New("cloud: too many claim attempts")
	// ErrNotOwner means a transfer was refused because the caller does
	// not own the device, or there is no such device.
	ErrNotOwner = errors.New("cloud: not the device's owner")
)

// A ClaimLimitError says that a claim was refused because of too many
// attempts. It matches ErrClaimLimited.
type ClaimLimitError struct {
	// Device is the device.
	Device identity.ID
	// Claimant is true when the claimant's attempts, on any devices, are
	// over their limit, false when the device's are.
	Claimant bool
	// Window is how long the attempts are counted: a refused claimant
	// may try again at most this long after.
	Window time.Duration
}

// Error says whose attempts are over their limit.
func (e *ClaimLimitError) Error() string {
	if e.Claimant {
		return fmt.Sprintf("cloud: too many claim attempts by this claimant; try again within %v", e.Window)
	}
	return fmt.Sprintf("cloud: too many attempts to claim device %s; try again within %v", e.Device, e.Window)
}

// Is reports whether target is ErrClaimLimited.
func (e *ClaimLimitError) Is(target error) bool { return target == ErrClaimLimited }

// ClaimLabel returns the label text of a device's claim code, as a QR code
// or a printed label carries it: ClaimLabelPrefix, the device's ID, a
// colon and the code as Node.CreateClaim returns it.
func ClaimLabel(id identity.ID, code string) string {
	return ClaimLabelPrefix + id.String() + ":" + code
}

// ParseClaimLabel returns the device ID and the claim code of a label
// that ClaimLabel wrote. As a person may type it, it also accepts white
// space around the label, lower case, and in the ID and the code the
// look-alikes O, I and L for 0, 1 and 1 and hyphens or spaces between
// characters. The code comes back as ClaimLabel writes it. Errors match
// ErrBadClaimLabel and never quote the code.
func ParseClaimLabel(label string) (identity.ID, string, error) {
	if len(label) > maxClaimLabel {
		return identity.ID{}, "", fmt.Errorf("%w: over %d bytes", ErrBadClaimLabel, maxClaimLabel)
	}
	s := strings.TrimSpace(label)
	if len(s) < len(ClaimLabelPrefix) || !strings.EqualFold(s[:len(ClaimLabelPrefix)], ClaimLabelPrefix) {
		return identity.ID{}, "", fmt.Errorf("%w: it does not start with %s", ErrBadClaimLabel, ClaimLabelPrefix)
	}
	idText, codeText, ok := strings.Cut(s[len(ClaimLabelPrefix):], ":")
	if !ok {
		return identity.ID{}, "", fmt.Errorf("%w: no colon between the device ID and the code", ErrBadClaimLabel)
	}
	id, err := identity.ParseID(idText)
	if err != nil {
		return identity.ID{}, "", fmt.Errorf("%w: %w", ErrBadClaimLabel, err)
	}
	code, err := parseClaimCode(codeText)
	if err != nil {
		return identity.ID{}, "", err
	}
	return id, code, nil
}

// parseClaimCode returns a claim code as ClaimLabel writes it, or an error
// matching ErrBadClaimLabel that does not quote it.
func parseClaimCode(s string) (string, error) {
	if len(s) > maxClaimLabel {
		return "", fmt.Errorf("%w: the code is over %d bytes", ErrBadClaimLabel, maxClaimLabel)
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '-' || c == ' ':
			continue
		case 'a' <= c && c <= 'z':
			c -= 'a' - 'A'
		}
		switch c {
		case 'O':
			c = '0'
		case 'I', 'L':
			c = '1'
		}
		if !strings.ContainsRune("0123456789ABCDEFGHJKMNPQRSTVWXYZ", rune(c)) {
			return "", fmt.Errorf("%w: the code has a character outside Crockford's base32", ErrBadClaimLabel)
		}
		b.WriteByte(c)
	}
	if b.Len() != ClaimCodeLength {
		return "", fmt.Errorf("%w: the code has %d characters, want %d", ErrBadClaimLabel, b.Len(), ClaimCodeLength)
	}
	return b.String(), nil
}

// CreateClaim makes a new claim code for a device, replacing any before,
// and returns it: the node keeps only its hash (store.ClaimCodeHash), so
// the code is shown once. ClaimLabel turns it into the device's label. A
// device that is decommissioned is store.ErrConflict, an unknown one
// store.ErrNotFound.
func (n *Node) CreateClaim(ctx context.Context, id identity.ID) (string, error) {
	_, code, err := n.newClaim(ctx, id)
	return code, err
}

// newClaim is CreateClaim, returning the stored claim too.
func (n *Node) newClaim(ctx context.Context, id identity.ID) (store.Claim, string, error) {
	d, err := n.store.Device(ctx, id)
	if err != nil {
		return store.Claim{}, "", err
	}
	if d.Standing == store.Decommissioned {
		return store.Claim{}, "", fmt.Errorf("cloud: device %s is decommissioned: %w", id, store.ErrConflict)
	}
	var random [claimCodeBytes]byte
	rand.Read(random[:])
	code := claimCodeEncoding.EncodeToString(random[:])
	c := store.Claim{Device: id, Hash: store.ClaimCodeHash([]byte(code)), Created: n.now().UTC()}
	if err := n.store.SetClaim(ctx, c); err != nil {
		return store.Claim{}, "", err
	}
	return c, code, nil
}

// ClaimDevice makes claimant, a subject, the owner of a device, given the
// device's claim code (as CreateClaim returned it, or as ParseClaimLabel
// reads it off the label).
//
// Every attempt counts, first, against the device and against the
// claimant (Config.Claims): past either's limit the claim is refused
// with a *ClaimLimitError, whatever the code. A code is compared by its
// hash in constant time; a wrong one, a device without a claim code, a
// decommissioned device and an unknown one are all ErrBadClaim. A code is
// used once: the claim that succeeds deletes it. A device that has
// another owner is ErrBadClaim too, so that a claim tells a stranger
// nothing about a device; claiming a device the claimant owns already
// succeeds and changes nothing.
func (n *Node) ClaimDevice(ctx context.Context, claimant string, id identity.ID, code string) error {
	if claimant == "" {
		return errors.New("cloud: a claim needs a claimant")
	}
	if id.IsZero() {
		return ErrBadClaim
	}
	lim := n.cfg.Claims.withDefaults()
	counts, err := n.store.RecordClaimAttempt(ctx, store.ClaimAttempt{Device: id, Claimant: claimant, At: n.now(), Window: lim.Window})
	if err != nil {
		return err
	}
	switch {
	case lim.PerDevice > 0 && counts.Device > int64(lim.PerDevice):
		n.log.Warn("claim refused", "device", id, "claimant", claimant, "reason", "too many attempts on the device")
		return &ClaimLimitError{Device: id, Window: lim.Window}
	case lim.PerClaimant > 0 && counts.Claimant > int64(lim.PerClaimant):
		n.log.Warn("claim refused", "device", id, "claimant", claimant, "reason", "too many attempts by the claimant")
		return &ClaimLimitError{Device: id, Claimant: true, Window: lim.Window}
	}
	refuse := func(reason string) error {
		n.log.Info("claim refused", "device", id, "claimant", claimant, "reason", reason)
		return ErrBadClaim
	}
	d, err := n.store.Device(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return refuse("no such device")
	case err != nil:
		return err
	case d.Standing == store.Decommissioned:
		return refuse("decommissioned")
	case d.Owner == claimant:
		return nil
	case d.Owner != "":
		// Answered as a wrong code: a claim must not tell a stranger
		// whether a device exists or has an owner.
		return refuse("owned by another")
	}
	c, err := n.store.Claim(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return refuse("no claim code")
	}
	if err != nil {
		return err
	}
	canonical, err := parseClaimCode(code)
	if err != nil {
		return refuse("malformed code")
	}
	h := store.ClaimCodeHash([]byte(canonical))
	if subtle.ConstantTimeCompare(h[:], c.Hash[:]) != 1 {
		return refuse("wrong code")
	}
	// Deleting the claim first makes the code one use: of claims that
	// race with it, one deletes it, and the others find none.
	if err := n.store.DeleteClaim(ctx, id); errors.Is(err, store.ErrNotFound) {
		return refuse("the code was used meanwhile")
	} else if err != nil {
		return err
	}
	if err := n.store.SetOwner(ctx, id, claimant); err != nil {
		return err
	}
	n.log.Info("device claimed", "device", id, "owner", claimant)
	return nil
}

// ReleaseDevice releases a device from its owner: it has none afterwards,
// and sends nothing that needs consent until a new owner claims it and
// consents. Its claim code, if it has one, stays. A device without an
// owner stays so; an unknown one is store.ErrNotFound.
func (n *Node) ReleaseDevice(ctx context.Context, id identity.ID) error {
	return n.release(ctx, id, "released")
}

// release clears a device's owner and logs why.
func (n *Node) release(ctx context.Context, id identity.ID, why string) error {
	if err := n.store.SetOwner(ctx, id, ""); err != nil {
		return err
	}
	n.log.Info("device released", "device", id, "reason", why)
	return nil
}

// TransferDevice starts handing a device to a new owner: only its owner,
// from, may. The device is released and given a new claim code, replacing
// any before, which is returned: the owner hands it to the new owner, who
// claims the device with it (ClaimDevice). A device that from does not
// own, or that does not exist, is ErrNotOwner; a decommissioned one
// store.ErrConflict.
func (n *Node) TransferDevice(ctx context.Context, id identity.ID, from string) (string, error) {
	_, code, err := n.transfer(ctx, id, from)
	return code, err
}

// transfer is TransferDevice, returning the stored claim too.
func (n *Node) transfer(ctx context.Context, id identity.ID, from string) (store.Claim, string, error) {
	d, err := n.store.Device(ctx, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && (from == "" || d.Owner != from)) {
		return store.Claim{}, "", ErrNotOwner
	}
	if err != nil {
		return store.Claim{}, "", err
	}
	// The code first: should releasing fail, the owner still owns the
	// device and may try again.
	c, code, err := n.newClaim(ctx, id)
	if err != nil {
		return store.Claim{}, "", err
	}
	if err := n.release(ctx, id, "transferred"); err != nil {
		return store.Claim{}, "", err
	}
	return c, code, nil
}
