package policy

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// An Aggregator turns the readings of a stream with an Aggregate into one
// output per window: count, sum, mean, min or max of the aggregated field,
// the window's start in the stream's timestamp field, and nothing else.
// A window built from fewer than MinSamples readings is suppressed. It is
// safe for concurrent use.
type Aggregator struct {
	e      *Enforcer
	s      *Stream
	tsName string // the stream's timestamp field, if any

	mu      sync.Mutex
	windows map[int64]*window // window start (Unix ns) → running values
}

type window struct {
	n             int
	sum, min, max float64
}

// Aggregator returns an aggregator for stream, which must declare an
// Aggregate.
func (e *Enforcer) Aggregator(stream string) (*Aggregator, error) {
	s, ok := e.m.Stream(stream)
	if !ok {
		return nil, &Violation{Stream: stream, Err: ErrUndeclaredStream}
	}
	if s.Aggregate == nil {
		return nil, fmt.Errorf("policy: stream %q declares no aggregate", stream)
	}
	a := &Aggregator{e: e, s: s, windows: make(map[int64]*window)}
	for _, f := range s.Fields {
		if f.Type == Timestamp {
			a.tsName = f.Name
			break
		}
	}
	return a, nil
}

// Add counts reading r, taken at time at, into its window.
func (a *Aggregator) Add(at time.Time, r Reading) error {
	agg := a.s.Aggregate
	x := 1.0
	if agg.Func != "count" {
		v, ok := r[agg.Field]
		if !ok {
			return &Violation{Stream: a.s.Name, Field: agg.Field, Err: ErrValue, Detail: "missing"}
		}
		// Each sample gets its field's transform first, so that no
		// aggregate (a max over one sample, say) is finer than the field.
		f := fieldOfStream(a.s, agg.Field)
		in, err := valueOf(v, f.Type)
		if err != nil {
			return &Violation{Stream: a.s.Name, Field: agg.Field, Err: ErrValue, Detail: err.Error()}
		}
		tv, _, err := a.e.transform(a.s, f, in)
		if err != nil {
			return err
		}
		if x, err = tv.number(); err != nil {
			return &Violation{Stream: a.s.Name, Field: agg.Field, Err: ErrValue, Detail: err.Error()}
		}
	}
	start := at.Truncate(time.Duration(agg.Window)).UnixNano()
	a.mu.Lock()
	defer a.mu.Unlock()
	w := a.windows[start]
	if w == nil {
		w = &window{min: math.Inf(1), max: math.Inf(-1)}
		a.windows[start] = w
	}
	w.n++
	w.sum += x
	w.min = math.Min(w.min, x)
	w.max = math.Max(w.max, x)
	return nil
}

// Flush returns the outputs of every window that ended by now, oldest
// first, and forgets those windows. Suppressed windows yield nothing.
func (a *Aggregator) Flush(now time.Time) []*Output {
	agg := a.s.Aggregate
	win := time.Duration(agg.Window)
	a.mu.Lock()
	var done []int64
	for start := range a.windows {
		if !time.Unix(0, start).Add(win).After(now) {
			done = append(done, start)
		}
	}
	slices.Sort(done)
	ws := make([]*window, len(done))
	for i, start := range done {
		ws[i] = a.windows[start]
		delete(a.windows, start)
	}
	a.mu.Unlock()
	var outs []*Output
	for i, w := range ws {
		if w.n < agg.MinSamples {
			continue
		}
		var v float64
		switch agg.Func {
		case "count":
			v = float64(w.n)
		case "sum":
			v = w.sum
		case "mean":
			v = w.sum / float64(w.n)
		case "min":
			v = w.min
		case "max":
			v = w.max
		}
		fields := Reading{a.valueName(): a.aggregateValue(v)}
		if a.tsName != "" {
			fields[a.tsName] = time.Unix(0, done[i]).UTC()
		}
		outs = append(outs, &Output{Stream: a.s.Name, Fields: fields, Destinations: a.s.Destinations})
	}
	return outs
}

// valueName is the output field of the aggregate: the aggregated field,
// or "count".
func (a *Aggregator) valueName() string {
	if a.s.Aggregate.Func == "count" {
		return "count"
	}
	return a.s.Aggregate.Field
}

// aggregateValue types the aggregate: an integer count, or a number.
func (a *Aggregator) aggregateValue(v float64) any {
	if a.s.Aggregate.Func == "count" {
		return int64(v)
	}
	return v
}

// checkAggregate is Check for a stream with an Aggregate: the aggregate
// value and the window start, nothing else.
func checkAggregate(s *Stream, fields Reading) error {
	agg := s.Aggregate
	name := agg.Field
	if agg.Func == "count" {
		name = "count"
	}
	viol := func(field string, err error, format string, args ...any) error {
		return &Violation{Stream: s.Name, Field: field, Err: err, Detail: fmt.Sprintf(format, args...)}
	}
	for k, v := range fields {
		switch {
		case k == name:
			if agg.Func == "count" {
				if n, ok := v.(int64); !ok || n < int64(agg.MinSamples) {
					return viol(k, ErrPrecision, "want a count of at least %d", agg.MinSamples)
				}
			} else if x, err := num(v); err != nil {
				return viol(k, ErrValue, "%v", err)
			} else if agg.Func == "min" || agg.Func == "max" {
				// A min or max is one of the samples, each on its
				// field's grid.
				f := fieldOfStream(s, name)
				got := Value{Type: Number, Num: x}
				for t := &f.Transform; t != nil; t = t.Then {
					if got, _, err = t.apply(got, pseudonyms{}); err != nil {
						return viol(k, ErrValue, "%v", err)
					}
				}
				if !sameValue(got.Num, x) {
					return viol(k, ErrPrecision, "%v is finer than %s allows", x, f.Transform.Op)
				}
			}
		case k != "" && isTimestampField(s, k):
			ts, ok := v.(time.Time)
			if !ok || !ts.Equal(ts.Truncate(time.Duration(agg.Window))) {
				return viol(k, ErrPrecision, "want the start of a %s window", time.Duration(agg.Window))
			}
		default:
			if slices.ContainsFunc(s.Fields, func(f Field) bool { return f.Name == k }) {
				return viol(k, ErrPrecision, "only the %s of %s leaves, per window", agg.Func, name)
			}
			return viol(k, ErrUndeclaredField, "")
		}
	}
	return nil
}

func isTimestampField(s *Stream, name string) bool {
	return slices.ContainsFunc(s.Fields, func(f Field) bool { return f.Name == name && f.Type == Timestamp })
}

// ErrAggregated means a stream declared with an Aggregate was applied
// reading by reading; it leaves only through an Aggregator.
var ErrAggregated = errors.New("policy: stream is aggregated")
