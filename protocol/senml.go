package protocol

import (
	"encoding/hex"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/internal/codec"
)

// SenML-CBOR labels (RFC 8428 section 6, table 4).
const (
	labelVersion    = -1 // bver
	labelBaseName   = -2 // bn
	labelBaseTime   = -3 // bt
	labelBaseUnit   = -4 // bu
	labelBaseValue  = -5 // bv
	labelBaseSum    = -6 // bs
	labelName       = 0  // n
	labelUnit       = 1  // u
	labelValue      = 2  // v
	labelString     = 3  // vs
	labelBool       = 4  // vb
	labelSum        = 5  // s
	labelTime       = 6  // t
	labelUpdateTime = 7  // ut
	labelData       = 8  // vd
)

// senmlVersionValue is the only SenML version accepted: RFC 8428's.
const senmlVersionValue = 10

// senmlAbsolute is where absolute SenML times begin: smaller values,
// negative ones included, are relative to now (RFC 8428 section 4.5.3),
// which a batch stored later cannot use.
const senmlAbsolute = 1 << 28

// The Uri-Query parameters that carry a SenML batch's header.
const (
	queryManifest = "manifest"
	queryStream   = "stream"
	queryEpoch    = "epoch"
	querySeq      = "seq"
	queryPartner  = "partner"
)

// senmlUnitNames are the two units this protocol reads: a location
// travels as two records, latitude then longitude (RFC 8428 section 12.1).
const (
	unitLat = "lat"
	unitLon = "lon"
)

// Query returns the Uri-Query options that carry the batch's header when
// its readings travel as SenML: manifest=<64 hex digits>, stream=<name>,
// epoch=<decimal>, seq=<decimal> and, for a partner, partner=<name>.
func (b *Batch) Query() []string {
	q := []string{
		queryManifest + "=" + hex.EncodeToString(b.Manifest[:]),
		queryStream + "=" + b.Stream,
		queryEpoch + "=" + strconv.FormatUint(b.Key.Epoch, 10),
		querySeq + "=" + strconv.FormatUint(b.Key.Seq, 10),
	}
	if b.Partner != "" {
		q = append(q, queryPartner+"="+b.Partner)
	}
	return q
}

// parseQuery reads a SenML batch's header from its Uri-Query options:
// each parameter once, none unknown, numbers in canonical decimal.
func parseQuery(query []string) (*Batch, error) {
	b := &Batch{}
	seen := map[string]bool{}
	bad := func(format string, args ...any) error {
		return batchErr(ErrMalformed, -1, "", "query: "+format, args...)
	}
	for _, q := range query {
		name, value, _ := strings.Cut(q, "=")
		if seen[name] {
			return nil, bad("%s given twice", quote(name))
		}
		seen[name] = true
		switch name {
		case queryManifest:
			h, err := hex.DecodeString(value)
			if err != nil || len(h) != len(b.Manifest) || value != strings.ToLower(value) {
				return nil, bad("manifest is not 64 lower-case hex digits")
			}
			copy(b.Manifest[:], h)
		case queryStream:
			b.Stream = value
		case queryEpoch, querySeq:
			n, err := strconv.ParseUint(value, 10, 64)
			if err != nil || n == 0 || strconv.FormatUint(n, 10) != value {
				return nil, bad("%s is not a positive decimal number", name)
			}
			if name == queryEpoch {
				b.Key.Epoch = n
			} else {
				b.Key.Seq = n
			}
		case queryPartner:
			if value == "" {
				return nil, bad("an empty partner")
			}
			b.Partner = value
		default:
			return nil, bad("unknown parameter %s", quote(name))
		}
	}
	for _, name := range []string{queryManifest, queryStream, queryEpoch, querySeq} {
		if !seen[name] {
			return nil, bad("no %s", name)
		}
	}
	if b.Stream == "" {
		return nil, bad("no stream")
	}
	return b, nil
}

// timeField returns the field that SenML times fill: the stream's first
// field whose output is a timestamp, or "" if it has none.
func timeField(s *policy.Stream) string {
	for _, f := range s.Fields {
		if t, ok := s.OutputType(f.Name); ok && t == policy.Timestamp {
			return f.Name
		}
	}
	return ""
}

// MarshalSenML returns the batch as SenML-CBOR (RFC 8428, content-format
// 112): the Uri-Query options that carry its header ([Batch.Query]) and
// the pack. m must be the manifest the batch names. Each field becomes a
// record (n: the field, v, vs or vb: its value, t: the reading's time); a
// location becomes two records, u "lat" then u "lon"; the stream's first
// timestamp field travels as every record's time, t.
//
// It fails with ErrSenML for what SenML cannot carry: a time before
// 1978-07-04 (SenML reads smaller numbers as relative to now) or finer
// than a double holds, a second timestamp field, a reading holding only
// its time, and a reading that a decoder could not tell from the one
// before it (the same time and no field in common). A batch that
// MarshalCBOR refuses fails with ErrInvalid here too.
func (b *Batch) MarshalSenML(m *policy.Manifest) (query []string, body []byte, err error) {
	if err := b.check(); err != nil {
		return nil, nil, err
	}
	if h, err := m.Hash(); err != nil || Hash(h) != b.Manifest {
		return nil, nil, batchErr(ErrInvalid, -1, "", "the manifest is not the one the batch names")
	}
	s, ok := m.Stream(b.Stream)
	if !ok {
		return nil, nil, batchErr(ErrInvalid, -1, "", "stream %s is not in the manifest", quote(b.Stream))
	}
	tf := timeField(s)
	var records []map[int]any
	var prev policy.Reading
	var prevT any
	for i, r := range b.Readings {
		var t any // the record time, nil for none
		if v, ok := r[tf]; ok && tf != "" {
			ts, ok := v.(time.Time)
			if !ok {
				return nil, nil, batchErr(ErrInvalid, i, tf, "a %T is not a timestamp", v)
			}
			if t, ok = senmlTime(ts); !ok {
				return nil, nil, batchErr(ErrSenML, i, tf, "a time before 1978-07-04 or finer than a double holds")
			}
		}
		names := make([]string, 0, len(r))
		for name := range r {
			if name != tf || tf == "" {
				names = append(names, name)
			}
		}
		if len(names) == 0 {
			return nil, nil, batchErr(ErrSenML, i, "", "a reading holding only its time")
		}
		slices.Sort(names)
		if i > 0 && sameSenMLTime(t, prevT) {
			// A decoder starts a new reading where a field repeats: put
			// first a field the reading before also has.
			j := slices.IndexFunc(names, func(n string) bool { _, ok := prev[n]; return ok })
			if j < 0 {
				return nil, nil, batchErr(ErrSenML, i, "", "the same time as the reading before and no field in common: SenML cannot tell them apart")
			}
			names[0], names[j] = names[j], names[0]
			slices.Sort(names[1:])
		}
		for _, name := range names {
			recs, err := senmlRecords(name, r[name], t)
			if err != nil {
				err.Reading = i
				return nil, nil, err
			}
			records = append(records, recs...)
		}
		prev, prevT = r, t
	}
	if len(records) > MaxReadings {
		return nil, nil, batchErr(ErrSenML, -1, "", "%d records, limit %d", len(records), MaxReadings)
	}
	body, err = codec.Marshal(records)
	if err != nil {
		return nil, nil, &BatchError{Kind: ErrInvalid, Reading: -1, Record: -1, Err: err}
	}
	return b.Query(), body, nil
}

// senmlRecords returns the records of one field.
func senmlRecords(name string, v any, t any) ([]map[int]any, *BatchError) {
	rec := func(label int, value any) map[int]any {
		r := map[int]any{labelName: name, label: value}
		if t != nil {
			r[labelTime] = t
		}
		return r
	}
	if name == "" {
		return nil, batchErr(ErrInvalid, -1, "", "a field without a name")
	}
	switch x := v.(type) {
	case string:
		return []map[int]any{rec(labelString, x)}, nil
	case bool:
		return []map[int]any{rec(labelBool, x)}, nil
	case policy.Point:
		lat, lon := rec(labelValue, x.Lat), rec(labelValue, x.Lon)
		lat[labelUnit], lon[labelUnit] = unitLat, unitLon
		return []map[int]any{lat, lon}, nil
	case time.Time:
		return nil, batchErr(ErrSenML, -1, name, "a second timestamp field: SenML carries one time per record")
	}
	wv, err := wireValue(v)
	if err != nil {
		return nil, batchErr(ErrInvalid, -1, name, "%v", err)
	}
	return []map[int]any{rec(labelValue, wv)}, nil
}

// labelTime returns t as a SenML time: integer seconds, or a float when
// it has a fraction that a double holds exactly. ok is false for a time
// SenML cannot carry.
func senmlTime(t time.Time) (any, bool) {
	s, ns := t.Unix(), t.Nanosecond()
	if s < senmlAbsolute {
		return nil, false
	}
	if ns == 0 {
		return s, true
	}
	f := float64(s) + float64(ns)/1e9
	back, ok := floatTime(f)
	return f, ok && back.Equal(t)
}

// sameSenMLTime reports whether two record times, as MarshalSenML writes
// them (nil for none), are the same.
func sameSenMLTime(a, b any) bool { return a == b }

// floatTime converts float Unix seconds to a time, to the nearest
// nanosecond.
func floatTime(f float64) (time.Time, bool) {
	if math.IsNaN(f) || f < -1<<62 || f > 1<<62 {
		return time.Time{}, false
	}
	sec := math.Floor(f)
	ns := math.Round((f - sec) * 1e9)
	if ns >= 1e9 {
		sec, ns = sec+1, ns-1e9
	}
	return time.Unix(int64(sec), int64(ns)).UTC(), true
}

// A senmlNumber is a number as SenML-CBOR carries it: an integer, kept
// exact, or a float.
type senmlNumber struct {
	i     int64
	f     float64
	float bool
}

func senmlNumberOf(v any) (senmlNumber, bool) {
	switch x := v.(type) {
	case float64:
		return senmlNumber{f: x, float: true}, true
	case uint64:
		if x <= math.MaxInt64 {
			return senmlNumber{i: int64(x)}, true
		}
	case int64:
		return senmlNumber{i: x}, true
	}
	return senmlNumber{}, false
}

// add returns a + b: exact for two integers that do not overflow, a float
// otherwise.
func (a senmlNumber) add(b senmlNumber) senmlNumber {
	if !a.float && !b.float {
		if s := a.i + b.i; (s > a.i) == (b.i > 0) {
			return senmlNumber{i: s}
		}
	}
	return senmlNumber{f: a.float64() + b.float64(), float: true}
}

func (a senmlNumber) float64() float64 {
	if a.float {
		return a.f
	}
	return float64(a.i)
}

func (a senmlNumber) isZero() bool { return a.float64() == 0 }

// int64 returns a as an integer if it is one exactly.
func (a senmlNumber) int64() (int64, bool) {
	if !a.float {
		return a.i, true
	}
	if a.f != math.Trunc(a.f) || math.Abs(a.f) > 1<<53 {
		return 0, false
	}
	return int64(a.f), true
}

// DecodeSenML decodes a telemetry batch sent as SenML-CBOR (RFC 8428,
// content-format 112): its header from the request's Uri-Query options
// (see [Batch.Query]), its readings from the pack, typed by the manifest
// the header names, found in ms. The caller must still run
// policy.Manifests.Check, as for [DecodeBatch].
//
// The mapping: a record's resolved name (bn + n) is a field of the
// stream; its resolved time (bt + t) fills the stream's first timestamp
// field, and no time at all (both absent or zero) leaves it out; its value
// is v (plus bv) for numbers and integers, vs for strings, pseudonyms and
// geohashes, vb for bools; a location is two records of one name, u "lat"
// then u "lon". Consecutive records with the same time and different
// fields make one reading; a new time, or a field the reading has
// already, starts the next.
//
// What the manifest cannot check is refused with ErrSenML: units other
// than lat and lon on a location (bu always), sums (s, bs), update times
// (ut), data values (vd), relative times (below 2^28), a record naming the
// timestamp field, a time on a stream with no timestamp field, a version
// (bver) other than 10, and any other label. Other errors are as for
// DecodeBatch, with the index of the record at fault.
func DecodeSenML(query []string, data []byte, ms ManifestSource) (*Batch, error) {
	b, err := parseQuery(query)
	if err != nil {
		return nil, err
	}
	var pack []map[int64]any
	if err := batchDecoder.Unmarshal(data, &pack); err != nil {
		return nil, decodeErr(err)
	}
	if len(pack) == 0 {
		return nil, batchErr(ErrMalformed, -1, "", "an empty pack")
	}
	m, s, err := b.lookup(ms)
	if err != nil {
		return nil, err
	}
	d := senmlDecoder{m: m, s: s, dest: b.Destination(), tf: timeField(s)}
	for i, rec := range pack {
		if err := d.record(rec); err != nil {
			err.Record = i
			return nil, err
		}
	}
	if d.lat != nil {
		return nil, &BatchError{Kind: ErrSenML, Reading: -1, Record: len(pack) - 1, Field: d.lat.name, Detail: "a lat record without its lon record"}
	}
	d.flush()
	if len(d.readings) == 0 {
		return nil, batchErr(ErrMalformed, -1, "", "no readings")
	}
	b.Readings = d.readings
	return b, nil
}

// senmlDecoder turns records into readings.
type senmlDecoder struct {
	m    *policy.Manifest
	s    *policy.Stream
	dest policy.Destination
	tf   string // the time field

	// Base values, which hold until a record changes them.
	bn string
	bt senmlNumber
	bv senmlNumber

	readings []policy.Reading
	cur      policy.Reading // the reading being built
	curT     time.Time
	curHasT  bool
	lat      *halfPoint // a location's lat record, awaiting its lon
}

// halfPoint is the first record of a location.
type halfPoint struct {
	name string
	t    time.Time
	hasT bool
	lat  float64
}

func (d *senmlDecoder) flush() {
	if d.cur != nil {
		d.readings = append(d.readings, d.cur)
		d.cur = nil
	}
}

// record takes one record.
func (d *senmlDecoder) record(rec map[int64]any) *BatchError {
	bad := func(kind Kind, field, format string, args ...any) *BatchError {
		return &BatchError{Kind: kind, Reading: -1, Record: -1, Field: field, Detail: fmt.Sprintf(format, args...)}
	}
	var (
		n, u             string
		hasN, hasU       bool
		t, v             senmlNumber
		hasV             bool
		vs               string
		hasVS, vb, hasVB bool
		labels           int
		ok               bool
		baseOnly         = true
		valueLabels      int
	)
	// Labels in order, so that a record with several faults always
	// reports the same one.
	var buf [16]int64
	order := buf[:0]
	for label := range rec {
		order = append(order, label)
	}
	slices.Sort(order)
	for _, label := range order {
		x := rec[label]
		labels++
		switch label {
		case labelVersion:
			if ver, isInt := integer(x); !isInt || ver != senmlVersionValue {
				return bad(ErrSenML, "", "SenML version %v, want %d", x, senmlVersionValue)
			}
		case labelBaseName:
			if d.bn, ok = x.(string); !ok {
				return bad(ErrMalformed, "", "bn is not a text string")
			}
		case labelBaseTime:
			if d.bt, ok = senmlNumberOf(x); !ok {
				return bad(ErrMalformed, "", "bt is not a number")
			}
		case labelBaseValue:
			if d.bv, ok = senmlNumberOf(x); !ok {
				return bad(ErrMalformed, "", "bv is not a number")
			}
		case labelName:
			baseOnly = false
			if n, hasN = x.(string); !hasN {
				return bad(ErrMalformed, "", "n is not a text string")
			}
		case labelUnit:
			baseOnly = false
			if u, hasU = x.(string); !hasU {
				return bad(ErrMalformed, "", "u is not a text string")
			}
		case labelTime:
			baseOnly = false
			if t, ok = senmlNumberOf(x); !ok {
				return bad(ErrMalformed, "", "t is not a number")
			}
		case labelValue:
			baseOnly, valueLabels = false, valueLabels+1
			if v, hasV = senmlNumberOf(x); !hasV {
				return bad(ErrMalformed, "", "v is not a number")
			}
		case labelString:
			baseOnly, valueLabels = false, valueLabels+1
			if vs, hasVS = x.(string); !hasVS {
				return bad(ErrMalformed, "", "vs is not a text string")
			}
		case labelBool:
			baseOnly, valueLabels = false, valueLabels+1
			if vb, hasVB = x.(bool); !hasVB {
				return bad(ErrMalformed, "", "vb is not true or false")
			}
		case labelBaseUnit:
			return bad(ErrSenML, "", "base unit (bu): units are not part of the manifest")
		case labelBaseSum, labelSum:
			return bad(ErrSenML, "", "sums (s, bs) are not mapped")
		case labelUpdateTime:
			return bad(ErrSenML, "", "update time (ut) is not mapped")
		case labelData:
			return bad(ErrSenML, "", "data values (vd) are not mapped")
		default:
			return bad(ErrSenML, "", "label %d is not mapped", label)
		}
	}
	if labels == 0 {
		return bad(ErrMalformed, "", "an empty record")
	}
	if baseOnly {
		return nil // it sets base values only
	}
	name := d.bn + n
	switch {
	case name == "":
		return bad(ErrMalformed, "", "a record without a name")
	case valueLabels != 1:
		return bad(ErrMalformed, name, "a record needs exactly one of v, vs and vb")
	}
	// The time.
	var when time.Time
	rt := d.bt.add(t)
	hasT := !rt.isZero()
	if hasT {
		if rt.float64() < senmlAbsolute {
			return bad(ErrSenML, name, "a relative time: send absolute Unix times")
		}
		if !rt.float {
			when = time.Unix(rt.i, 0).UTC()
		} else if when, ok = floatTime(rt.f); !ok {
			return bad(ErrMalformed, name, "a time out of range")
		}
		if d.tf == "" {
			return bad(ErrSenML, name, "a time, and the stream has no timestamp field")
		}
	}
	if name == d.tf && d.tf != "" {
		return bad(ErrSenML, name, "the timestamp field travels as the SenML time")
	}
	// The value, typed by the manifest.
	var raw any
	switch {
	case hasV:
		v = d.bv.add(v)
		if v.float {
			raw = v.f
		} else {
			raw = v.i
		}
	case hasVS:
		raw = vs
	case hasVB:
		raw = vb
	}
	typ, declared := d.s.OutputType(name)
	if hasU && (!declared || typ != policy.Location) {
		return bad(ErrSenML, name, "units are not part of the manifest (only lat and lon, on a location)")
	}
	if d.lat != nil && (name != d.lat.name || !hasU || u != unitLon) {
		return bad(ErrSenML, d.lat.name, "a lat record must be followed by the lon record of its location")
	}
	var value any
	switch {
	case !declared:
		_, err := typed(d.m, d.s, d.dest, name, raw)
		return err
	case typ == policy.Timestamp:
		return bad(ErrSenML, name, "a second timestamp field: SenML carries one time per record")
	case typ == policy.Location:
		if !hasV || !hasU {
			return bad(ErrSenML, name, "a location is two records with v: u \"lat\", then u \"lon\"")
		}
		if !finite(v.float64()) {
			return &BatchError{Kind: ErrRefused, Reading: -1, Record: -1, Field: name, Detail: "want a finite number",
				Err: &policy.Violation{Stream: d.s.Name, Field: name, Err: policy.ErrValue, Detail: "want a finite number"}}
		}
		switch {
		case u == unitLat && d.lat == nil:
			d.lat = &halfPoint{name: name, t: when, hasT: hasT, lat: v.float64()}
			return nil
		case u == unitLon && d.lat != nil:
			if d.lat.hasT != hasT || !d.lat.t.Equal(when) {
				return bad(ErrSenML, name, "the lat and lon records of a location have different times")
			}
			value = policy.Point{Lat: d.lat.lat, Lon: v.float64()}
			d.lat = nil
		default:
			return bad(ErrSenML, name, "a location is two records: u \"lat\", then u \"lon\"")
		}
	case typ == policy.Number && hasV && finite(v.float64()):
		value = v.float64()
	case typ == policy.Integer && hasV:
		x, ok := v.int64()
		if !ok {
			return &BatchError{Kind: ErrRefused, Reading: -1, Record: -1, Field: name, Detail: "want an integer",
				Err: &policy.Violation{Stream: d.s.Name, Field: name, Err: policy.ErrValue, Detail: "want an integer"}}
		}
		value = x
	default:
		var err *BatchError
		if value, err = typed(d.m, d.s, d.dest, name, raw); err != nil {
			return err
		}
	}
	// One reading holds consecutive records of one time, each field once.
	if _, dup := d.cur[name]; d.cur == nil || dup || d.curHasT != hasT || !d.curT.Equal(when) {
		d.flush()
		d.cur, d.curT, d.curHasT = policy.Reading{}, when, hasT
		if hasT {
			d.cur[d.tf] = when
		}
	}
	d.cur[name] = value
	return nil
}
