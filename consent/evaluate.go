package consent

import (
	"bytes"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/sensible-iot/sensible/device/identity"
)

// A Query asks whether data may be processed now.
type Query struct {
	// Purpose is the purpose of processing, e.g. "analytics".
	Purpose string
	// Category is the data category, e.g. "device.sensor.power".
	Category string
	// Recipient is the partner the data would go to; empty means the
	// controller itself.
	Recipient string
	// Device is the device the data comes from; the zero ID matches
	// any.
	Device identity.ID
	// At is the time of processing.
	At time.Time
}

// A Reason says why a decision went the way it did.
type Reason uint8

// Reasons.
const (
	ReasonGranted     Reason = iota + 1 // a valid record covers the query
	ReasonNoConsent                     // no record covers it
	ReasonWithdrawn                     // the subject withdrew the covering consent
	ReasonRevoked                       // the controller revoked it
	ReasonRefused                       // the subject refused it, after any grant
	ReasonExpired                       // the covering consent lapsed
	ReasonNotYetValid                   // the covering consent starts later
	ReasonSuperseded                    // the covering consent answers a notice replaced by one needing re-consent
)

var reasonNames = [...]string{"", "granted", "no consent", "withdrawn", "revoked", "refused", "expired", "not yet valid", "notice superseded"}

// String returns the reason in words, e.g. "withdrawn".
func (r Reason) String() string {
	if int(r) < len(reasonNames) && r != 0 {
		return reasonNames[r]
	}
	return fmt.Sprintf("Reason(%d)", uint8(r))
}

// A Decision answers a Query: allowed or not, the record that decided it
// (zero when none did), and why.
type Decision struct {
	Allowed bool   // may the data be processed as asked
	Record  ID     // the record that decided, zero if none did
	Reason  Reason // why
}

// A History is one subject's verified consent events, indexed by purpose
// for decisions. It is safe for concurrent use.
type History struct {
	subject string

	mu       sync.RWMutex
	records  map[ID]*Verified
	endedBy  map[ID]*Verified         // record → the event that ended it
	byKey    map[indexKey][]*Verified // events by what they cover, oldest first
	receipts map[ID]loggedReceipt     // log receipts, for Export
	notices  *Notices                 // nil: no notice is superseded
}

type indexKey struct{ purpose, category string }

// NewHistory returns an empty history for subject.
func NewHistory(subject string) *History {
	return &History{subject: subject, records: make(map[ID]*Verified), endedBy: make(map[ID]*Verified), byKey: make(map[indexKey][]*Verified)}
}

// UseNotices makes decisions honour the controller's notice register: a
// grant answering a superseded notice version no longer allows.
func (h *History) UseNotices(ns *Notices) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.notices = ns
}

// Add records a verified event. It refuses an event for another subject,
// one signed by a key that may not record it (a grant or withdrawal needs
// the subject's app or device key, a revocation the controller's), and an
// event that ends a record the history does not hold (ErrUnknownRecord).
// Adding the same record again (the same bytes) is a no-op; another record
// under an ID the history holds (the same record signed again, say) is
// ErrRecordConflict, and the history keeps the first.
func (h *History) Add(v *Verified) error {
	r := v.Record
	if r.Subject != h.subject {
		return fmt.Errorf("%w: record of subject %q in the history of %q", ErrNotAllowed, r.Subject, h.subject)
	}
	bySubject := (v.Signer.Role == SubjectKey || v.Signer.Role == DeviceKey) && v.Signer.Subject == r.Subject
	switch r.Event.State {
	case StateRevoked:
		if v.Signer.Role != ControllerKey {
			return fmt.Errorf("%w: only the controller revokes", ErrNotAllowed)
		}
		if c := v.Signer.Controller; c != "" && c != r.Controller {
			return fmt.Errorf("%w: a key of %q revokes for %q", ErrNotAllowed, c, r.Controller)
		}
	case StateExpired:
		if !bySubject && v.Signer.Role != ControllerKey {
			return fmt.Errorf("%w: expiry recorded by a stranger", ErrNotAllowed)
		}
	default:
		if !bySubject {
			return fmt.Errorf("%w: a %s event must be signed by the subject's app or device", ErrNotAllowed, r.Event.State)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if prev, dup := h.records[r.ID]; dup {
		if bytes.Equal(prev.Raw, v.Raw) {
			return nil // the same record again: a retry
		}
		return fmt.Errorf("%w: %s", ErrRecordConflict, r.ID)
	}
	if r.Ends != nil {
		ended, ok := h.records[*r.Ends]
		if !ok {
			return fmt.Errorf("%w: %s", ErrUnknownRecord, r.Ends)
		}
		if !ended.Record.Event.State.grants() {
			return fmt.Errorf("%w: %s does not grant anything to end", ErrNotAllowed, r.Ends)
		}
		if ended.Record.Controller != r.Controller {
			return fmt.Errorf("%w: %s was given to %q, not %q", ErrNotAllowed, r.Ends, ended.Record.Controller, r.Controller)
		}
		if r.Event.State == StateExpired {
			// Recording an expiry ends nothing early: the record must
			// have an expiry, and it must have come.
			if e := ended.Record.Event.Expires; e == 0 || r.Event.Time < e {
				return fmt.Errorf("%w: %s has not expired at %d", ErrNotAllowed, r.Ends, r.Event.Time)
			}
		}
		if prev, done := h.endedBy[*r.Ends]; !done || r.Event.Time < prev.Record.Event.Time {
			h.endedBy[*r.Ends] = v
		}
	}
	h.records[r.ID] = v
	seen := map[indexKey]bool{}
	for _, p := range r.Processes {
		for _, c := range p.Categories {
			k := indexKey{p.Purpose, c}
			if seen[k] {
				continue
			}
			seen[k] = true
			list := h.byKey[k]
			i, _ := slices.BinarySearchFunc(list, r.Event.Time, func(e *Verified, t int64) int {
				return cmpInt(e.Record.Event.Time, t+1) // after every event at the same time
			})
			h.byKey[k] = slices.Insert(list, i, v)
		}
	}
	return nil
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func endReason(s State) Reason {
	switch s {
	case StateRefused:
		return ReasonRefused
	case StateRevoked:
		return ReasonRevoked
	case StateExpired:
		return ReasonExpired
	case StateRenewed:
		return ReasonGranted
	}
	return ReasonWithdrawn
}

// covers reports whether a process of r covers the query's purpose,
// category, recipient and device.
func covers(r *Record, q *Query) bool {
	if !q.Device.IsZero() && len(r.Devices) > 0 && !slices.Contains(r.Devices, q.Device) {
		return false
	}
	for i := range r.Processes {
		p := &r.Processes[i]
		if p.Purpose != q.Purpose || !slices.Contains(p.Categories, q.Category) {
			continue
		}
		if q.Recipient == "" || slices.Contains(p.Recipients, q.Recipient) {
			return true
		}
	}
	return false
}

// Decide answers q from the events recorded. A grant allows if it covers
// the query, is valid at q.At and was not ended by an event at or before
// q.At; a refusal later than every such grant denies. A record covers only
// what it lists: consent to one notice version does not extend to a
// purpose, category or recipient that a later version adds.
func (h *History) Decide(q Query) Decision {
	at := q.At.Unix()
	h.mu.RLock()
	defer h.mu.RUnlock()
	list := h.byKey[indexKey{q.Purpose, q.Category}]
	// Events up to q.At, latest first: the first covering refusal or live
	// grant decides.
	n, _ := slices.BinarySearchFunc(list, at, func(e *Verified, t int64) int {
		return cmpInt(e.Record.Event.Time, t+1)
	})
	var ended, lapsed, superseded *Verified
	for i := n - 1; i >= 0; i-- {
		v := list[i]
		r := v.Record
		switch {
		case r.Event.State == StateRefused || r.Event.State == StateWithdrawn || r.Event.State == StateRevoked || r.Event.State == StateExpired:
			// The latest covering choice wins: a refusal, withdrawal or
			// revocation after a grant denies, even if an older grant for
			// the same data was never withdrawn itself.
			if covers(r, &q) {
				return Decision{Record: r.ID, Reason: endReason(r.Event.State)}
			}
		case r.Event.State.grants():
			if !covers(r, &q) {
				continue
			}
			if e, ok := h.endedBy[r.ID]; ok && e.Record.Event.Time <= at {
				if ended == nil || e.Record.Event.Time > ended.Record.Event.Time {
					ended = e
				}
				continue
			}
			if r.Event.Expires != 0 && at >= r.Event.Expires {
				if lapsed == nil {
					lapsed = v
				}
				continue
			}
			if h.notices != nil && h.notices.Check(r) != nil {
				if superseded == nil {
					superseded = v
				}
				continue
			}
			return Decision{Allowed: true, Record: r.ID, Reason: ReasonGranted}
		}
	}
	switch {
	case ended != nil:
		return Decision{Record: ended.Record.ID, Reason: endReason(ended.Record.Event.State)}
	case lapsed != nil:
		return Decision{Record: lapsed.Record.ID, Reason: ReasonExpired}
	case superseded != nil:
		return Decision{Record: superseded.Record.ID, Reason: ReasonSuperseded}
	}
	for _, v := range list[n:] {
		if v.Record.Event.State.grants() && covers(v.Record, &q) {
			return Decision{Record: v.Record.ID, Reason: ReasonNotYetValid}
		}
	}
	return Decision{Reason: ReasonNoConsent}
}
