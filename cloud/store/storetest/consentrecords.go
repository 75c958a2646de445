package storetest

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
)

// consentRecord returns a record of subject whose signed bytes stand
// for a COSE message; the store does not parse them.
func consentRecord(id byte, subject string, d time.Duration) store.ConsentRecord {
	return store.ConsentRecord{ID: consent.ID{0xc0, id}, Subject: subject, Signed: []byte{0xd2, 0x84, id, 0xff}, Time: at(d)}
}

func testConsentRecords(t *testing.T, s store.Store) {
	ctx := t.Context()
	// Added out of time order: they come back in the order added.
	late := consentRecord(1, "alice", time.Hour)
	early := consentRecord(2, "alice", 0)
	early.Retention = 90 * 24 * time.Hour
	bob := consentRecord(3, "bob", 0)
	for _, r := range []store.ConsentRecord{late, bob, early} {
		ok(t, s.AddConsentRecord(ctx, r), "AddConsentRecord")
	}
	ok(t, s.AddConsentRecord(ctx, late), "AddConsentRecord of the same record again")
	other := late
	other.Signed = append(bytes.Clone(late.Signed), 0)
	is(t, s.AddConsentRecord(ctx, other), store.ErrConflict, "AddConsentRecord of other bytes under a taken ID")
	other = bob
	other.Subject = "alice"
	other.Signed = []byte("another")
	is(t, s.AddConsentRecord(ctx, other), store.ErrConflict, "AddConsentRecord of another subject's ID")

	got, err := s.ConsentRecords(ctx, "alice")
	ok(t, err, "ConsentRecords")
	same(t, got, []store.ConsentRecord{late, early}, "ConsentRecords")
	got, err = s.ConsentRecords(ctx, "bob")
	ok(t, err, "ConsentRecords")
	same(t, got, []store.ConsentRecord{bob}, "ConsentRecords of another subject")
	got, err = s.ConsentRecords(ctx, "carol")
	ok(t, err, "ConsentRecords")
	same(t, len(got), 0, "records of a subject without any")

	for what, r := range map[string]store.ConsentRecord{
		"a zero ID":            {Subject: "alice", Signed: []byte{1}, Time: t0},
		"no subject":           {ID: consent.ID{9}, Signed: []byte{1}, Time: t0},
		"no bytes":             {ID: consent.ID{9}, Subject: "alice", Time: t0},
		"no time":              {ID: consent.ID{9}, Subject: "alice", Signed: []byte{1}},
		"a negative retention": {ID: consent.ID{9}, Subject: "alice", Signed: []byte{1}, Time: t0, Retention: -time.Second},
	} {
		is(t, s.AddConsentRecord(ctx, r), store.ErrInvalid, "AddConsentRecord with "+what)
	}
	large := store.ConsentRecord{ID: consent.ID{9}, Subject: "alice", Signed: make([]byte, store.MaxDocument+1), Time: t0}
	is(t, s.AddConsentRecord(ctx, large), store.ErrTooLarge, "AddConsentRecord of a record over MaxDocument")
	for _, text := range bad {
		what := strings.ToValidUTF8(text, "?")
		is(t, s.AddConsentRecord(ctx, store.ConsentRecord{ID: consent.ID{9}, Subject: text, Signed: []byte{1}, Time: t0}), store.ErrInvalid, "AddConsentRecord of subject "+what)
		_, err := s.ConsentRecords(ctx, text)
		is(t, err, store.ErrInvalid, "ConsentRecords of subject "+what)
	}
	for i, text := range tricky {
		r := consentRecord(byte(10+i), text, 0)
		ok(t, s.AddConsentRecord(ctx, r), "AddConsentRecord")
		got, err := s.ConsentRecords(ctx, text)
		ok(t, err, "ConsentRecords")
		same(t, got, []store.ConsentRecord{r}, "ConsentRecords of a tricky subject")
	}
	got, err = s.ConsentRecords(ctx, "alice")
	ok(t, err, "ConsentRecords")
	same(t, len(got), 2, "alice's records after the refused ones")
}

func testConsentRetention(t *testing.T, s store.Store) {
	ctx := t.Context()
	w := newWorld(t, s)
	// Readings 0 to 9, a minute apart from t0; the even ones under
	// records {0xc0, i, 0, 1}.
	_, err := s.StoreBatch(ctx, w.batch("s", 1, 10))
	ok(t, err, "StoreBatch")
	for i, retention := range map[byte]time.Duration{0: time.Hour, 2: 0, 4: 24 * time.Hour, 6: time.Duration(math.MaxInt64)} {
		r := store.ConsentRecord{ID: consent.ID{0xc0, i, 0, 1}, Subject: "alice", Signed: []byte{i}, Time: t0, Retention: retention}
		ok(t, s.AddConsentRecord(ctx, r), "AddConsentRecord")
	}
	left := func() []int {
		var v []int
		for _, r := range w.readings(t, "s") {
			v = append(v, int(r.Time.Sub(t0)/time.Minute))
		}
		return v
	}
	n, err := s.DeleteConsentedReadings(ctx, at(time.Hour+time.Minute))
	ok(t, err, "DeleteConsentedReadings")
	same(t, n, int64(1), "readings deleted an hour after the first was taken")
	same(t, left(), []int{1, 2, 3, 4, 5, 6, 7, 8, 9}, "readings left")
	n, err = s.DeleteConsentedReadings(ctx, at(1000*24*time.Hour))
	ok(t, err, "DeleteConsentedReadings")
	same(t, n, int64(1), "readings deleted 1000 days on")
	// Record 2 sets no retention, record 6 one too long to pass, and
	// record 8 is not stored: their readings stay, as do those without a
	// record.
	same(t, left(), []int{1, 2, 3, 5, 6, 7, 8, 9}, "readings left")

	// The earliest and latest times kept do not overflow.
	for _, now := range []time.Time{time.Unix(0, math.MinInt64+1), time.Unix(0, math.MaxInt64)} {
		_, err := s.DeleteConsentedReadings(ctx, now)
		ok(t, err, "DeleteConsentedReadings at "+now.String())
	}
	same(t, left(), []int{1, 2, 3, 5, 6, 7, 8, 9}, "readings left after the extremes")
	_, err = s.DeleteConsentedReadings(ctx, time.Time{})
	is(t, err, store.ErrInvalid, "DeleteConsentedReadings without a time")
}
