package policy

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"
)

// categories is the data-category taxonomy manifests draw from, in the
// dotted style of fideslang. A field's category is one of these or a
// refinement of one ("device.sensor.camera.pest" refines
// "device.sensor.camera").
var categories = []string{
	"device.diagnostics", "device.identifier", "device.map", "device.settings", "device.usage",
	"device.sensor.air", "device.sensor.camera", "device.sensor.humidity", "device.sensor.occupancy",
	"device.sensor.power", "device.sensor.sound", "device.sensor.temperature",
	"user.behavior", "user.contact", "user.identifier", "user.location", "user.sensor.camera",
	"system.operations",
}

// KnownCategory reports whether c is in the taxonomy or refines an entry.
func KnownCategory(c string) bool {
	for _, k := range categories {
		if c == k || strings.HasPrefix(c, k+".") && validName.MatchString(c[len(k)+1:]) {
			return true
		}
	}
	return false
}

var validName = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$`)
var validIdent = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,63}$`)

// transformTypes says which field types each transform fits.
var transformTypes = map[string][]Type{
	"drop":             {Number, Integer, String, Bool, Timestamp, Location},
	"keep":             {Number, Integer, String, Bool, Timestamp, Location},
	"round":            {Number, Integer},
	"clamp":            {Number, Integer},
	"bucketize":        {Number, Integer},
	"coarsen_time":     {Timestamp},
	"coarsen_location": {Location},
	"pseudonymize":     {String},
}

var aggregateFuncs = []string{"count", "sum", "mean", "min", "max"}

// Validate checks the manifest and returns its first problem as a
// *ManifestError (without a line: see Parse), or nil.
func (m *Manifest) Validate() error {
	if errs := m.validate(); len(errs) > 0 {
		return errs[0]
	}
	return nil
}

func (m *Manifest) validate() []*ManifestError {
	var errs []*ManifestError
	bad := func(path, format string, args ...any) {
		errs = append(errs, &ManifestError{Path: path, Problem: fmt.Sprintf(format, args...)})
	}
	if m.Product == "" {
		bad("product", "missing")
	}
	if m.Version == "" {
		bad("version", "missing")
	}
	// Durations read from JSON or CBOR are in range already; one set in
	// Go may not be.
	checkDur := func(path string, d Duration) {
		if err := checkDuration(time.Duration(d), true, time.Duration(d).String()); err != nil {
			bad(path, "%v", err)
		} else if time.Duration(d)%time.Second != 0 {
			bad(path, "durations are whole seconds")
		}
	}
	if len(m.Streams) == 0 {
		bad("streams", "no stream declared")
	}
	seen := map[string]bool{}
	for i := range m.Streams {
		s := &m.Streams[i]
		p := fmt.Sprintf("streams[%d]", i)
		switch {
		case !validIdent.MatchString(s.Name):
			bad(p+".name", "%q is not a stream name (lower case, digits, - and _)", s.Name)
		case seen[s.Name]:
			bad(p+".name", "duplicate stream %q", s.Name)
		}
		seen[s.Name] = true
		if len(s.Purposes) == 0 {
			bad(p+".purposes", "missing purpose: say what the stream is for")
		}
		if len(s.Fields) == 0 {
			bad(p+".fields", "no field declared")
		}
		fields := map[string]Type{}
		for j := range s.Fields {
			f := &s.Fields[j]
			fp := fmt.Sprintf("%s.fields[%d]", p, j)
			if !validIdent.MatchString(f.Name) {
				bad(fp+".name", "%q is not a field name", f.Name)
			} else if _, dup := fields[f.Name]; dup {
				bad(fp+".name", "duplicate field %q", f.Name)
			}
			fields[f.Name] = f.Type
			if !slices.Contains(transformTypes["keep"], f.Type) {
				bad(fp+".type", "unknown type %q (want number, integer, string, bool, timestamp or location)", f.Type)
			}
			if !KnownCategory(f.Category) {
				bad(fp+".category", "unknown category %q", f.Category)
			}
			n := 0
			for t, tp := &f.Transform, fp+".transform"; t != nil; t, tp = t.Then, tp+".then" {
				if n++; n > 3 {
					bad(tp, "a chain of at most 3 transforms")
					break
				}
				checkTransform(t, f.Type, tp, bad)
			}
		}
		checkDur(p+".cloud_retention", s.CloudRetention)
		checkDur(p+".device_retention", s.DeviceRetention)
		if s.Aggregate != nil {
			checkDur(p+".aggregate.window", s.Aggregate.Window)
		}
		for j := range s.Fields {
			for t := &s.Fields[j].Transform; t != nil; t = t.Then {
				checkDur(fmt.Sprintf("%s.fields[%d].transform.bucket", p, j), t.Bucket)
			}
		}
		if len(s.Destinations) > 0 && s.Consent == "" && !s.Contract {
			bad(p+".consent", "a stream that leaves the device needs a consent purpose or contract as its legal basis")
		}
		if s.Consent != "" && s.Contract {
			bad(p+".contract", "a stream has one legal basis: consent or contract, not both")
		}
		dests := map[string]bool{}
		for j, d := range s.Destinations {
			dp := fmt.Sprintf("%s.destinations[%d]", p, j)
			key := d.To + "/" + d.Partner
			switch {
			case d.To == "cloud" && d.Partner != "":
				bad(dp+".partner", "the cloud destination names no partner")
			case d.To == "partner" && !validIdent.MatchString(d.Partner):
				bad(dp+".partner", "a partner destination needs a partner name")
			case d.To == "partner" && d.Consent == "":
				bad(dp+".consent", "a partner destination needs a consent purpose")
			case d.To != "cloud" && d.To != "partner":
				bad(dp+".to", "unknown destination %q (want cloud or partner; data for the device only has no destination)", d.To)
			case dests[key]:
				bad(dp, "duplicate destination")
			}
			dests[key] = true
		}
		if a := s.Aggregate; a != nil {
			ap := p + ".aggregate"
			switch {
			case a.Window <= 0:
				bad(ap+".window", "a window must be positive")
			case !slices.Contains(aggregateFuncs, a.Func):
				bad(ap+".func", "unknown aggregate %q (want count, sum, mean, min or max)", a.Func)
			case a.Func != "count" && fields[a.Field] != Number && fields[a.Field] != Integer:
				bad(ap+".field", "%q is not a numeric field of the stream", a.Field)
			case a.Func != "count" && fieldOfStream(s, a.Field).Transform.Op == "drop":
				bad(ap+".field", "%q is dropped: nothing to aggregate", a.Field)
			case a.Func != "count" && fieldOfStream(s, a.Field).Transform.Op == "bucketize":
				bad(ap+".field", "%q is bucketized: aggregate the value, not its bucket", a.Field)
			case a.MinSamples < 0:
				bad(ap+".min_samples", "must not be negative")
			}
		}
	}
	return errs
}

func checkTransform(t *Transform, typ Type, p string, bad func(string, string, ...any)) {
	fits, ok := transformTypes[t.Op]
	if !ok {
		bad(p+".op", "unknown transform %q", t.Op)
		return
	}
	if !slices.Contains(fits, typ) {
		bad(p+".op", "%s does not fit a %s field", t.Op, typ)
		return
	}
	if t.Then != nil && t.Op != "clamp" {
		// Every chain must leave values its own check accepts: round,
		// coarsening and pseudonyms are fixed points, and only clamping
		// may come before another step.
		bad(p+".then", "only clamp may be followed by another transform")
	}
	switch t.Op {
	case "round":
		if !(t.Step > 0) || math.IsInf(t.Step, 0) {
			bad(p+".step", "round needs a positive step")
		}
	case "clamp":
		if t.Min == nil || t.Max == nil || !(*t.Min < *t.Max) {
			bad(p, "clamp needs min < max")
		}
	case "bucketize":
		if len(t.Bounds) == 0 || !slices.IsSorted(t.Bounds) || len(slices.Compact(slices.Clone(t.Bounds))) != len(t.Bounds) {
			bad(p+".bounds", "bucketize needs strictly ascending bounds")
		}
	case "coarsen_time":
		if t.Bucket <= 0 {
			bad(p+".bucket", "coarsen_time needs a positive bucket")
		}
	case "coarsen_location":
		switch {
		case t.Decimals != 0 && t.Geohash != 0:
			bad(p, "coarsen_location takes decimals or geohash, not both")
		case t.Geohash == 0 && (t.Decimals < 0 || t.Decimals > 6):
			bad(p+".decimals", "decimals from 0 to 6")
		case t.Decimals == 0 && t.Geohash != 0 && (t.Geohash < 1 || t.Geohash > 12):
			bad(p+".geohash", "geohash precision from 1 to 12")
		}
	case "pseudonymize":
		if !validIdent.MatchString(t.KeyID) {
			bad(p+".key_id", "pseudonymize needs a key_id of lower-case letters, digits, - and _ (for rotation)")
		}
	}
}
