package cloud

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/transport"
)

// Kinds of the incidents a node records (store.Incident.Kind). Each
// counts towards Config.MaxIncidents.
const (
	// IncidentManifest is a telemetry batch that its manifest refuses: a
	// field that never leaves the device, a value finer than its
	// transform, a destination the stream does not declare, or a
	// manifest of another model than the device's.
	IncidentManifest = "manifest-violation"
	// IncidentConsent is a telemetry batch that no consent of the
	// device's owner covers: none given, withdrawn, revoked, expired, or
	// a device without an owner sending what needs consent.
	IncidentConsent = "consent-violation"
)

// maxDetail bounds the text of an incident's detail.
const maxDetail = 1024

// refuse answers a batch that breaks its manifest or its owner's consent
// with 4.03 and the reason, once it has recorded an incident of the kind
// and suspended the device if that makes Config.MaxIncidents within
// Config.IncidentWindow. If the incident cannot be recorded, the answer
// is 5.00, so that the device sends the batch again.
func (d *deviceAPI) refuse(ctx context.Context, dev identity.ID, kind, reason string) error {
	reason = storable(reason)
	now := d.n.now()
	if _, err := d.n.store.RecordIncident(ctx, store.Incident{Device: dev, Time: now, Kind: kind, Detail: reason}); err != nil {
		return err
	}
	d.n.log.Warn("batch refused", "device", dev, "kind", kind, "reason", reason)
	d.n.metrics.refused(kind)
	d.n.metrics.incident(kind)
	if limit := d.n.cfg.MaxIncidents; limit > 0 {
		window := d.n.cfg.IncidentWindow
		count, err := d.n.store.CountIncidents(ctx, dev, now.Add(-window))
		if err != nil {
			return err
		}
		if count >= int64(limit) {
			why := fmt.Sprintf("%d incidents within %v", count, window)
			if err := d.n.SetStanding(ctx, dev, store.Suspended, why); err != nil && !errors.Is(err, store.ErrConflict) {
				return err
			}
		}
	}
	return transport.Errorf(transport.Forbidden, "%s", reason)
}

// storable returns s as a text every store keeps: valid UTF-8 without
// NUL bytes, at most maxDetail bytes.
func storable(s string) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
	if len(s) <= maxDetail {
		return s
	}
	cut := maxDetail
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}
