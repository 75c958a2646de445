package device

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/protocol"
)

// The outbox's records are encoded here, by hand, before they are sealed:
// a version byte, then varints and length-prefixed strings. Values keep
// the Go types the manifest's transforms gave them, so that a batch
// formed after a restart encodes exactly as one formed before it.

const recordVersion = 1

// Value kinds of an encoded field.
const (
	kindNumber    = 1 // float64: 8 bytes, IEEE 754 big-endian
	kindInteger   = 2 // int64: varint
	kindString    = 3 // string: length, bytes
	kindBool      = 4 // bool: one byte, 0 or 1
	kindTimestamp = 5 // time.Time: varint seconds, uvarint nanoseconds
	kindLocation  = 6 // policy.Point: two float64
)

// maxEntryFields bounds the fields of an encoded reading.
const maxEntryFields = protocol.MaxFields

var errMalformedRecord = errors.New("device: malformed outbox record")

// An entry is one queued reading: when it was recorded, and its fields as
// the manifest shaped them.
type entry struct {
	at     time.Time
	fields policy.Reading
}

// appendEntry appends the encoding of a reading recorded at at.
func appendEntry(b []byte, at time.Time, fields policy.Reading) ([]byte, error) {
	if len(fields) > maxEntryFields {
		return nil, fmt.Errorf("device: a reading of %d fields, at most %d", len(fields), maxEntryFields)
	}
	b = append(b, recordVersion)
	b = appendTime(b, at)
	b = binary.AppendUvarint(b, uint64(len(fields)))
	for name, v := range fields {
		b = appendString(b, name)
		switch v := v.(type) {
		case float64:
			b = append(b, kindNumber)
			b = binary.BigEndian.AppendUint64(b, math.Float64bits(v))
		case int64:
			b = append(b, kindInteger)
			b = binary.AppendVarint(b, v)
		case string:
			b = append(b, kindString)
			b = appendString(b, v)
		case bool:
			b = append(b, kindBool)
			if v {
				b = append(b, 1)
			} else {
				b = append(b, 0)
			}
		case time.Time:
			b = append(b, kindTimestamp)
			b = appendTime(b, v)
		case policy.Point:
			b = append(b, kindLocation)
			b = binary.BigEndian.AppendUint64(b, math.Float64bits(v.Lat))
			b = binary.BigEndian.AppendUint64(b, math.Float64bits(v.Lon))
		default:
			return nil, fmt.Errorf("device: field %q holds a %T, which no manifest type has", name, v)
		}
	}
	return b, nil
}

func appendTime(b []byte, t time.Time) []byte {
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// A reader reads an encoded record, remembering the first failure.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.bad = true
		r.b = nil
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.bad = true
		r.b = nil
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes(n uint64) []byte {
	if n > uint64(len(r.b)) {
		r.bad = true
		r.b = nil
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) byte() byte {
	v := r.bytes(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (r *reader) string() string { return string(r.bytes(r.uvarint())) }

func (r *reader) float() float64 {
	v := r.bytes(8)
	if v == nil {
		return 0
	}
	return math.Float64frombits(binary.BigEndian.Uint64(v))
}

func (r *reader) time() time.Time {
	s, ns := r.varint(), r.uvarint()
	if ns >= 1e9 {
		r.bad = true
	}
	return time.Unix(s, int64(ns)).UTC()
}

// version reads the version byte.
func (r *reader) version() {
	if r.byte() != recordVersion {
		r.bad = true
	}
}

// done reports whether the whole record was read without a failure.
func (r *reader) done() bool { return !r.bad && len(r.b) == 0 }

// decodeEntry decodes what appendEntry wrote.
func decodeEntry(b []byte) (entry, error) {
	r := reader{b: b}
	r.version()
	e := entry{at: r.time()}
	n := r.uvarint()
	if n > maxEntryFields || r.bad {
		return entry{}, errMalformedRecord
	}
	e.fields = make(policy.Reading, n)
	for range n {
		name := r.string()
		switch r.byte() {
		case kindNumber:
			e.fields[name] = r.float()
		case kindInteger:
			e.fields[name] = r.varint()
		case kindString:
			e.fields[name] = r.string()
		case kindBool:
			switch r.byte() {
			case 0:
				e.fields[name] = false
			case 1:
				e.fields[name] = true
			default:
				r.bad = true
			}
		case kindTimestamp:
			e.fields[name] = r.time()
		case kindLocation:
			e.fields[name] = policy.Point{Lat: r.float(), Lon: r.float()}
		default:
			r.bad = true
		}
		if r.bad {
			break
		}
	}
	if !r.done() || len(e.fields) != int(n) {
		return entry{}, errMalformedRecord
	}
	return e, nil
}

// A queueKey names a queue: readings of one stream, shaped by one
// manifest, for one destination (Partner empty: the cloud). Each batch
// holds readings of one queue.
type queueKey struct {
	Manifest protocol.Hash
	Stream   string
	Partner  string
}

func appendQueueKey(b []byte, k queueKey) []byte {
	b = append(b, recordVersion)
	b = append(b, k.Manifest[:]...)
	b = appendString(b, k.Stream)
	return appendString(b, k.Partner)
}

func decodeQueueKey(b []byte) (queueKey, error) {
	r := reader{b: b}
	r.version()
	var k queueKey
	copy(k.Manifest[:], r.bytes(32))
	k.Stream = r.string()
	k.Partner = r.string()
	if !r.done() || k.Stream == "" {
		return queueKey{}, errMalformedRecord
	}
	return k, nil
}

// A batchRecord is a formed batch as the outbox keeps it: the exact bytes
// to send, which keep their idempotency key across restarts, and what
// Health needs to know of them.
type batchRecord struct {
	queue    uint32    // the queue its readings came from
	readings int       // how many
	oldest   time.Time // when the oldest of them was recorded
	body     []byte    // the batch's CBOR encoding, as sent
}

func appendBatchRecord(b []byte, r *batchRecord) []byte {
	b = append(b, recordVersion)
	b = binary.BigEndian.AppendUint32(b, r.queue)
	b = binary.AppendUvarint(b, uint64(r.readings))
	b = appendTime(b, r.oldest)
	return append(b, r.body...)
}

func decodeBatchRecord(b []byte) (*batchRecord, error) {
	r := reader{b: b}
	r.version()
	var rec batchRecord
	if q := r.bytes(4); q != nil {
		rec.queue = binary.BigEndian.Uint32(q)
	}
	n := r.uvarint()
	rec.oldest = r.time()
	rec.body = r.b
	if r.bad || n == 0 || n > protocol.MaxReadings || len(rec.body) == 0 {
		return nil, errMalformedRecord
	}
	rec.readings = int(n)
	return &rec, nil
}

// A keptConsent is a consent record as the outbox keeps it: the signed
// record as it was accepted, with whose key signed it (the key itself may
// not be trusted any more: a record stands as it was accepted), whether
// it is still to be posted to the cloud (captured on the device), and the
// cloud's receipt for it, once it has one.
type keptConsent struct {
	n       uint64 // its key in the consent bucket
	role    consent.Role
	subject string
	post    bool   // captured on the device and not yet logged by the cloud
	receipt []byte // the cloud's consent.Receipt, CBOR; nil without one
	signed  []byte
}

// Flags of an encoded keptConsent.
const consentPost = 1

// appendKeptConsent appends the encoding of c. The first byte tells it
// from a record kept before the encoding existed, which was the signed
// record alone: a tagged COSE_Sign1 message begins with 0xd2.
func appendKeptConsent(b []byte, c *keptConsent) []byte {
	b = append(b, recordVersion)
	var flags byte
	if c.post {
		flags |= consentPost
	}
	b = append(b, flags, byte(c.role))
	b = appendString(b, c.subject)
	b = binary.AppendUvarint(b, uint64(len(c.receipt)))
	b = append(b, c.receipt...)
	return append(b, c.signed...)
}

// decodeKeptConsent decodes what appendKeptConsent wrote; legacy reports
// a record kept as the signed message alone, whose signer must be looked
// up again.
func decodeKeptConsent(b []byte) (c *keptConsent, legacy bool, err error) {
	if len(b) > 0 && b[0] != recordVersion {
		return &keptConsent{signed: b}, true, nil
	}
	r := reader{b: b}
	r.version()
	c = &keptConsent{}
	flags := r.byte()
	c.role = consent.Role(r.byte())
	c.subject = r.string()
	c.receipt = r.bytes(r.uvarint())
	c.signed = r.b
	if r.bad || flags&^consentPost != 0 || c.role < consent.SubjectKey || c.role > consent.ControllerKey || len(c.signed) == 0 {
		return nil, false, errMalformedRecord
	}
	c.post = flags&consentPost != 0
	if len(c.receipt) == 0 {
		c.receipt = nil
	}
	return c, false, nil
}
