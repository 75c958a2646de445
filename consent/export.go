package consent

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/sensible-iot/sensible/internal/codec"
)

// An Export is a subject's whole consent history, for the subject or an
// auditor: every event in time order, exactly as signed, each with its own
// log receipt and a consistency proof from that receipt's checkpoint to the
// newest one, plus the public keys that signed the events.
//
// Anyone holding the log's public key alone can check it with VerifyExport:
// every receipt proves its event's bytes, and the consistency proofs show
// that every receipt came from one history of the log, the one the newest
// checkpoint commits to, so the log cannot have shown the subject one
// history and someone else another.
type Export struct {
	Subject string          `json:"subject" cbor:"1,keyasint"`       // whose history
	Events  []ExportedEvent `json:"events" cbor:"2,keyasint"`        // oldest first
	Log     *ExportedLog    `json:"log,omitempty" cbor:"3,keyasint"` // the log the receipts are from; nil if none
	Keys    []ExportedKey   `json:"keys" cbor:"4,keyasint"`          // the keys that signed the events
}

// ExportedLog names the consent log of an Export and its newest checkpoint.
type ExportedLog struct {
	// Origin is the log's name, as its checkpoints carry it.
	Origin string `json:"origin" cbor:"1,keyasint"`
	// Key is the log's public key, a note verifier key. A verifier
	// compares it with the key it trusts; it proves nothing by itself.
	Key string `json:"key" cbor:"2,keyasint"`
	// Checkpoint is the newest signed checkpoint, which every event's
	// consistency proof leads to.
	Checkpoint []byte `json:"checkpoint" cbor:"3,keyasint"`
}

// An ExportedEvent is one event of an Export.
type ExportedEvent struct {
	// Record is the decoded record, for reading; VerifyExport checks that
	// it is what Signed holds.
	Record *Record `json:"record" cbor:"1,keyasint"`
	// Signed is the COSE_Sign1 message as it was received and logged.
	Signed []byte `json:"signed" cbor:"2,keyasint"`
	// KeyID names the key that signed it, one of the export's Keys.
	KeyID []byte `json:"kid" cbor:"3,keyasint"`
	// Receipt proves Signed is in the consent log; nil if it was not
	// logged.
	Receipt *Receipt `json:"receipt,omitempty" cbor:"4,keyasint,omitempty"`
	// Consistency proves that the tree of the receipt's checkpoint is a
	// prefix of the tree of the export's newest checkpoint (RFC 9162).
	Consistency []Hash `json:"consistency,omitempty" cbor:"5,keyasint,omitempty"`
}

// An ExportedKey is a public key that signed events of an Export.
type ExportedKey struct {
	KID     []byte `json:"kid" cbor:"1,keyasint"`                         // its key ID
	Role    Role   `json:"role" cbor:"2,keyasint"`                        // whose key it is
	Subject string `json:"subject,omitempty" cbor:"3,keyasint,omitempty"` // the subject, for app and device keys
	Key     []byte `json:"key" cbor:"4,keyasint"`                         // PKIX, ASN.1 DER
}

// A LogProver is what Export needs of the consent log; *Log is one.
type LogProver interface {
	// Checkpoint returns a signed checkpoint of the log as it is now.
	Checkpoint(ctx context.Context) (*Checkpoint, error)
	// ProveConsistency proves that the tree of newSize extends that of
	// oldSize.
	ProveConsistency(ctx context.Context, oldSize, newSize int64) ([]Hash, error)
}

// loggedReceipt is a receipt checked by SetReceipt, with the size of its
// checkpoint.
type loggedReceipt struct {
	r    *Receipt
	size int64
}

// SetReceipt attaches the log receipt of record id, for Export. The
// receipt must prove the record's own bytes in the log whose public key is
// logKey (VerifyReceipt): a receipt for other bytes is refused (an error
// matching ErrBadProof or ErrBadCheckpoint), so an export never pairs a
// record with another record's receipt. A record the history does not hold
// is ErrUnknownRecord.
func (h *History) SetReceipt(id ID, r *Receipt, logKey string) error {
	h.mu.RLock()
	v, ok := h.records[id]
	h.mu.RUnlock()
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownRecord, id)
	}
	if err := VerifyReceipt(r, v.Raw, logKey); err != nil {
		return err
	}
	ck, err := OpenCheckpoint(r.Checkpoint, logKey)
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.receipts == nil {
		h.receipts = make(map[ID]loggedReceipt)
	}
	h.receipts[id] = loggedReceipt{r, ck.Size}
	return nil
}

// Export returns the subject's history, oldest event first, with the keys
// that signed it. With a log (and its public key, logKey), every event that
// has a receipt also gets a consistency proof from its receipt's checkpoint
// to a fresh checkpoint of the log, so that VerifyExport can check the
// whole export with the log's key alone; with a nil log, events carry their
// receipts only.
func (h *History) Export(ctx context.Context, log LogProver, logKey string) (*Export, error) {
	h.mu.RLock()
	e := &Export{Subject: h.subject}
	sizes := make([]int64, 0, len(h.records))
	keys := map[string]TrustedKey{}
	for _, v := range h.records {
		lr := h.receipts[v.Record.ID]
		e.Events = append(e.Events, ExportedEvent{Record: v.Record, Signed: v.Raw, KeyID: v.Signer.KID, Receipt: lr.r})
		sizes = append(sizes, lr.size)
		keys[string(v.Signer.KID)] = v.Signer
	}
	h.mu.RUnlock()
	for _, k := range keys {
		if k.Key == nil {
			continue // a signer known only by its key ID (see DecodeAccepted)
		}
		der, err := x509.MarshalPKIXPublicKey(k.Key)
		if err != nil {
			return nil, err
		}
		e.Keys = append(e.Keys, ExportedKey{KID: k.KID, Role: k.Role, Subject: k.Subject, Key: der})
	}
	slices.SortFunc(e.Keys, func(a, b ExportedKey) int { return bytes.Compare(a.KID, b.KID) })
	order := make([]int, len(e.Events))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		ra, rb := e.Events[a].Record, e.Events[b].Record
		if c := cmpInt(ra.Event.Time, rb.Event.Time); c != 0 {
			return c
		}
		return bytes.Compare(ra.ID[:], rb.ID[:])
	})
	events := make([]ExportedEvent, len(order))
	sorted := make([]int64, len(order))
	for i, j := range order {
		events[i], sorted[i] = e.Events[j], sizes[j]
	}
	e.Events = events
	if log == nil {
		return e, nil
	}
	latest, err := log.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	e.Log = &ExportedLog{Origin: latest.Origin, Key: logKey, Checkpoint: latest.Signed}
	proofs := map[int64][]Hash{}
	for i := range e.Events {
		if e.Events[i].Receipt == nil {
			continue
		}
		size := sorted[i]
		p, ok := proofs[size]
		if !ok {
			if p, err = log.ProveConsistency(ctx, size, latest.Size); err != nil {
				return nil, err
			}
			proofs[size] = p
		}
		e.Events[i].Consistency = p
	}
	return e, nil
}

// VerifyExport checks a whole export with the consent log's public key,
// logKey, and nothing else: the newest checkpoint is the log's; every
// event has a receipt that proves its signed bytes; every receipt's
// checkpoint is consistent with the newest one, so all come from one
// history of the log; every event's record is what its signed bytes hold,
// for the export's subject, signed by the key it names among the export's
// keys; and no record appears twice. The signer keys come from the export:
// the log vouches that the events were accepted, not whose keys they are.
// Errors match ErrBadCheckpoint, ErrBadProof, ErrLogShrunk, ErrMalformed,
// ErrUnknownKey, ErrBadSignature or ErrRecordConflict.
func VerifyExport(ctx context.Context, e *Export, logKey string) error {
	if e.Log == nil {
		return fmt.Errorf("%w: the export names no log", ErrBadCheckpoint)
	}
	if e.Log.Key != logKey {
		return fmt.Errorf("%w: the export's log key is not the one trusted", ErrBadCheckpoint)
	}
	latest, err := OpenCheckpoint(e.Log.Checkpoint, logKey)
	if err != nil {
		return err
	}
	if latest.Origin != e.Log.Origin {
		return fmt.Errorf("%w: origin %q, the export says %q", ErrBadCheckpoint, latest.Origin, e.Log.Origin)
	}
	keys := &KeySet{}
	for _, k := range e.Keys {
		pub, err := x509.ParsePKIXPublicKey(k.Key)
		if err != nil {
			return fmt.Errorf("%w: key %x: %v", ErrMalformed, k.KID, err)
		}
		if err := keys.Add(TrustedKey{KID: k.KID, Key: pub, Role: k.Role, Subject: k.Subject}); err != nil {
			return fmt.Errorf("%w: key %x: %v", ErrMalformed, k.KID, err)
		}
	}
	seen := map[ID]bool{}
	for i, ev := range e.Events {
		v, err := Verify(ctx, keys, ev.Signed)
		if err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
		r := v.Record
		if !bytes.Equal(v.Signer.KID, ev.KeyID) {
			return fmt.Errorf("%w: event %d names key %x, signed by %x", ErrMalformed, i, ev.KeyID, v.Signer.KID)
		}
		if ev.Record == nil || !sameRecord(ev.Record, r) {
			return fmt.Errorf("%w: event %d: the record shown is not the one signed", ErrMalformed, i)
		}
		if r.Subject != e.Subject {
			return fmt.Errorf("%w: event %d is of subject %q", ErrMalformed, i, r.Subject)
		}
		if seen[r.ID] {
			return fmt.Errorf("%w: record %s twice", ErrRecordConflict, r.ID)
		}
		seen[r.ID] = true
		if ev.Receipt == nil {
			return fmt.Errorf("%w: event %d (%s) has no receipt", ErrBadProof, i, r.ID)
		}
		if err := VerifyReceipt(ev.Receipt, ev.Signed, logKey); err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
		ck, err := OpenCheckpoint(ev.Receipt.Checkpoint, logKey)
		if err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
		if err := VerifyConsistency(ck, latest, ev.Consistency); err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
	}
	return nil
}

// sameRecord reports whether a and b encode alike.
func sameRecord(a, b *Record) bool {
	ea, err1 := codec.Marshal(a)
	eb, err2 := codec.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ea, eb)
}

// CBOR returns the export in deterministic CBOR.
func (e *Export) CBOR() ([]byte, error) { return codec.Marshal(e) }

// JSON returns the export as indented JSON (byte strings in base64, IDs
// and record hashes in hex, log hashes in base64 as checkpoints write
// them).
func (e *Export) JSON() ([]byte, error) { return json.MarshalIndent(e, "", "  ") }

// MaxExportSize bounds an export ParseExport accepts.
const MaxExportSize = 64 << 20

// exportDecoder decodes exports: many events, each small.
var exportDecoder = func() *codec.Decoder {
	d, err := codec.NewDecoder(codec.Limits{MaxBody: MaxExportSize, MaxDepth: 10, MaxArray: 1 << 20, MaxMap: 16})
	if err != nil {
		panic(err) // fixed limits
	}
	return d
}()

// ParseExport decodes an export written by Export.CBOR, strictly and within
// MaxExportSize; check it with VerifyExport. Errors match ErrMalformed.
func ParseExport(b []byte) (*Export, error) {
	var e Export
	if err := exportDecoder.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("%w: export: %w", ErrMalformed, err)
	}
	return &e, nil
}
