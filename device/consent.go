package device

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/bbolt"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// A keyChain looks a key ID up in each of its Keys in turn: the first
// that knows the key answers.
type keyChain []consent.Keys

var _ consent.Keys = keyChain(nil)

// LookupKey implements consent.Keys.
func (c keyChain) LookupKey(ctx context.Context, kid []byte) (consent.TrustedKey, error) {
	for _, ks := range c {
		if ks == nil {
			continue
		}
		k, err := ks.LookupKey(ctx, kid)
		if err == nil || !errors.Is(err, consent.ErrUnknownKey) {
			return k, err
		}
	}
	return consent.TrustedKey{}, fmt.Errorf("%w: %q", consent.ErrUnknownKey, kid)
}

// trustedKeys returns the keys the device trusts by itself, in the order
// they are asked: its own key, as its owner's device key under its ID
// (when it has a software or hardware Config.Key and an owner), then
// Config.ConsentKeys, then the maker's keys (Config.Makers).
func trustedKeys(cfg *Config, device string) (keyChain, error) {
	var own consent.KeySet
	if cfg.Key != nil && cfg.Owner != "" {
		err := own.Add(consent.TrustedKey{KID: []byte(device), Key: cfg.Key.Public(), Role: consent.DeviceKey, Subject: cfg.Owner})
		if err != nil {
			return nil, err
		}
	}
	return keyChain{&own, cfg.ConsentKeys, cfg.Makers}, nil
}

// AddConsent adds a consent record of the device's owner, signed as
// consent.Sign makes it, to the records Record decides with, once it
// verifies (consent.Verify) against the keys the device trusts by itself
// (its own key, with its ID as key ID; Config.ConsentKeys; the maker's
// keys, Config.Makers) and its signer may record it
// (consent.History.Add: only the owner's app or device grants and
// withdraws, only the controller revokes, a record that ends another
// names one the agent holds). The outbox keeps it, so it counts after a
// restart too, as it was accepted, even if its key is no longer trusted
// then; AddConsent returns once that is durable.
//
// A record that withdraws or revokes consent takes effect at once: the
// readings waiting in the outbox that needed it leave it in the same
// transaction (DropWithdrawn), a batch of them on its way is stopped,
// and Record refuses them from then on (see the package documentation).
//
// Errors match consent's sentinels (consent.ErrBadSignature,
// consent.ErrUnknownKey, consent.ErrNotAllowed, consent.ErrUnknownRecord,
// consent.ErrRecordConflict, ...), or are the outbox's.
func (a *Agent) AddConsent(ctx context.Context, signed []byte) error {
	if a.history == nil {
		return errors.New("device: AddConsent needs Config.Owner")
	}
	v, err := consent.Verify(ctx, a.trusted, signed)
	if err != nil {
		return err
	}
	return a.keep(ctx, v, false)
}

// AddConsents adds the records of a consent list, as the cloud serves it
// on /v1/consent (docs/protocol.md 4.7), in their order. Each record must
// verify against the keys the device trusts by itself (see AddConsent)
// or a key of the list that is an app key of the device's owner (role
// consent.SubjectKey, Subject Config.Owner); the list's other keys are
// ignored. A record that does not verify (a bad signature, an unknown
// key), or that its signer may not record (another subject's, say), is
// refused and logged, never kept; the others are added as AddConsent
// adds them. A started agent observes /v1/consent and adds every list
// itself.
//
// The error joins the refusals, each naming the record's place in the
// list and matching consent's sentinel for why.
func (a *Agent) AddConsents(ctx context.Context, l protocol.Consents) error {
	if a.history == nil {
		return errors.New("device: AddConsents needs Config.Owner")
	}
	if l.Fetch {
		return fmt.Errorf("device: consent list version %d was too large for a notification: GET %s", l.Version, protocol.ConsentPath)
	}
	var apps consent.KeySet
	for _, k := range l.Keys {
		if k.Role != consent.SubjectKey || k.Subject != a.cfg.Owner {
			a.log.Warn("device: a key of the consent list is not an app key of the owner, ignored",
				"kid", string(k.KID), "role", k.Role, "subject", k.Subject)
			continue
		}
		tk, err := k.TrustedKey()
		if err == nil {
			err = apps.Add(tk)
		}
		if err != nil {
			a.log.Warn("device: a key of the consent list is not usable, ignored", "kid", string(k.KID), "err", err)
		}
	}
	keys := append(slices.Clip(a.trusted), &apps)
	var errs []error
	for i, signed := range l.Records {
		v, err := consent.Verify(ctx, keys, signed)
		if err == nil {
			err = a.keep(ctx, v, false)
		}
		if err != nil {
			a.log.Warn("device: a consent record from the cloud refused", "version", l.Version, "record", i, "err", err)
			errs = append(errs, fmt.Errorf("device: record %d of consent list version %d: %w", i, l.Version, err))
		}
	}
	return errors.Join(errs...)
}

// keep adds a verified record to the history and, unless it is there
// already, to the outbox, returning once that is durable. post marks a
// record captured on the device, to be posted to the cloud.
func (a *Agent) keep(ctx context.Context, v *consent.Verified, post bool) error {
	a.consentMu.Lock()
	defer a.consentMu.Unlock()
	if err := a.history.Add(v); err != nil {
		return err
	}
	if _, ok := a.kept[v.Record.ID]; ok {
		return nil
	}
	c := &keptConsent{n: a.consentNext, role: v.Signer.Role, subject: v.Signer.Subject, post: post, signed: v.Raw}
	apply := a.box.putConsent(c)
	var removed []uint64
	if st := v.Record.Event.State; st != consent.StateGiven && st != consent.StateRenewed {
		// A withdrawal takes effect at once: in the same transaction that
		// keeps it, what it ended leaves the outbox, and the wait is not
		// cut short, so that the batch in flight can be stopped below.
		put, purge := apply, a.box.purge(a.ended(v.Record, a.now()), DropWithdrawn, &removed)
		apply = func(tx *bbolt.Tx, st *state) error {
			if err := put(tx, st); err != nil {
				return err
			}
			return purge(tx, st)
		}
		ctx = context.WithoutCancel(ctx)
	}
	if err := a.box.submit(ctx, apply, false); err != nil {
		return err
	}
	a.stopSends(removed)
	a.consentNext++
	a.kept[v.Record.ID] = c
	return nil
}

// ended returns whether the queue named k holds readings that consent no
// longer covers, now that r (a withdrawal, a revocation, a refusal, an
// expiry recorded) has ended or refused what it names: readings that
// needed one of r's purposes (for a partner, with the partner among its
// recipients), of a stream whose data categories the owner's records do
// not all cover now, at time now. The stream is looked up in the
// manifest that shaped the queue.
func (a *Agent) ended(r *consent.Record, now time.Time) func(queueKey) bool {
	if len(r.Devices) > 0 && !slices.Contains(r.Devices, a.id) {
		return func(queueKey) bool { return false }
	}
	names := func(n need) bool {
		return slices.ContainsFunc(r.Processes, func(p consent.Process) bool {
			return p.Purpose == n.purpose && (n.recipient == "" || slices.Contains(p.Recipients, n.recipient))
		})
	}
	memo := map[queueKey]bool{}
	return func(k queueKey) bool {
		gone, ok := memo[k]
		if ok {
			return gone
		}
		defer func() { memo[k] = gone }()
		s, ok := a.manifestOf(k.Manifest).Stream(k.Stream)
		if !ok {
			return false
		}
		d := policy.Destination{To: "cloud"}
		for _, x := range s.Destinations {
			if x.To == "partner" && x.Partner == k.Partner && k.Partner != "" {
				d = x
			}
		}
		q := consent.Query{Device: a.id, At: now}
		for _, n := range needs(s, d) {
			if !names(n) {
				continue
			}
			q.Purpose, q.Recipient = n.purpose, n.recipient
			for _, f := range s.Fields {
				q.Category = f.Category
				if f.Transform.Op != "drop" && !a.history.Decide(q).Allowed {
					gone = true
					return gone
				}
			}
		}
		return gone
	}
}

// loadConsent adds the consent records the outbox keeps to the history,
// in the order they were added. Records stand as they were accepted, with
// the signer the agent recorded then: the outbox is sealed under the
// device's secret, so nobody else can have put them there. A record kept
// without its signer (by an earlier version of the agent) is verified
// again, and left out, logged, if its key is no longer trusted.
func (a *Agent) loadConsent(ctx context.Context) {
	a.kept = map[consent.ID]*keptConsent{}
	a.consentNext = 1
	if a.cfg.Owner != "" {
		a.history = consent.NewHistory(a.cfg.Owner)
	}
	for _, kv := range a.box.consent {
		n := binary.BigEndian.Uint64(kv[0])
		a.consentNext = max(a.consentNext, n+1)
		plain, err := a.box.seal.open(nil, a.box.seal.ad(adConsent, 0, n), kv[1])
		if err != nil {
			a.log.Error("device: a stored consent record does not decrypt", "n", n)
			continue
		}
		if a.history == nil {
			continue
		}
		c, legacy, err := decodeKeptConsent(plain)
		var v *consent.Verified
		switch {
		case err != nil:
		case legacy:
			if v, err = consent.Verify(ctx, a.trusted, c.signed); err == nil {
				c.role, c.subject = v.Signer.Role, v.Signer.Subject
			}
		default:
			var rec *consent.Record
			var kid []byte
			if rec, kid, err = consent.DecodeAccepted(c.signed); err == nil {
				v = &consent.Verified{Record: rec, Signer: consent.TrustedKey{KID: kid, Role: c.role, Subject: c.subject}, Raw: c.signed}
			}
		}
		if err == nil {
			err = a.history.Add(v)
		}
		if err != nil {
			a.log.Warn("device: a stored consent record no longer counts", "n", n, "err", err)
			continue
		}
		c.n = n
		a.kept[v.Record.ID] = c
	}
	a.box.consent = nil
}

// observeConsent keeps an observation of /v1/consent until ctx ends,
// adding every list it is told (AddConsents); when the observation cannot
// be made, or ends, it tries again after a backoff. The client
// re-registers by itself after a reconnect.
func (a *Agent) observeConsent(ctx context.Context) {
	defer a.wg.Done()
	failures := 0
	for ctx.Err() == nil {
		c, err := a.conn(ctx)
		if err == nil {
			ended := make(chan error, 1)
			_, err = c.Observe(ctx, protocol.ConsentPath, func(n transport.Notification) { a.onConsents(ctx, c, n, ended) })
			if err == nil {
				failures = 0
				select {
				case <-ctx.Done():
					return // Close ends the observation with the client
				case err = <-ended:
				}
			}
		}
		if ctx.Err() != nil {
			return
		}
		failures++
		a.logFailure(ctx, failures, "device: observing consent failed, trying again", "err", err)
		a.sleep(ctx, a.backoff(failures))
	}
}

// onConsents handles a notification of /v1/consent: the list, or, when
// it was too large for a notification, the list fetched with a GET. A
// notification that ends the observation is passed to ended.
func (a *Agent) onConsents(ctx context.Context, c *transport.Client, n transport.Notification, ended chan<- error) {
	if n.Err != nil {
		if !errors.Is(n.Err, transport.ErrMissedNotifications) {
			select {
			case ended <- n.Err:
			default:
			}
		}
		return
	}
	var l protocol.Consents
	err := n.Decode(&l)
	if err == nil && l.Fetch {
		l = protocol.Consents{}
		err = c.Get(ctx, protocol.ConsentPath, &l)
	}
	if err != nil {
		a.log.Warn("device: a consent list from the cloud cannot be read", "err", err)
		return
	}
	a.AddConsents(ctx, l) // logs each refusal
	a.mu.Lock()
	a.consentList = a.now()
	a.mu.Unlock()
}
