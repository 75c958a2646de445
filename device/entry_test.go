package device

import (
	"bytes"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/consent/policy"
)

// entries are readings of every value type the manifest's transforms
// give, and their edge cases.
var entries = []policy.Reading{
	{},
	{"watts": 1230.0, "n": int64(-7), "mode": "eco", "on": true, "off": false},
	{"ts": time.Unix(1795424832, 345678901).UTC(), "whole": time.Unix(1795424400, 0).UTC(), "early": time.Unix(-1, 500000000).UTC()},
	{"dock": policy.Point{Lat: 52.52, Lon: 13.38}, "zero": -0.0, "big": math.MaxFloat64, "min": int64(math.MinInt64)},
	{"": "", "unicode": "grüße 🌡", "pseudonym": "k1:9aec2f2816223629fe14e2fdcf59d11f"},
}

func TestEntryRoundTrip(t *testing.T) {
	at := time.Unix(1795424400, 123).UTC()
	for _, r := range entries {
		b, err := appendEntry(nil, at, r)
		if err != nil {
			t.Fatal(err)
		}
		e, err := decodeEntry(b)
		if err != nil {
			t.Fatalf("%v: %v", r, err)
		}
		if !e.at.Equal(at) || !reflect.DeepEqual(e.fields, r) {
			t.Fatalf("%v came back as %v at %v", r, e.fields, e.at)
		}
		if v, ok := r["zero"]; ok && math.Signbit(e.fields["zero"].(float64)) != math.Signbit(v.(float64)) {
			t.Fatal("-0 lost its sign")
		}
		// Every prefix is refused, never read as something else.
		for i := range b {
			if _, err := decodeEntry(b[:i]); err == nil {
				t.Fatalf("%v: a prefix of %d bytes decoded", r, i)
			}
		}
	}
	if _, err := appendEntry(nil, at, policy.Reading{"x": 3}); err == nil {
		t.Fatal("an int, which no transform gives, was encoded")
	}
}

func TestSealBindsPlace(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	s, err := newSealer(key, 42)
	if err != nil {
		t.Fatal(err)
	}
	sealed := s.seal(nil, s.ad(adReading, 1, 5), []byte("reading"))
	if p, err := s.open(nil, s.ad(adReading, 1, 5), sealed); err != nil || string(p) != "reading" {
		t.Fatalf("open: %q, %v", p, err)
	}
	other, _ := newSealer(key, 43)
	for name, a := range map[string]ad{
		"another key":    s.ad(adReading, 1, 6),
		"another bucket": s.ad(adReading, 2, 5),
		"another kind":   s.ad(adBatch, 1, 5),
		"another epoch":  other.ad(adReading, 1, 5),
	} {
		if _, err := s.open(nil, a, sealed); err == nil {
			t.Errorf("opened in %s", name)
		}
	}
	if bytes.Contains(sealed, []byte("reading")) {
		t.Error("the plain text shows")
	}
}

func FuzzDecodeEntry(f *testing.F) {
	for _, r := range entries {
		b, _ := appendEntry(nil, time.Unix(1795424400, 0), r)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEntry(b)
		if err != nil {
			return
		}
		// What decodes encodes back to a record that decodes the same.
		again, err := appendEntry(nil, e.at, e.fields)
		if err != nil {
			t.Fatalf("%v does not encode: %v", e.fields, err)
		}
		e2, err := decodeEntry(again)
		if err != nil || !e2.at.Equal(e.at) || len(e2.fields) != len(e.fields) {
			t.Fatalf("%v: %v", e.fields, err)
		}
	})
}

func FuzzDecodeBatchRecord(f *testing.F) {
	f.Add(appendBatchRecord(nil, &batchRecord{queue: 3, readings: 2, oldest: time.Unix(1795424400, 0), body: []byte{0xa1, 0x01, 0x02}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := decodeBatchRecord(b)
		if err != nil {
			return
		}
		if !bytes.Equal(appendBatchRecord(nil, rec), b) && len(b) > 0 && b[0] == recordVersion {
			// Varints have one shortest form; others decode too. Only the
			// body must survive.
			again, err := decodeBatchRecord(appendBatchRecord(nil, rec))
			if err != nil || !bytes.Equal(again.body, rec.body) {
				t.Fatalf("%+v: %v", rec, err)
			}
		}
	})
}

func FuzzDecodeQueueKey(f *testing.F) {
	f.Add(appendQueueKey(nil, queueKey{Stream: "power", Partner: "gridco"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := decodeQueueKey(b)
		if err != nil {
			return
		}
		if k2, err := decodeQueueKey(appendQueueKey(nil, k)); err != nil || k2 != k {
			t.Fatalf("%+v came back as %+v, %v", k, k2, err)
		}
	})
}

func FuzzDecodeKeptConsent(f *testing.F) {
	f.Add(appendKeptConsent(nil, &keptConsent{role: 1, subject: "subj-5e1f09", signed: []byte{0xd2, 0x84}}))
	f.Add(appendKeptConsent(nil, &keptConsent{role: 2, subject: "s", post: true, receipt: []byte{0xa3}, signed: []byte{0xd2}}))
	f.Add([]byte{0xd2, 0x84, 0x43})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, legacy, err := decodeKeptConsent(b)
		if err != nil || legacy {
			return
		}
		again, _, err := decodeKeptConsent(appendKeptConsent(nil, c))
		if err != nil || again.role != c.role || again.subject != c.subject || again.post != c.post ||
			!bytes.Equal(again.receipt, c.receipt) || !bytes.Equal(again.signed, c.signed) {
			t.Fatalf("%+v came back as %+v, %v", c, again, err)
		}
	})
}
