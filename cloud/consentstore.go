package cloud

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/device/identity"
)

// historyCacheSize bounds the subjects whose consent history a node keeps
// built.
const historyCacheSize = 4096

// ErrConsentLimit means a subject has Config.MaxConsentRecords records
// already: a device or an app that keeps posting cannot grow the store,
// and every decision's cost, without bound.
var ErrConsentLimit = errors.New("cloud: too many consent records for one subject")

// AddConsent accepts a consent record: it verifies the signed record
// with the node's keys (Keys), adds it to its subject's history as
// consent.History.Add does (only the subject's app or device grants and
// withdraws, only the controller revokes, a record that ends another must
// name one the history holds), and keeps it in the store, after which
// every node decides with it, and appends it to the consent log, whose
// receipt it returns (ConsentLogKey verifies it). The same record again is
// no error, and gets a receipt for the entry logged the first time;
// another record under its ID is consent.ErrRecordConflict (or
// store.ErrConflict when two nodes race). Errors from verification match
// consent's sentinels.
func (n *Node) AddConsent(ctx context.Context, signed []byte) (*consent.Receipt, error) {
	v, err := consent.Verify(ctx, n.keys, signed)
	if err != nil {
		return nil, err
	}
	receipt, _, err := n.addVerified(ctx, v)
	return receipt, err
}

// addVerified is AddConsent after the signature check; it also reports
// whether the record is new (false for the same record again).
func (n *Node) addVerified(ctx context.Context, v *consent.Verified) (*consent.Receipt, bool, error) {
	subject := v.Record.Subject
	recs, err := n.store.ConsentRecords(ctx, subject)
	if err != nil {
		return nil, false, err
	}
	known := slices.ContainsFunc(recs, func(r store.ConsentRecord) bool { return r.ID == v.Record.ID })
	if len(recs) >= n.cfg.MaxConsentRecords && !known {
		return nil, false, fmt.Errorf("%w: %d records of subject %q", ErrConsentLimit, len(recs), subject)
	}
	h := newHistory(subject)
	if err := h.sync(ctx, n.keys, recs); err != nil {
		return nil, false, err
	}
	if err := h.h.Add(v); err != nil {
		return nil, false, err
	}
	err = n.store.AddConsentRecord(ctx, store.ConsentRecord{
		ID:        v.Record.ID,
		Subject:   subject,
		Signed:    v.Raw,
		Time:      time.Unix(v.Record.Event.Time, 0),
		Retention: retention(v.Record),
	})
	if err != nil {
		return nil, false, err
	}
	// Logged after it is stored: a retry after a failure here stores
	// nothing again and gets the receipt of the entry, logged once.
	receipt, err := n.consentLog.Append(ctx, v.Raw)
	if err != nil {
		return nil, false, err
	}
	if !known {
		n.consentChanged(ctx, subject)
	}
	return receipt, !known, nil
}

// retention returns the shortest retention the processes of r give, or
// zero if none gives one.
func retention(r *consent.Record) time.Duration {
	var shortest time.Duration
	for _, p := range r.Processes {
		if p.Retention == 0 {
			continue
		}
		d := time.Duration(math.MaxInt64)
		if p.Retention < uint64(math.MaxInt64/time.Second) {
			d = time.Duration(p.Retention) * time.Second
		}
		if shortest == 0 || d < shortest {
			shortest = d
		}
	}
	return shortest
}

// A history is a subject's consent.History built from the records the
// store holds, and the IDs of those records in the order added.
type history struct {
	subject string

	mu  sync.Mutex
	ids []consent.ID
	h   *consent.History
}

func newHistory(subject string) *history {
	return &history{subject: subject, h: consent.NewHistory(subject)}
}

// sync brings the history up to the records the store holds now, recs:
// it adds those that came after the ones it holds, or builds it again if
// they are not the ones it holds (another node's records, committed in
// another order). A record whose signer's key is no longer trusted (an
// app key removed, a device reset, suspended or handed on) still stands
// as it was accepted (see accepted); one that does not decode, or that
// the history refuses, fails the whole history: the records left could
// allow what the missing one withdrew.
func (h *history) sync(ctx context.Context, keys *Keys, recs []store.ConsentRecord) error {
	if len(recs) < len(h.ids) || !slices.EqualFunc(h.ids, recs[:len(h.ids)], func(id consent.ID, r store.ConsentRecord) bool { return id == r.ID }) {
		h.h, h.ids = consent.NewHistory(h.subject), nil
	}
	for _, r := range recs[len(h.ids):] {
		v, err := consent.Verify(ctx, keys, r.Signed)
		if errors.Is(err, consent.ErrUnknownKey) {
			v, err = accepted(ctx, keys, r.Signed)
		}
		if err == nil {
			err = h.h.Add(v)
		}
		if err != nil {
			h.h, h.ids = consent.NewHistory(h.subject), nil
			return fmt.Errorf("cloud: stored consent record %s: %w", r.ID, err)
		}
		h.ids = append(h.ids, r.ID)
	}
	return nil
}

// accepted returns a stored record whose signer's key is no longer
// trusted as the node accepted it: its signature was checked then, before
// it was stored. The signer is known by its key ID: a controller's, a
// device's (its ID) or else an app's, of the record's subject; its key is
// left out (exports list no key for it).
func accepted(ctx context.Context, keys *Keys, signed []byte) (*consent.Verified, error) {
	r, kid, err := consent.DecodeAccepted(signed)
	if err != nil {
		return nil, err
	}
	signer := consent.TrustedKey{KID: kid, Role: consent.SubjectKey, Subject: r.Subject}
	if c, err := keys.controllers.LookupKey(ctx, kid); err == nil {
		signer = c
	}
	if id, err := identity.ParseID(string(kid)); err == nil && id.String() == string(kid) && signer.Role != consent.ControllerKey {
		signer.Role = consent.DeviceKey
	}
	return &consent.Verified{Record: r, Signer: signer, Raw: signed}, nil
}

// histories keeps the consent histories of the subjects used most
// recently. Every use asks the store for the subject's records, so that
// a record added on any node counts at once on all of them; only the
// records added since are verified again.
type histories struct {
	st      store.ConsentRecords
	keys    *Keys
	entries *bounded[string, *history]
}

func newHistories(st store.ConsentRecords, keys *Keys) *histories {
	return &histories{st: st, keys: keys, entries: newBounded[string, *history](historyCacheSize)}
}

// get returns subject's history as the store holds it now.
func (c *histories) get(ctx context.Context, subject string) (*consent.History, error) {
	recs, err := c.st.ConsentRecords(ctx, subject)
	if err != nil {
		return nil, err
	}
	h, ok := c.entries.get(subject)
	if !ok {
		h = c.entries.add(subject, newHistory(subject))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.sync(ctx, c.keys, recs); err != nil {
		return nil, err
	}
	return h.h, nil
}
