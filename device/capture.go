package device

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/internal/codec"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// GiveConsent records consent the owner gave on the device itself (its
// screen, its buttons): a grant, or a withdrawal of one. r must be the
// owner's (Subject Config.Owner) and name this device alone (Devices:
// its ID), as the cloud requires of a record a device posts: consent
// given on one device does not speak for the owner's others.
//
// GiveConsent signs r with the device's key (Config.Key), with the
// device ID as key ID, keeps it as AddConsent does (a withdrawal takes
// effect at once), and posts it to the cloud (POST /v1/consent,
// content-format 18, docs/protocol.md 4.7). It returns the cloud's
// receipt, which the agent keeps (Receipt). When the agent is not
// started, or the cloud cannot be reached before ctx ends, the record is
// queued: it counts on the device at once, survives a restart, and
// delivery posts it as soon as it can, before the next telemetry batch
// (which may need it). GiveConsent then returns a nil receipt and no
// error.
//
// Errors: consent's sentinels, as for AddConsent; ErrConsentRefused when
// the cloud refused the record for good; the outbox's errors.
func (a *Agent) GiveConsent(ctx context.Context, r *consent.Record) (*consent.Receipt, error) {
	switch {
	case a.history == nil:
		return nil, errors.New("device: GiveConsent needs Config.Owner")
	case a.cfg.Key == nil:
		return nil, errors.New("device: GiveConsent needs Config.Key to sign with")
	case r.Subject != a.cfg.Owner:
		return nil, fmt.Errorf("%w: a record of subject %q on a device owned by %q", consent.ErrNotAllowed, r.Subject, a.cfg.Owner)
	case len(r.Devices) != 1 || r.Devices[0] != a.id:
		return nil, fmt.Errorf("%w: a record captured on the device must name the device alone", consent.ErrNotAllowed)
	}
	signed, err := consent.Sign(r, a.cfg.Key, []byte(a.id.String()))
	if err != nil {
		return nil, err
	}
	v, err := consent.Verify(ctx, a.trusted, signed)
	if err != nil {
		return nil, err
	}
	if err := a.keep(ctx, v, true); err != nil {
		return nil, err
	}
	a.consentMu.RLock()
	c := a.kept[r.ID]
	pending := c.post
	a.consentMu.RUnlock()
	a.mu.Lock()
	started := a.started && !a.closed
	a.mu.Unlock()
	if !pending || !started {
		a.kick()
		return a.Receipt(r.ID), nil
	}
	receipt, err := a.postConsent(ctx, c)
	if err != nil && !errors.Is(err, ErrConsentRefused) {
		a.kick() // delivery posts it
		return nil, nil
	}
	return receipt, err
}

// Receipt returns the cloud's receipt for the consent record id, one
// captured on the device (GiveConsent), once the cloud has logged it; nil
// before, and for other records. consent.VerifyReceipt checks it with the
// consent log's public key.
func (a *Agent) Receipt(id consent.ID) *consent.Receipt {
	a.consentMu.RLock()
	c := a.kept[id]
	var raw []byte
	if c != nil {
		raw = c.receipt
	}
	a.consentMu.RUnlock()
	if raw == nil {
		return nil
	}
	var r consent.Receipt
	if err := codec.Unmarshal(raw, &r); err != nil {
		return nil
	}
	return &r
}

// unposted returns the records captured on the device that wait to be
// posted, in the order they were kept.
func (a *Agent) unposted() []*keptConsent {
	a.consentMu.RLock()
	defer a.consentMu.RUnlock()
	var cs []*keptConsent
	for _, c := range a.kept {
		if c.post {
			cs = append(cs, c)
		}
	}
	slices.SortFunc(cs, func(x, y *keptConsent) int { return cmpU64(x.n, y.n) })
	return cs
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// postConsent posts the record c, captured on the device, to the cloud,
// and keeps what came of it: the receipt, or, when the cloud refused it
// for good, that it is not to be posted again (ErrConsentRefused). Any
// other failure leaves it waiting.
func (a *Agent) postConsent(ctx context.Context, c *keptConsent) (*consent.Receipt, error) {
	cl, err := a.conn(ctx)
	if err != nil {
		return nil, err
	}
	var r consent.Receipt
	err = cl.DoRaw(ctx, transport.POST, protocol.ConsentPath, protocol.FormatCOSESign1, c.signed, &r)
	var te *transport.Error
	switch {
	case err == nil:
		raw, err := codec.Marshal(&r)
		if err != nil {
			return nil, err
		}
		return &r, a.settle(ctx, c, raw)
	case errors.As(err, &te) && (te.Code == transport.BadRequest || te.Code == transport.Forbidden ||
		te.Code == transport.RequestEntityTooLarge || te.Code == transport.UnsupportedFormat):
		a.log.Warn("device: the cloud refused a consent record captured on the device; it is not posted again", "n", c.n, "err", err)
		return nil, errors.Join(fmt.Errorf("%w: %w", ErrConsentRefused, err), a.settle(ctx, c, nil))
	}
	return nil, err
}

// settle marks c posted, with the cloud's receipt (nil: refused), once
// that is durable.
func (a *Agent) settle(ctx context.Context, c *keptConsent, receipt []byte) error {
	a.consentMu.Lock()
	defer a.consentMu.Unlock()
	if !c.post {
		return nil // settled meanwhile
	}
	next := *c
	next.post, next.receipt = false, receipt
	if err := a.box.submit(context.WithoutCancel(ctx), a.box.putConsent(&next), false); err != nil {
		return err
	}
	c.post, c.receipt = false, receipt // the rest stays as it was, read without the lock
	return nil
}

// postUnposted posts the records captured on the device that wait,
// oldest first, and reports the first failure that leaves one waiting.
func (a *Agent) postUnposted(ctx context.Context) error {
	for _, c := range a.unposted() {
		if _, err := a.postConsent(ctx, c); err != nil && !errors.Is(err, ErrConsentRefused) {
			return err
		}
	}
	return nil
}
