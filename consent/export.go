package consent

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/sensible-iot/sensible/internal/codec"
)

// An Export is a subject's whole consent history, for the subject or an
// auditor: every event in time order, as signed, with its log receipt.
// Each event can be checked on its own: its signature with the signer's
// public key, its place in the log with the log's public key
// (VerifyReceipt over Signed).
type Export struct {
	Subject string          `json:"subject" cbor:"1,keyasint"` // whose history
	Events  []ExportedEvent `json:"events" cbor:"2,keyasint"`  // oldest first
}

// An ExportedEvent is one event of an Export.
type ExportedEvent struct {
	// Record is the decoded record, for reading.
	Record *Record `json:"record" cbor:"1,keyasint"`
	// Signed is the COSE_Sign1 message as it was received and logged.
	Signed []byte `json:"signed" cbor:"2,keyasint"`
	// KeyID names the key that signed it.
	KeyID []byte `json:"kid" cbor:"3,keyasint"`
	// Receipt proves the event is in the consent log; nil if it was not
	// logged.
	Receipt *Receipt `json:"receipt,omitempty" cbor:"4,keyasint,omitempty"`
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
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.receipts == nil {
		h.receipts = make(map[ID]*Receipt)
	}
	h.receipts[id] = r
	return nil
}

// Export returns the subject's history with receipts, oldest event first.
func (h *History) Export() *Export {
	h.mu.RLock()
	defer h.mu.RUnlock()
	e := &Export{Subject: h.subject}
	for _, v := range h.records {
		e.Events = append(e.Events, ExportedEvent{Record: v.Record, Signed: v.Raw, KeyID: v.Signer.KID, Receipt: h.receipts[v.Record.ID]})
	}
	slices.SortFunc(e.Events, func(a, b ExportedEvent) int {
		if c := cmpInt(a.Record.Event.Time, b.Record.Event.Time); c != 0 {
			return c
		}
		return slices.Compare(a.Record.ID[:], b.Record.ID[:])
	})
	return e
}

// CBOR returns the export in deterministic CBOR.
func (e *Export) CBOR() ([]byte, error) { return codec.Marshal(e) }

// JSON returns the export as indented JSON (byte strings in base64, IDs
// and hashes in hex).
func (e *Export) JSON() ([]byte, error) { return json.MarshalIndent(e, "", "  ") }
