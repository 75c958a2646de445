package device

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"time"
)

// A DropReason says why readings left the outbox, or never entered it,
// without reaching the cloud. Every drop is counted (Health.Drops) and
// logged at the warning level.
type DropReason string

// Drop reasons.
const (
	// DropEvicted: the outbox was full, and the readings made room for a
	// newer reading of the same or a higher priority (Config.Priorities).
	DropEvicted DropReason = "evicted"
	// DropOutboxFull: the outbox was full of readings of higher priority,
	// or of batches waiting for their ack, and a new reading was refused
	// (Record returned ErrOutboxFull).
	DropOutboxFull DropReason = "outbox-full"
	// DropNoConsent: a reading was queued for some destinations of its
	// stream, but no consent covered the others (a partner, say). When
	// no destination is covered Record returns ErrNoConsent instead.
	DropNoConsent DropReason = "no-consent"
	// DropWithdrawn: the owner withdrew the consent the readings needed,
	// or the controller revoked it, while they waited in the outbox,
	// queued or in a batch not yet acknowledged; they were deleted before
	// anything else was sent.
	DropWithdrawn DropReason = "withdrawn"
	// DropUnreadable: a queued reading or batch did not decrypt or
	// decode (a damaged page), or could not be encoded as a batch.
	DropUnreadable DropReason = "unreadable"
	// DropTooLarge: a reading too large for any batch, or a batch the
	// cloud refused as too large (4.13).
	DropTooLarge DropReason = "too-large"
	// DropBadRequest: the cloud refused a batch as malformed (4.00),
	// for a reason other than an unknown manifest: a clock too far
	// ahead, an idempotency key reused for other content.
	DropBadRequest DropReason = "bad-request"
	// DropUnknownManifest: the cloud does not hold the manifest that
	// shaped the batch (4.00 protocol.DiagnosticUnknownManifest). The
	// readings cannot be shaped again; the agent fetches the manifest
	// the cloud serves and records under it from then on.
	DropUnknownManifest DropReason = "unknown-manifest"
	// DropForbidden: the cloud refused a batch under the manifest or
	// consent (4.03); the cloud counted it as an incident.
	DropForbidden DropReason = "forbidden"
	// DropUnsupported: the cloud does not take the batch's
	// content-format (4.15).
	DropUnsupported DropReason = "unsupported-format"
)

var _ slog.LogValuer = Health{}

// Health is the state of an agent's outbox and delivery.
type Health struct {
	// Epoch is the outbox's epoch, the first half of every idempotency
	// key it gives out.
	Epoch uint64
	// Queued is how many readings the outbox holds, in formed batches or
	// not. A reading recorded for two destinations counts twice.
	Queued int
	// QueuedBytes is what they take in the outbox, sealed, with their
	// keys (the file is larger: bbolt's pages hold free space).
	QueuedBytes int64
	// Batches is how many formed batches wait for their ack.
	Batches int
	// Oldest is when the oldest reading queued was recorded; zero when
	// the outbox is empty.
	Oldest time.Time
	// OldestAge is how long ago that was.
	OldestAge time.Duration
	// Drops counts the readings dropped since the agent opened, by
	// reason.
	Drops map[DropReason]uint64
	// Delivered counts the readings the cloud acknowledged since the
	// agent opened.
	Delivered uint64
	// LastDelivery is when the cloud last acknowledged a batch; zero if
	// it has not since the agent opened.
	LastDelivery time.Time
	// LastError says why the last attempt to deliver failed; empty once
	// one succeeds.
	LastError string
	// LocalOnly counts the readings Record took that never leave the
	// device: of streams with no destination, or with every field
	// dropped by the manifest.
	LocalOnly uint64
	// Commits counts the outbox's write transactions, each one sync to
	// disk, since the agent opened: fewer than the calls that wrote when
	// concurrent calls share commits.
	Commits uint64
	// ConsentUnposted counts the consent records captured on the device
	// (GiveConsent) that the cloud has not logged yet.
	ConsentUnposted int
	// ConsentList is when the agent last received the owner's consent
	// list from the cloud (/v1/consent); zero if it has not since it
	// opened.
	ConsentList time.Time
}

// Health returns the state of the outbox and of delivery.
func (a *Agent) Health() Health {
	st, _ := a.box.snapshot()
	h := Health{
		Epoch:        a.box.epoch,
		Queued:       st.readings,
		QueuedBytes:  st.bytes,
		Batches:      len(st.batches),
		Drops:        maps.Clone(st.drops),
		Delivered:    st.delivered,
		LastDelivery: st.lastDelivery,
		Commits:      st.commits,
	}
	for _, q := range st.queues {
		if q.readings > 0 && !q.headAt.IsZero() && (h.Oldest.IsZero() || q.headAt.Before(h.Oldest)) {
			h.Oldest = q.headAt
		}
	}
	for _, b := range st.batches {
		if !b.oldest.IsZero() && (h.Oldest.IsZero() || b.oldest.Before(h.Oldest)) {
			h.Oldest = b.oldest
		}
	}
	if !h.Oldest.IsZero() {
		h.OldestAge = max(0, a.now().Sub(h.Oldest))
	}
	h.ConsentUnposted = len(a.unposted())
	a.mu.Lock()
	h.LastError = a.lastErr
	h.LocalOnly = a.localOnly
	h.ConsentList = a.consentList
	if a.noConsent > 0 {
		h.Drops[DropNoConsent] += a.noConsent
	}
	a.mu.Unlock()
	return h
}

// LogValue returns h as a group of attributes for a log line.
func (h Health) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.Uint64("epoch", h.Epoch),
		slog.Int("queued", h.Queued),
		slog.Int64("queued_bytes", h.QueuedBytes),
		slog.Int("batches", h.Batches),
		slog.Duration("oldest_age", h.OldestAge),
		slog.Uint64("delivered", h.Delivered),
		slog.Uint64("local_only", h.LocalOnly),
		slog.Uint64("commits", h.Commits),
	}
	if !h.LastDelivery.IsZero() {
		attrs = append(attrs, slog.Time("last_delivery", h.LastDelivery))
	}
	if h.ConsentUnposted > 0 {
		attrs = append(attrs, slog.Int("consent_unposted", h.ConsentUnposted))
	}
	if !h.ConsentList.IsZero() {
		attrs = append(attrs, slog.Time("consent_list", h.ConsentList))
	}
	if h.LastError != "" {
		attrs = append(attrs, slog.String("last_error", h.LastError))
	}
	if len(h.Drops) > 0 {
		var drops []slog.Attr
		for _, r := range slices.Sorted(maps.Keys(h.Drops)) {
			drops = append(drops, slog.Uint64(string(r), h.Drops[r]))
		}
		attrs = append(attrs, slog.Attr{Key: "drops", Value: slog.GroupValue(drops...)})
	}
	return slog.GroupValue(attrs...)
}

// reportHealth logs Health every Config.HealthInterval until ctx ends.
func (a *Agent) reportHealth(ctx context.Context) {
	defer a.wg.Done()
	if a.cfg.HealthInterval < 0 {
		return
	}
	t := time.NewTicker(a.cfg.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.log.Info("device: health", "health", a.Health())
		}
	}
}
