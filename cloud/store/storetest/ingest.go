package storetest

import (
	"math"
	"sync"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/protocol"
)

func testIngest(t *testing.T, s store.Store) {
	ctx := t.Context()
	w := newWorld(t, s)
	b := w.batch("temp", 1, 3)
	r, err := s.StoreBatch(ctx, b)
	ok(t, err, "StoreBatch")
	if r.ID == 0 || r.Stored != 3 || r.Duplicate || r.Err != nil {
		t.Fatalf("StoreBatch: %+v", r)
	}
	again, err := s.StoreBatch(ctx, b)
	ok(t, err, "StoreBatch of a repeat")
	same(t, again, store.BatchResult{ID: r.ID, Stored: 3, Duplicate: true}, "StoreBatch of a repeat")
	other := w.batch("temp", 1, 2)
	_, err = s.StoreBatch(ctx, other)
	is(t, err, store.ErrConflict, "StoreBatch of a reused key with other content")

	rs := w.readings(t, "temp")
	if len(rs) != 3 {
		t.Fatalf("%d readings stored, want 3", len(rs))
	}
	for i, got := range rs {
		want := b.Readings[i]
		want.ID, want.Batch = got.ID, r.ID
		same(t, got, want, "stored reading")
		p, err := s.ReadingProvenance(ctx, got.ID)
		ok(t, err, "ReadingProvenance")
		same(t, p, store.Provenance{
			Reading: got.ID, Batch: r.ID, Device: w.device, Stream: "temp", Manifest: w.manifest,
			Key: b.Key, Consent: want.Consent, Time: want.Time, Received: b.Received,
		}, "ReadingProvenance")
	}
	if rs[1].Consent != (consent.ID{}) {
		t.Fatalf("a reading without consent came back with %v", rs[1].Consent)
	}
	_, err = s.ReadingProvenance(ctx, rs[2].ID+1000)
	is(t, err, store.ErrNotFound, "ReadingProvenance of an unknown reading")

	// Another epoch's sequence number 1 is another batch. Epochs use all
	// 64 bits.
	b2 := w.batch("temp", 1, 1)
	b2.Key.Epoch = math.MaxUint64 - 1
	r2, err := s.StoreBatch(ctx, b2)
	ok(t, err, "StoreBatch in another epoch")
	if r2.Duplicate || r2.ID == r.ID {
		t.Fatalf("a batch in another epoch taken for a repeat: %+v", r2)
	}
	rs2, err := s.ListReadings(ctx, store.ReadingQuery{Device: w.device, Stream: "temp", From: b2.Readings[0].Time, To: b2.Readings[0].Time.Add(1)})
	ok(t, err, "ListReadings")
	p, err := s.ReadingProvenance(ctx, rs2[len(rs2)-1].ID)
	ok(t, err, "ReadingProvenance")
	same(t, p.Key, b2.Key, "key of a batch in epoch 2^64-2")
	again, err = s.StoreBatch(ctx, b2)
	ok(t, err, "StoreBatch of a repeat")
	same(t, again, store.BatchResult{ID: r2.ID, Stored: 1, Duplicate: true}, "a repeat in epoch 2^64-2")

	unknownDevice := w.batch("temp", 2, 1)
	unknownDevice.Device = newID()
	_, err = s.StoreBatch(ctx, unknownDevice)
	is(t, err, store.ErrNotFound, "StoreBatch of an unknown device")
	unknown := w.batch("temp", 2, 1)
	unknown.Manifest = unknownManifest
	_, err = s.StoreBatch(ctx, unknown)
	is(t, err, store.ErrNotFound, "StoreBatch of an unknown manifest")
	same(t, len(w.readings(t, "temp")), 4, "readings after refused batches")
}

func testIngestInvalid(t *testing.T, s store.Store) {
	ctx := t.Context()
	w := newWorld(t, s)
	for name, change := range map[string]func(*store.Batch){
		"no device":            func(b *store.Batch) { b.Device = [16]byte{} },
		"no stream":            func(b *store.Batch) { b.Stream = "" },
		"no manifest":          func(b *store.Batch) { b.Manifest = protocol.Hash{} },
		"zero epoch":           func(b *store.Batch) { b.Key.Epoch = 0 },
		"zero seq":             func(b *store.Batch) { b.Key.Seq = 0 },
		"seq over 2^63-1":      func(b *store.Batch) { b.Key.Seq = math.MaxInt64 + 1 },
		"no received time":     func(b *store.Batch) { b.Received = time.Time{} },
		"no readings":          func(b *store.Batch) { b.Readings = nil },
		"reading without time": func(b *store.Batch) { b.Readings[0].Time = time.Time{} },
		"reading in 2300":      func(b *store.Batch) { b.Readings[0].Time = time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC) },
		"reading without data": func(b *store.Batch) { b.Readings[1].Fields = nil },
	} {
		b := w.batch("s", 1, 2)
		change(&b)
		_, err := s.StoreBatch(ctx, b)
		is(t, err, store.ErrInvalid, "StoreBatch with "+name)
	}
	// The refused batches used seq 1; none of them took it.
	r, err := s.StoreBatch(ctx, w.batch("s", 1, 2))
	ok(t, err, "StoreBatch")
	same(t, r.Duplicate, false, "duplicate after refused batches")
	seq, err := s.StoreBatch(ctx, w.batch("s", math.MaxInt64, 1))
	ok(t, err, "StoreBatch with the highest sequence number")
	same(t, seq.Duplicate, false, "duplicate")
}

func testAllOrNothing(t *testing.T, s store.Store) {
	ctx := t.Context()
	w := newWorld(t, s)
	// The bad reading is far enough in that the readings before it are
	// written before it is found: the whole batch must be rolled back.
	b := w.batch("s", 3, 1200)
	b.Readings[1100].Time = time.Time{}
	_, err := s.StoreBatch(ctx, b)
	is(t, err, store.ErrInvalid, "StoreBatch with a bad reading")
	same(t, len(w.readings(t, "s")), 0, "readings after a failed batch")
	gaps, err := s.ListGaps(ctx, w.device)
	ok(t, err, "ListGaps")
	same(t, len(gaps), 0, "gaps after a failed batch")

	b.Readings[1100].Time = at(time.Hour)
	r, err := s.StoreBatch(ctx, b)
	ok(t, err, "StoreBatch of the mended batch")
	if r.Duplicate || r.Stored != 1200 {
		t.Fatalf("StoreBatch of the mended batch: %+v", r)
	}
	same(t, len(w.readings(t, "s")), store.MaxList, "readings listed")
}

func testGroupCommit(t *testing.T, s store.Store) {
	ctx := t.Context()
	w := newWorld(t, s)
	first, err := s.StoreBatch(ctx, w.batch("s", 1, 2))
	ok(t, err, "StoreBatch")

	bad := w.batch("s", 3, 900)
	bad.Readings[800].Fields = nil
	conflict := w.batch("s", 1, 5)
	unknown := w.batch("s", 5, 1)
	unknown.Manifest = unknownManifest
	invalid := w.batch("s", 0, 1)
	results, err := s.StoreBatches(ctx, []store.Batch{
		w.batch("s", 4, 3), bad, w.batch("s", 2, 2), w.batch("s", 1, 2), conflict, unknown, invalid,
	})
	ok(t, err, "StoreBatches")
	if len(results) != 7 {
		t.Fatalf("%d results for 7 batches", len(results))
	}
	if r := results[0]; r.Err != nil || r.Duplicate || r.Stored != 3 {
		t.Errorf("batch 4: %+v", r)
	}
	is(t, results[1].Err, store.ErrInvalid, "a bad batch in a group")
	if r := results[2]; r.Err != nil || r.Duplicate || r.Stored != 2 || r.ID == results[0].ID {
		t.Errorf("batch 2: %+v", r)
	}
	same(t, results[3], store.BatchResult{ID: first.ID, Stored: 2, Duplicate: true}, "a repeat in a group")
	is(t, results[4].Err, store.ErrConflict, "a reused key in a group")
	is(t, results[5].Err, store.ErrNotFound, "an unknown manifest in a group")
	is(t, results[6].Err, store.ErrInvalid, "an invalid batch in a group")
	same(t, len(w.readings(t, "s")), 2+3+2, "readings stored by the group")
	gaps, err := s.ListGaps(ctx, w.device)
	ok(t, err, "ListGaps")
	same(t, gaps, []store.Gap{{Device: w.device, Epoch: 7, First: 3, Last: 3, Found: w.batch("s", 4, 3).Received}}, "gaps")

	results, err = s.StoreBatches(ctx, nil)
	ok(t, err, "StoreBatches of none")
	same(t, len(results), 0, "results of none")
}

func testListReadings(t *testing.T, s store.Store) {
	ctx := t.Context()
	w := newWorld(t, s)
	b := w.batch("s", 1, 10)
	// Taken out of order: listed by time.
	b.Readings[3].Time, b.Readings[6].Time = b.Readings[6].Time, b.Readings[3].Time
	_, err := s.StoreBatch(ctx, b)
	ok(t, err, "StoreBatch")
	_, err = s.StoreBatch(ctx, w.batch("other", 2, 4))
	ok(t, err, "StoreBatch")
	w2 := *w
	w2.device = w.addDevice(t, w.model)
	_, err = s.StoreBatch(ctx, w2.batch("s", 1, 5))
	ok(t, err, "StoreBatch")

	list := func(q store.ReadingQuery) []time.Time {
		t.Helper()
		rs, err := s.ListReadings(ctx, q)
		ok(t, err, "ListReadings")
		var times []time.Time
		for _, r := range rs {
			if r.Time.Location() != time.UTC {
				t.Fatalf("reading time %v not in UTC", r.Time)
			}
			times = append(times, r.Time)
		}
		return times
	}
	minutes := func(ms ...int) []time.Time {
		var times []time.Time
		for _, m := range ms {
			times = append(times, at(time.Duration(m)*time.Minute))
		}
		return times
	}
	q := store.ReadingQuery{Device: w.device, Stream: "s"}
	same(t, list(q), minutes(0, 1, 2, 3, 4, 5, 6, 7, 8, 9), "all readings")
	q.From, q.To = at(2*time.Minute), at(5*time.Minute)
	same(t, list(q), minutes(2, 3, 4), "readings in [2m, 5m)")
	q.Limit = 2
	same(t, list(q), minutes(2, 3), "readings in [2m, 5m), two")
	q = store.ReadingQuery{Device: w.device, Stream: "s", From: at(8 * time.Minute)}
	same(t, list(q), minutes(8, 9), "readings from 8m")
	q = store.ReadingQuery{Device: w.device, Stream: "s", To: at(time.Minute)}
	same(t, list(q), minutes(0), "readings before 1m")
	q = store.ReadingQuery{Device: w.device, Stream: "other"}
	same(t, list(q), minutes(0, 1, 2, 3), "readings of another stream")
	q = store.ReadingQuery{Device: w2.device, Stream: "s"}
	same(t, list(q), minutes(0, 1, 2, 3, 4), "readings of another device")
	q = store.ReadingQuery{Device: w.device, Stream: "none"}
	same(t, len(list(q)), 0, "readings of an unknown stream")
}

func testRetention(t *testing.T, s store.Store) {
	ctx := t.Context()
	w := newWorld(t, s)
	first, err := s.StoreBatch(ctx, w.batch("s", 1, 10))
	ok(t, err, "StoreBatch")
	_, err = s.StoreBatch(ctx, w.batch("o", 2, 10))
	ok(t, err, "StoreBatch")
	w2 := *w
	w2.manifest = hashOf("manifest 2")
	w2.addManifest(t, w2.manifest)
	_, err = s.StoreBatch(ctx, w2.batch("s", 3, 10))
	ok(t, err, "StoreBatch")
	old := w.readings(t, "s")[0]

	n, err := s.DeleteReadings(ctx, store.Retention{Manifest: w.manifest, Stream: "s", Before: at(5 * time.Minute)})
	ok(t, err, "DeleteReadings")
	same(t, n, int64(5), "readings deleted")
	same(t, len(w.readings(t, "s")), 15, "readings left in the stream, of both manifests")
	same(t, len(w.readings(t, "o")), 10, "readings left in another stream")
	_, err = s.ReadingProvenance(ctx, old.ID)
	is(t, err, store.ErrNotFound, "ReadingProvenance of a deleted reading")
	n, err = s.DeleteReadings(ctx, store.Retention{Manifest: w.manifest, Stream: "s", Before: at(5 * time.Minute)})
	ok(t, err, "DeleteReadings")
	same(t, n, int64(0), "readings deleted again")
	_, err = s.DeleteReadings(ctx, store.Retention{Manifest: w.manifest, Stream: "s"})
	is(t, err, store.ErrInvalid, "DeleteReadings without a cutoff")

	// The batch is still known after its readings went.
	n, err = s.DeleteReadings(ctx, store.Retention{Manifest: w.manifest, Stream: "s", Before: at(time.Hour)})
	ok(t, err, "DeleteReadings")
	same(t, n, int64(5), "readings deleted")
	again, err := s.StoreBatch(ctx, w.batch("s", 1, 10))
	ok(t, err, "StoreBatch of a repeat")
	same(t, again, store.BatchResult{ID: first.ID, Stored: 10, Duplicate: true}, "a repeat after retention")
	same(t, len(w.readings(t, "s")), 10, "readings after the repeat")
}

func testGaps(t *testing.T, s store.Store) {
	ctx := t.Context()
	w := newWorld(t, s)
	store1 := func(epoch, seq uint64) {
		t.Helper()
		b := w.batch("s", seq, 1)
		b.Key.Epoch = epoch
		r, err := s.StoreBatch(ctx, b)
		ok(t, err, "StoreBatch")
		if r.Duplicate {
			t.Fatalf("batch %d/%d taken for a repeat", epoch, seq)
		}
	}
	found := func(seq uint64) time.Time { return w.batch("s", seq, 1).Received }
	gaps := func(want ...store.Gap) {
		t.Helper()
		got, err := s.ListGaps(ctx, w.device)
		ok(t, err, "ListGaps")
		for i := range want {
			want[i].Device = w.device
		}
		if len(want) == 0 {
			want = nil
		}
		same(t, got, want, "gaps")
	}
	store1(1, 1)
	store1(1, 2)
	gaps()
	store1(1, 6)
	gaps(store.Gap{Epoch: 1, First: 3, Last: 5, Found: found(6)})
	store1(1, 4)
	gaps(store.Gap{Epoch: 1, First: 3, Last: 3, Found: found(6)}, store.Gap{Epoch: 1, First: 5, Last: 5, Found: found(6)})
	store1(1, 3)
	store1(1, 5)
	gaps()
	store1(1, 10)
	store1(1, 7)
	gaps(store.Gap{Epoch: 1, First: 8, Last: 9, Found: found(10)})
	// A new epoch that starts above 1 misses its first batches.
	store1(2, 3)
	gaps(store.Gap{Epoch: 1, First: 8, Last: 9, Found: found(10)}, store.Gap{Epoch: 2, First: 1, Last: 2, Found: found(3)})
	// A repeat changes nothing.
	repeat := w.batch("s", 10, 1)
	repeat.Key.Epoch = 1
	r, err := s.StoreBatch(ctx, repeat)
	ok(t, err, "StoreBatch")
	same(t, r.Duplicate, true, "a repeat")
	other := *w
	other.device = w.addDevice(t, w.model)
	_, err = s.StoreBatch(ctx, other.batch("s", 4, 1))
	ok(t, err, "StoreBatch")
	gaps(store.Gap{Epoch: 1, First: 8, Last: 9, Found: found(10)}, store.Gap{Epoch: 2, First: 1, Last: 2, Found: found(3)})
}

func testConcurrentIngest(t *testing.T, s store.Store) {
	ctx := t.Context()
	w := newWorld(t, s)
	const writers, perWriter = 8, 10
	shared := w.batch("s", 1000, 2)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var sharedResults []store.BatchResult
	for g := range writers {
		wg.Go(func() {
			var bs []store.Batch
			for i := range perWriter {
				bs = append(bs, w.batch("s", uint64(g*perWriter+i+1), 2))
			}
			var results []store.BatchResult
			if g%2 == 0 {
				// Group commit, the repeat among them.
				rs, err := s.StoreBatches(ctx, append(bs, shared))
				if err != nil {
					t.Errorf("StoreBatches: %v", err)
					return
				}
				results = rs
			} else {
				for _, b := range append(bs, shared) {
					r, err := s.StoreBatch(ctx, b)
					if err != nil {
						t.Errorf("StoreBatch: %v", err)
						return
					}
					results = append(results, r)
				}
			}
			for _, r := range results[:perWriter] {
				if r.Err != nil || r.Duplicate {
					t.Errorf("batch stored by one writer: %+v", r)
				}
			}
			mu.Lock()
			sharedResults = append(sharedResults, results[perWriter])
			mu.Unlock()
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	var stored int
	for _, r := range sharedResults {
		if r.Err != nil || r.ID != sharedResults[0].ID || r.Stored != 2 {
			t.Fatalf("results of one batch stored by every writer: %+v", sharedResults)
		}
		if !r.Duplicate {
			stored++
		}
	}
	same(t, stored, 1, "writers that stored the shared batch")
	same(t, len(w.readings(t, "s")), 2*(writers*perWriter+1), "readings stored")
	gaps, err := s.ListGaps(ctx, w.device)
	ok(t, err, "ListGaps")
	if len(gaps) != 1 || gaps[0].First != writers*perWriter+1 || gaps[0].Last != 999 {
		t.Fatalf("gaps after concurrent writers: %+v", gaps)
	}
}
