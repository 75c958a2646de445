package cloud

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// deviceAPI serves a node's device resources: enrollment, manifests and
// telemetry. It holds what they share: the manifests and consent
// histories the node keeps parsed, and the group commit of batches.
type deviceAPI struct {
	n         *Node
	manifests *manifestCache
	histories *histories
	commits   *committer
}

// deviceResources returns the device resources of n.
func (n *Node) deviceResources() []transport.Resource {
	d := &deviceAPI{
		n:         n,
		manifests: newManifestCache(n.store, n.keys),
		histories: newHistories(n.store, n.keys),
		commits:   &committer{st: n.store},
	}
	n.devices = d
	return []transport.Resource{
		{
			Path: protocol.EnrollPath, Methods: []transport.Method{transport.POST}, Handler: d.enroll,
			MaxBody: protocol.MaxBody, Attributes: []string{`rt="sensible.enroll"`, `ct=60`},
		},
		{
			Path: protocol.ManifestPath, Methods: []transport.Method{transport.GET}, Handler: d.getManifest,
			Attributes: []string{`rt="sensible.manifest"`},
		},
		{
			Path: protocol.TelemetryPath, Methods: []transport.Method{transport.POST}, Handler: d.telemetry,
			Formats: []transport.Format{protocol.FormatCBOR, protocol.FormatSenMLCBOR}, MaxBody: protocol.MaxBatchBody,
			Attributes: []string{`rt="sensible.telemetry"`, `ct="60 112"`},
		},
		{
			Path: protocol.ConsentPath, Methods: []transport.Method{transport.GET, transport.POST}, Handler: d.serveConsent,
			Formats: []transport.Format{protocol.FormatCOSESign1}, MaxBody: consent.MaxRecordSize, Observable: true,
			Attributes: []string{`rt="sensible.consent"`, `ct=18`},
		},
	}
}

// activeDevice returns the registered device id, refusing one that is
// not active with 4.01: a node that did not close its sessions when
// another node suspended it still refuses it. An unknown device is
// store.ErrNotFound.
func (d *deviceAPI) activeDevice(ctx context.Context, id identity.ID) (store.Device, error) {
	dev, err := d.n.store.Device(ctx, id)
	if err != nil {
		return dev, err
	}
	if dev.Standing != store.Active {
		return dev, transport.Errorf(transport.Unauthorized, "device refused")
	}
	return dev, nil
}

// telemetry serves POST /v1/telemetry: it decodes the batch against the
// manifest it names, checks it against that manifest and the owner's
// consent, and stores it, acknowledging it once it is durable. A batch
// the manifest or the consent refuses is refused whole, with 4.03, and
// counts as an incident.
func (d *deviceAPI) telemetry(ctx context.Context, r *transport.Request) (any, error) {
	received := d.n.now()
	dev, err := d.activeDevice(ctx, r.Device)
	if errors.Is(err, store.ErrNotFound) {
		return nil, transport.Errorf(transport.Unauthorized, "device not enrolled: POST %s first", protocol.EnrollPath)
	}
	if err != nil {
		return nil, err
	}
	var entry *manifestEntry
	var lookupErr error
	src := d.manifests.source(ctx, &entry, &lookupErr)
	var b *protocol.Batch
	if r.Format == protocol.FormatSenMLCBOR {
		b, err = protocol.DecodeSenML(r.Query, r.Body, src)
	} else {
		b, err = protocol.DecodeBatch(r.Body, src)
	}
	if lookupErr != nil {
		return nil, lookupErr
	}
	if entry != nil && entry.m.Product != dev.Model {
		return nil, d.refuse(ctx, dev.ID, IncidentManifest,
			fmt.Sprintf("the batch's manifest %x... is for %q, the device's model is %q", entry.hash[:8], entry.m.Product, dev.Model))
	}
	var be *protocol.BatchError
	switch {
	case errors.As(err, &be) && be.Kind == protocol.ErrUnknownManifest:
		d.n.metrics.refused("unknown_manifest")
		return nil, transport.Errorf(transport.BadRequest, "%s", protocol.DiagnosticUnknownManifest)
	case errors.As(err, &be) && be.Kind == protocol.ErrTooLarge:
		d.n.metrics.refused("too_large")
		return nil, transport.Errorf(transport.RequestEntityTooLarge, "%v", err)
	case errors.As(err, &be) && be.Kind == protocol.ErrRefused:
		return nil, d.refuse(ctx, dev.ID, IncidentManifest, err.Error())
	case err != nil:
		d.n.metrics.refused("malformed")
		return nil, transport.Errorf(transport.BadRequest, "%v", err)
	}
	if err := entry.reg.Check(b.Policy()); err != nil {
		var v *policy.Violation
		if errors.As(err, &v) {
			return nil, d.refuse(ctx, dev.ID, IncidentManifest, err.Error())
		}
		return nil, err
	}
	s, _ := entry.m.Stream(b.Stream)
	if msg := d.n.checkTimes(s, b, received); msg != "" {
		d.n.metrics.refused("clock_skew")
		return nil, transport.Errorf(transport.BadRequest, "%s", msg)
	}
	allowed, reason, err := d.consents(ctx, dev, s, b, received)
	if err != nil {
		return nil, err
	}
	if reason != "" {
		return nil, d.refuse(ctx, dev.ID, IncidentConsent, reason)
	}
	sb, err := storeBatch(dev.ID, s, b, allowed, received)
	if err != nil {
		return nil, err
	}
	// Timed from the handler's side: the wait for a group commit counts.
	res, err := storeCall(d.n.metrics, "store_batch", func() (store.BatchResult, error) { return d.commits.store(ctx, sb) })
	switch {
	case errors.Is(err, store.ErrConflict):
		d.n.metrics.refused("key_reused")
		return nil, transport.Errorf(transport.BadRequest, "%s", protocol.DiagnosticKeyReused)
	case errors.Is(err, store.ErrInvalid):
		return nil, transport.Errorf(transport.BadRequest, "the batch cannot be stored: a sequence number over 2^63-1, or a reading time outside the years 1678 to 2262")
	case err != nil:
		return nil, err
	}
	d.n.metrics.batchStored(res.Duplicate, res.Stored)
	return protocol.Ack{Key: b.Key, Stored: uint64(res.Stored), Duplicate: res.Duplicate}, nil
}

// A consentNeed is a purpose, and for a partner the recipient, that a
// batch's readings need consent for.
type consentNeed struct{ purpose, recipient string }

// consents decides, for every reading of b, whether the consent of the
// device's owner allows it: the stream's consent purpose unless its legal
// basis is contract, and for a partner the partner's purpose with the
// partner as recipient, each for the data category of every field of
// the reading, at the reading's time (its first timestamp, or received).
// It returns the record that allowed each reading, which is the one that
// decided the reading's first field for its destination (zero when the
// stream needs no consent), or why the batch is refused. The error is a
// failure to find the owner's history.
func (d *deviceAPI) consents(ctx context.Context, dev store.Device, s *policy.Stream, b *protocol.Batch, received time.Time) ([]consent.ID, string, error) {
	var needs []consentNeed
	if !s.Contract && s.Consent != "" {
		needs = append(needs, consentNeed{purpose: s.Consent})
	}
	if b.Partner != "" {
		for _, dest := range s.Destinations {
			if dest.To == "partner" && dest.Partner == b.Partner && dest.Consent != "" {
				needs = append(needs, consentNeed{dest.Consent, b.Partner})
			}
		}
	}
	if len(needs) == 0 {
		return make([]consent.ID, len(b.Readings)), "", nil
	}
	if dev.Owner == "" {
		return nil, fmt.Sprintf("stream %q needs consent for %q, and the device has no owner to give it", s.Name, needs[0].purpose), nil
	}
	h, err := d.histories.get(ctx, dev.Owner)
	if err != nil {
		return nil, "", err
	}
	allowed := make([]consent.ID, len(b.Readings))
	for i, rd := range b.Readings {
		q := consent.Query{Device: dev.ID, At: readingTime(s, rd, received)}
		for j, c := range categories(s, rd) {
			q.Category = c
			for _, need := range needs {
				q.Purpose, q.Recipient = need.purpose, need.recipient
				dec := h.Decide(q)
				if !dec.Allowed {
					return nil, refusal(i, q, dec), nil
				}
				if j == 0 {
					allowed[i] = dec.Record
				}
			}
		}
	}
	return allowed, "", nil
}

// refusal says why consent refused reading i.
func refusal(i int, q consent.Query, dec consent.Decision) string {
	to := ""
	if q.Recipient != "" {
		to = fmt.Sprintf(" to %q", q.Recipient)
	}
	why := fmt.Sprintf("reading %d: no consent for purpose %q, data category %q%s: %s", i, q.Purpose, q.Category, to, dec.Reason)
	if !dec.Record.IsZero() {
		why += " (record " + dec.Record.String() + ")"
	}
	return why
}

// categories returns the data categories of a reading of s, each once,
// in the order of the stream's fields: those of the fields it has, and
// if it has an output of an aggregate that is no declared field (a
// count), those of every field that leaves the device.
func categories(s *policy.Stream, rd policy.Reading) []string {
	var cs []string
	declared := 0
	for _, f := range s.Fields {
		if _, ok := rd[f.Name]; ok {
			declared++
			if !slices.Contains(cs, f.Category) {
				cs = append(cs, f.Category)
			}
		}
	}
	if declared == len(rd) && len(cs) > 0 {
		return cs
	}
	for _, f := range s.Fields {
		if _, ok := s.OutputType(f.Name); ok && !slices.Contains(cs, f.Category) {
			cs = append(cs, f.Category)
		}
	}
	if len(cs) == 0 {
		return []string{""} // covered by no record: nothing leaves without consent
	}
	return cs
}

// checkTimes returns why a batch's readings are not within the node's
// clock skew (Config.MaxFutureSkew, Config.MaxReadingAge) of when it was
// received, or "" when they are. Every timestamp field counts, not only
// the first: none may claim a time the cloud has not reached.
func (n *Node) checkTimes(s *policy.Stream, b *protocol.Batch, received time.Time) string {
	latest := received.Add(n.cfg.MaxFutureSkew)
	var earliest time.Time
	if n.cfg.MaxReadingAge > 0 {
		earliest = received.Add(-n.cfg.MaxReadingAge)
	}
	for i, rd := range b.Readings {
		for _, f := range s.Fields {
			t, ok := rd[f.Name].(time.Time)
			switch {
			case !ok:
			case t.After(latest):
				return fmt.Sprintf("reading %d: %s %s is more than %v ahead of the cloud's clock (%s): check the device's clock",
					i, f.Name, t.UTC().Format(time.RFC3339), n.cfg.MaxFutureSkew, received.UTC().Format(time.RFC3339))
			case !earliest.IsZero() && t.Before(earliest):
				return fmt.Sprintf("reading %d: %s %s is older than %v", i, f.Name, t.UTC().Format(time.RFC3339), n.cfg.MaxReadingAge)
			}
		}
	}
	return ""
}

// readingTime returns when a reading was taken: the value of its first
// timestamp field in the stream's order, or else received.
func readingTime(s *policy.Stream, rd policy.Reading, received time.Time) time.Time {
	for _, f := range s.Fields {
		if t, ok := rd[f.Name].(time.Time); ok {
			return t
		}
	}
	return received
}

// splitDecoder reads back the readings of a batch's deterministic
// encoding one by one; re-encoding a device's numbers can make a body
// larger than the device sent.
var splitDecoder = func() *codec.Decoder {
	d, err := codec.NewTolerantDecoder(codec.Limits{MaxBody: 4 * protocol.MaxBatchBody, MaxDepth: 5, MaxArray: protocol.MaxReadings, MaxMap: protocol.MaxFields})
	if err != nil {
		panic(err) // constant limits
	}
	return d
}()

// storeBatch returns b as the store keeps it: its digest, and each
// reading's fields as the batch's deterministic encoding has them, its
// time, and the consent record that allowed it.
func storeBatch(dev identity.ID, s *policy.Stream, b *protocol.Batch, allowed []consent.ID, received time.Time) (store.Batch, error) {
	data, err := b.MarshalCBOR()
	if err != nil {
		return store.Batch{}, err
	}
	var split struct {
		Readings []cbor.RawMessage `cbor:"5,keyasint"`
	}
	if err := splitDecoder.Unmarshal(data, &split); err != nil {
		return store.Batch{}, err
	}
	if len(split.Readings) != len(b.Readings) {
		return store.Batch{}, fmt.Errorf("cloud: %d readings encoded as %d", len(b.Readings), len(split.Readings))
	}
	sb := store.Batch{Device: dev, Stream: b.Stream, Manifest: b.Manifest, Key: b.Key, Digest: sha256.Sum256(data),
		Received: received, Readings: make([]store.Reading, len(b.Readings))}
	for i, rd := range b.Readings {
		sb.Readings[i] = store.Reading{Time: readingTime(s, rd, received), Fields: split.Readings[i], Consent: allowed[i]}
	}
	return sb, nil
}
