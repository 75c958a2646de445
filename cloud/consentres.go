package cloud

import (
	"context"
	"errors"
	"slices"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// serveConsent serves /v1/consent (docs/protocol.md 4.7): GET
// (observable) the consent records that concern the device; POST a record
// the owner gave on the device itself, signed by the device.
func (d *deviceAPI) serveConsent(ctx context.Context, r *transport.Request) (any, error) {
	dev, err := d.activeDevice(ctx, r.Device)
	if errors.Is(err, store.ErrNotFound) {
		return nil, transport.Errorf(transport.NotFound, "device not enrolled: POST %s first", protocol.EnrollPath)
	}
	if err != nil {
		return nil, err
	}
	if r.Method == transport.GET {
		return d.consentList(ctx, dev)
	}
	return d.postConsent(ctx, dev, r.Body)
}

// postConsent takes a record captured on the device: it must be signed by
// the device's own key, named by its ID.
func (d *deviceAPI) postConsent(ctx context.Context, dev store.Device, signed []byte) (any, error) {
	v, err := consent.Verify(ctx, d.n.keys, signed)
	switch {
	case err != nil:
	case string(v.Signer.KID) != dev.ID.String():
		err = transport.Errorf(transport.Forbidden, "a device posts only records it signed itself, with its ID as key ID")
	case len(v.Record.Devices) != 1 || v.Record.Devices[0] != dev.ID:
		// Consent given on a device's screen speaks for that device: a
		// device may not grant or withdraw for its owner's others.
		err = transport.Errorf(transport.Forbidden, "a record captured on a device must name that device alone")
	}
	if err != nil {
		return nil, consentAnswer(err)
	}
	receipt, created, err := d.n.addVerified(ctx, v)
	if err != nil {
		return nil, consentAnswer(err)
	}
	code := transport.Changed
	if created {
		code = transport.Created
	}
	return &transport.Response{Code: code, Body: receipt}, nil
}

// consentAnswer maps why a record was refused to the answer of
// protocol.md 4.7: not a record, or an ID reused, 4.00; a signature,
// key or signer that does not hold, 4.03. Other errors are failures.
func consentAnswer(err error) error {
	var te *transport.Error
	switch {
	case errors.As(err, &te):
		return err
	case errors.Is(err, consent.ErrMalformed), errors.Is(err, consent.ErrWrongTag),
		errors.Is(err, consent.ErrRecordConflict), errors.Is(err, store.ErrConflict):
		return transport.Errorf(transport.BadRequest, "%v", err)
	case errors.Is(err, consent.ErrBadSignature), errors.Is(err, consent.ErrUnknownKey), errors.Is(err, consent.ErrAlgorithm),
		errors.Is(err, consent.ErrNotAllowed), errors.Is(err, consent.ErrUnknownRecord), errors.Is(err, ErrConsentLimit):
		return transport.Errorf(transport.Forbidden, "%v", err)
	}
	return err
}

// consentList returns the records that concern dev, as protocol.md 4.7
// has them: of its owner's records that cover the device, for each purpose
// the latest, preceded by the record it ends if it ends one, in the order
// the store (and the consent log) took them; and the keys of the owner's
// apps that signed them. Its version is the number of the owner's records,
// which only grows.
func (d *deviceAPI) consentList(ctx context.Context, dev store.Device) (protocol.Consents, error) {
	if dev.Owner == "" {
		return protocol.Consents{}, nil
	}
	recs, err := d.n.store.ConsentRecords(ctx, dev.Owner)
	if err != nil {
		return protocol.Consents{}, err
	}
	h, err := d.histories.get(ctx, dev.Owner)
	if err != nil {
		return protocol.Consents{}, err
	}
	e, err := h.Export(ctx, nil, "")
	if err != nil {
		return protocol.Consents{}, err
	}
	events := make(map[consent.ID]consent.ExportedEvent, len(e.Events))
	for _, ev := range e.Events {
		events[ev.Record.ID] = ev
	}
	latest := map[string]int{} // purpose → index in recs
	index := map[consent.ID]int{}
	for i, sr := range recs {
		index[sr.ID] = i
		ev, ok := events[sr.ID]
		if !ok || (len(ev.Record.Devices) > 0 && !slices.Contains(ev.Record.Devices, dev.ID)) {
			continue
		}
		for _, p := range ev.Record.Processes {
			latest[p.Purpose] = i
		}
	}
	keep := make([]bool, len(recs))
	for _, i := range latest {
		keep[i] = true
		if ends := events[recs[i].ID].Record.Ends; ends != nil {
			if j, ok := index[*ends]; ok {
				keep[j] = true
			}
		}
	}
	out := protocol.Consents{Version: uint64(len(recs))}
	signers := map[string]bool{}
	for i, sr := range recs {
		if keep[i] {
			out.Records = append(out.Records, sr.Signed)
			signers[string(events[sr.ID].KeyID)] = true
		}
	}
	for _, k := range e.Keys {
		if k.Role == consent.SubjectKey && signers[string(k.KID)] {
			out.Keys = append(out.Keys, protocol.SignerKey{KID: k.KID, Role: k.Role, Subject: k.Subject, Key: k.Key})
		}
	}
	return out, nil
}

// notifyConsents sends the observers of dev's /v1/consent the list as it
// is now.
func (d *deviceAPI) notifyConsents(ctx context.Context, id identity.ID) error {
	dev, err := d.n.store.Device(ctx, id)
	if err != nil {
		return err
	}
	l, err := d.consentList(ctx, dev)
	if err != nil {
		return err
	}
	_, err = d.n.send(ctx, protocol.ConsentPath, id, l, protocol.Consents{Version: l.Version, Fetch: true})
	return err
}

// consentChanged tells the observers of every device the subject owns, on
// every node, that their consent lists changed: one notification for the
// subject (a subject may own many devices), which each node turns into
// one for each of the subject's devices it serves (notifySubject).
func (n *Node) consentChanged(ctx context.Context, subject string) {
	if err := n.store.Notifier().Notify(context.WithoutCancel(ctx), topicConsent, []byte(subject)); err != nil {
		n.log.Warn("cloud: publishing a consent change", "err", err)
		n.notifySubject(ctx, subject)
	}
}

// notifySubject notifies this node's observers of /v1/consent of every
// device the subject owns.
func (n *Node) notifySubject(ctx context.Context, subject string) {
	var page store.Page
	for {
		devs, err := n.store.ListDevicesByOwner(ctx, subject, page)
		if err != nil {
			n.log.Warn("cloud: listing a subject's devices to notify", "err", err)
			return
		}
		for _, d := range devs {
			n.notify(ctx, protocol.ConsentPath, d.ID)
		}
		if len(devs) < store.MaxList {
			return
		}
		page.After = devs[len(devs)-1].ID
	}
}
