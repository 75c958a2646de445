package protocol_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

// This file checks the golden vectors against the CDDL of
// docs/protocol.md, with a validator for the part of CDDL (RFC 8610) the
// document uses: rules, type and group choices, maps and arrays with
// occurrences, member keys by value or type, literals, ranges, the .size
// and .ge controls, & enumerations, and the prelude types. It keeps the
// document's schema and the encodings the tests check from drifting
// apart.

// ---- parsing ----

type cddlKind int

const (
	kChoice cddlKind = iota // alts
	kName                   // name
	kLit                    // lit
	kRange                  // lo, hi
	kCtl                    // base, ctl, arg
	kMap                    // group
	kArray                  // group
	kEnum                   // group: its values are the choices
)

type cddlType struct {
	kind   cddlKind
	alts   []*cddlType
	name   string
	lit    any // int64, string or bool
	lo, hi int64
	base   *cddlType
	ctl    string
	arg    *cddlType
	group  *cddlGroup
}

// A group is a choice of sequences of entries.
type cddlGroup struct {
	alts [][]*cddlEntry
}

type cddlEntry struct {
	min, max int // occurrences; max -1 for many
	key      *cddlType
	typ      *cddlType
	group    *cddlGroup // a parenthesized group instead of key and typ
}

type cddlParser struct {
	toks []string
	pos  int
}

func tokenize(src string) []string {
	var toks []string
	lines := strings.Split(src, "\n")
	for _, l := range lines {
		if i := strings.IndexByte(l, ';'); i >= 0 {
			l = l[:i]
		}
		for i := 0; i < len(l); {
			c := l[i]
			switch {
			case c == ' ' || c == '\t':
				i++
			case c == '"':
				j := i + 1
				for j < len(l) && l[j] != '"' {
					j++
				}
				toks = append(toks, l[i:j+1])
				i = j + 1
			case strings.HasPrefix(l[i:], "=>"), strings.HasPrefix(l[i:], "//"), strings.HasPrefix(l[i:], ".."):
				toks = append(toks, l[i:i+2])
				i += 2
			case c == '.' && i+1 < len(l) && l[i+1] >= 'a' && l[i+1] <= 'z':
				j := i + 1
				for j < len(l) && l[j] >= 'a' && l[j] <= 'z' {
					j++
				}
				toks = append(toks, l[i:j])
				i = j
			case strings.ContainsRune("{}[](),:=/?*+&", rune(c)):
				toks = append(toks, string(c))
				i++
			default:
				j := i
				for j < len(l) && (isWordByte(l[j]) || (j == i && l[j] == '-')) {
					j++
				}
				if j == i {
					panic(fmt.Sprintf("cddl: unexpected %q", l[i:]))
				}
				toks = append(toks, l[i:j])
				i = j
			}
		}
	}
	return toks
}

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

func (p *cddlParser) peek() string {
	if p.pos < len(p.toks) {
		return p.toks[p.pos]
	}
	return ""
}

func (p *cddlParser) next() string { t := p.peek(); p.pos++; return t }

func (p *cddlParser) expect(t string) {
	if got := p.next(); got != t {
		panic(fmt.Sprintf("cddl: want %q, got %q at token %d", t, got, p.pos))
	}
}

// parseRules parses "name = type" rules; a rule ends where the next
// "name =" begins.
func parseRules(src string) map[string]*cddlType {
	p := &cddlParser{toks: tokenize(src)}
	rules := map[string]*cddlType{}
	for p.peek() != "" {
		name := p.next()
		p.expect("=")
		rules[name] = p.parseType()
	}
	return rules
}

func (p *cddlParser) atRuleStart() bool {
	return p.pos+1 < len(p.toks) && p.toks[p.pos+1] == "=" && isName(p.toks[p.pos])
}

func isName(t string) bool {
	return t != "" && (t[0] >= 'a' && t[0] <= 'z' || t[0] >= 'A' && t[0] <= 'Z')
}

func (p *cddlParser) parseType() *cddlType {
	alts := []*cddlType{p.parseType1()}
	for p.peek() == "/" {
		p.next()
		alts = append(alts, p.parseType1())
	}
	if len(alts) == 1 {
		return alts[0]
	}
	return &cddlType{kind: kChoice, alts: alts}
}

func (p *cddlParser) parseType1() *cddlType {
	t := p.parseType2()
	switch tok := p.peek(); {
	case tok == "..":
		p.next()
		hi := p.parseType2()
		return &cddlType{kind: kRange, lo: t.lit.(int64), hi: hi.lit.(int64)}
	case strings.HasPrefix(tok, ".") && len(tok) > 1:
		p.next()
		return &cddlType{kind: kCtl, base: t, ctl: tok, arg: p.parseType2()}
	}
	return t
}

func (p *cddlParser) parseType2() *cddlType {
	tok := p.next()
	switch {
	case tok == "{":
		g := p.parseGroup("}")
		return &cddlType{kind: kMap, group: g}
	case tok == "[":
		g := p.parseGroup("]")
		return &cddlType{kind: kArray, group: g}
	case tok == "&":
		p.expect("(")
		return &cddlType{kind: kEnum, group: p.parseGroup(")")}
	case tok == "(":
		t := p.parseType()
		p.expect(")")
		return t
	case tok == "true" || tok == "false":
		return &cddlType{kind: kLit, lit: tok == "true"}
	case strings.HasPrefix(tok, `"`):
		return &cddlType{kind: kLit, lit: strings.Trim(tok, `"`)}
	case tok[0] == '-' || tok[0] >= '0' && tok[0] <= '9':
		n, err := strconv.ParseInt(tok, 10, 64)
		if err != nil {
			panic(fmt.Sprintf("cddl: number %q: %v", tok, err))
		}
		return &cddlType{kind: kLit, lit: n}
	}
	return &cddlType{kind: kName, name: tok}
}

// parseGroup parses entries up to the closing token.
func (p *cddlParser) parseGroup(end string) *cddlGroup {
	g := &cddlGroup{alts: [][]*cddlEntry{nil}}
	for {
		switch p.peek() {
		case end:
			p.next()
			return g
		case ",":
			p.next()
			continue
		case "//":
			p.next()
			g.alts = append(g.alts, nil)
			continue
		}
		e := &cddlEntry{min: 1, max: 1}
		switch p.peek() {
		case "?":
			e.min, e.max = 0, 1
			p.next()
		case "*":
			e.min, e.max = 0, -1
			p.next()
		case "+":
			e.min, e.max = 1, -1
			p.next()
		}
		if p.peek() == "(" {
			p.next()
			e.group = p.parseGroup(")")
		} else {
			start := p.pos
			t := p.parseType1()
			switch p.peek() {
			case "=>":
				p.next()
				e.key, e.typ = t, p.parseType()
			case ":":
				p.next()
				if t.kind == kName { // a bare word names the member
					t = &cddlType{kind: kLit, lit: t.name}
				}
				e.key, e.typ = t, p.parseType()
			default:
				p.pos = start
				e.typ = p.parseType()
			}
		}
		last := len(g.alts) - 1
		g.alts[last] = append(g.alts[last], e)
	}
}

// ---- validating ----

type cddlSchema map[string]*cddlType

func (s cddlSchema) match(t *cddlType, v any) error {
	switch t.kind {
	case kChoice:
		var errs []string
		for _, a := range t.alts {
			err := s.match(a, v)
			if err == nil {
				return nil
			}
			errs = append(errs, err.Error())
		}
		return fmt.Errorf("no choice fits %v: %s", short(v), strings.Join(errs, " | "))
	case kName:
		return s.matchName(t.name, v)
	case kLit:
		if n, ok := toInt(v); ok {
			if l, ok := t.lit.(int64); ok && l == n {
				return nil
			}
		} else if v == t.lit {
			return nil
		}
		return fmt.Errorf("%v is not %v", short(v), t.lit)
	case kRange:
		if n, ok := toInt(v); ok && n >= t.lo && n <= t.hi {
			return nil
		}
		return fmt.Errorf("%v not in %d..%d", short(v), t.lo, t.hi)
	case kCtl:
		if err := s.match(t.base, v); err != nil {
			return err
		}
		switch t.ctl {
		case ".size":
			var n int64
			switch x := v.(type) {
			case []byte:
				n = int64(len(x))
			case string:
				n = int64(len(x))
			default:
				return fmt.Errorf(".size of %T", v)
			}
			return s.match(t.arg, n)
		case ".ge":
			n, _ := toInt(v)
			if n < t.arg.lit.(int64) {
				return fmt.Errorf("%d < %v", n, t.arg.lit)
			}
			return nil
		}
		return fmt.Errorf("unknown control %s", t.ctl)
	case kEnum:
		for _, alt := range t.group.alts {
			for _, e := range alt {
				if s.match(e.typ, v) == nil {
					return nil
				}
			}
		}
		return fmt.Errorf("%v is not one of the enumeration", short(v))
	case kMap:
		m, ok := v.(map[any]any)
		if !ok {
			return fmt.Errorf("want a map, got %v", short(v))
		}
		rest := map[any]any{}
		for k, x := range m {
			rest[k] = x
		}
		if err := s.matchMapGroup(t.group, rest); err != nil {
			return err
		}
		for k := range rest {
			return fmt.Errorf("map key %v is not in the schema", short(k))
		}
		return nil
	case kArray:
		a, ok := v.([]any)
		if !ok {
			return fmt.Errorf("want an array, got %v", short(v))
		}
		n, err := s.matchArrayGroup(t.group, a)
		if err != nil {
			return err
		}
		if n != len(a) {
			return fmt.Errorf("array of %d elements, the schema takes %d", len(a), n)
		}
		return nil
	}
	return fmt.Errorf("unknown kind %d", t.kind)
}

func (s cddlSchema) matchName(name string, v any) error {
	ok := false
	switch name {
	case "any":
		ok = true
	case "uint":
		_, ok = v.(uint64)
	case "nint":
		x, isInt := v.(int64)
		ok = isInt && x < 0
	case "int":
		_, ok = toInt(v)
		if _, big := v.(uint64); big {
			ok = true
		}
	case "float":
		_, ok = v.(float64)
	case "number":
		return s.match(&cddlType{kind: kChoice, alts: []*cddlType{{kind: kName, name: "int"}, {kind: kName, name: "float"}}}, v)
	case "bool":
		_, ok = v.(bool)
	case "tstr", "text":
		_, ok = v.(string)
	case "bstr", "bytes":
		_, ok = v.([]byte)
	default:
		t, defined := s[name]
		if !defined {
			return fmt.Errorf("rule %q is not defined", name)
		}
		if err := s.match(t, v); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	}
	if !ok {
		return fmt.Errorf("%v is not a %s", short(v), name)
	}
	return nil
}

// matchMapGroup consumes from rest the entries group takes.
func (s cddlSchema) matchMapGroup(g *cddlGroup, rest map[any]any) error {
	var errs []string
	for _, alt := range g.alts {
		try := map[any]any{}
		for k, v := range rest {
			try[k] = v
		}
		err := s.matchMapEntries(alt, try)
		if err == nil {
			clear(rest)
			for k, v := range try {
				rest[k] = v
			}
			return nil
		}
		errs = append(errs, err.Error())
	}
	return errors.New(strings.Join(errs, " // "))
}

func (s cddlSchema) matchMapEntries(entries []*cddlEntry, rest map[any]any) error {
	for _, e := range entries {
		if e.group != nil {
			before := len(rest)
			err := s.matchMapGroup(e.group, rest)
			if err != nil && !(e.min == 0 && len(rest) == before) {
				return err
			}
			continue
		}
		n := 0
		for k, v := range rest {
			if e.max >= 0 && n >= e.max {
				break
			}
			if s.match(e.key, k) != nil {
				continue
			}
			if err := s.match(e.typ, v); err != nil {
				return fmt.Errorf("key %v: %w", short(k), err)
			}
			delete(rest, k)
			n++
		}
		if n < e.min {
			return fmt.Errorf("missing key %v", e.key.lit)
		}
	}
	return nil
}

// matchArrayGroup matches a prefix of a and returns its length.
func (s cddlSchema) matchArrayGroup(g *cddlGroup, a []any) (int, error) {
	var errs []string
	for _, alt := range g.alts {
		i := 0
		var err error
		for _, e := range alt {
			n := 0
			for i < len(a) && (e.max < 0 || n < e.max) && s.match(e.typ, a[i]) == nil {
				i++
				n++
			}
			if n < e.min {
				if i < len(a) {
					err = fmt.Errorf("element %d: %w", i, s.match(e.typ, a[i]))
				} else {
					err = fmt.Errorf("too few elements")
				}
				break
			}
		}
		if err == nil {
			return i, nil
		}
		errs = append(errs, err.Error())
	}
	return 0, errors.New(strings.Join(errs, " // "))
}

func toInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int64:
		return x, true
	case uint64:
		if x <= 1<<63-1 {
			return int64(x), true
		}
	}
	return 0, false
}

func short(v any) string {
	s := fmt.Sprintf("%v", v)
	if len(s) > 60 {
		s = s[:60] + "..."
	}
	return s
}

// ---- the test ----

// docSchema returns the rules of every cddl block of docs/protocol.md.
func docSchema(t *testing.T) cddlSchema {
	t.Helper()
	b, err := os.ReadFile(protocolDoc)
	if err != nil {
		t.Fatal(err)
	}
	var src strings.Builder
	for _, block := range strings.Split(string(b), "```cddl\n")[1:] {
		end := strings.Index(block, "```")
		src.WriteString(block[:end])
	}
	return cddlSchema(parseRules(src.String()))
}

// decodeAny decodes CBOR keeping what CDDL tells apart: unsigned and
// negative integers, floats, byte and text strings, tags.
func decodeAny(t *testing.T, data []byte) any {
	t.Helper()
	var v any
	if err := cbor.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// coseParts returns the payload of a tagged COSE_Sign1 message.
func cosePayload(t *testing.T, msg []byte) any {
	t.Helper()
	tag, ok := decodeAny(t, msg).(cbor.Tag)
	if !ok || tag.Number != 18 {
		t.Fatalf("not a tagged COSE_Sign1 message")
	}
	parts := tag.Content.([]any)
	if len(parts) != 4 {
		t.Fatalf("COSE_Sign1 of %d parts", len(parts))
	}
	return decodeAny(t, parts[2].([]byte))
}

func TestGoldenVectorsFitTheDocumentCDDL(t *testing.T) {
	schema := docSchema(t)
	rule := func(v string) string {
		switch {
		case v == "auth-token":
			return "token"
		case strings.HasPrefix(v, "enroll-response"):
			return "enrollment"
		case strings.HasPrefix(v, "enroll-"):
			return "enroll-request"
		case strings.HasPrefix(v, "telemetry-senml"):
			return "senml-pack"
		case strings.HasPrefix(v, "telemetry-ack"):
			return "ack"
		case strings.HasPrefix(v, "telemetry-"):
			return "batch"
		case strings.HasPrefix(v, "state-desired"):
			return "desired"
		case v == "state-reported":
			return "reported"
		case strings.HasPrefix(v, "command-result"):
			return "command-result"
		case v == "consent-list":
			return "consents"
		case v == "consent-receipt":
			return "receipt"
		}
		return v
	}
	for _, v := range vectors(t) {
		data := readFile(t, filepath.Join("testdata", v.name+".cbor"))
		value := decodeAny(t, data)
		if v.name == "consent-record" {
			if err := schema.matchName("consent-record", cosePayload(t, data)); err != nil {
				t.Errorf("%s payload: %v", v.name, err)
			}
			continue
		}
		if err := schema.matchName(rule(v.name), value); err != nil {
			t.Errorf("%s does not fit %s: %v", v.name, rule(v.name), err)
		}
		switch v.name {
		case "manifest-response":
			signed := value.(map[any]any)[uint64(1)].([]byte)
			if err := schema.matchName("manifest", cosePayload(t, signed)); err != nil {
				t.Errorf("the signed manifest does not fit: %v", err)
			}
		case "consent-list":
			for _, r := range value.(map[any]any)[uint64(2)].([]any) {
				if err := schema.matchName("consent-record", cosePayload(t, r.([]byte))); err != nil {
					t.Errorf("a listed record does not fit: %v", err)
				}
			}
		}
	}
	// The validator refuses what does not fit.
	for _, tc := range []struct {
		rule string
		v    any
	}{
		{"batch", map[any]any{uint64(1): make([]byte, 32), uint64(2): "s", uint64(3): []any{uint64(1), uint64(1)}}},
		{"batch", map[any]any{uint64(1): make([]byte, 31), uint64(2): "s", uint64(3): []any{uint64(1), uint64(1)}, uint64(5): []any{map[any]any{"a": uint64(1)}}}},
		{"batch", map[any]any{uint64(1): make([]byte, 32), uint64(2): "s", uint64(3): []any{uint64(0), uint64(1)}, uint64(5): []any{map[any]any{"a": uint64(1)}}}},
		{"batch", map[any]any{uint64(1): make([]byte, 32), uint64(2): "s", uint64(3): []any{uint64(1), uint64(1)}, uint64(5): []any{map[any]any{"a": uint64(1)}}, uint64(6): true}},
		{"ack", map[any]any{uint64(1): []any{uint64(1), uint64(1)}, uint64(2): uint64(1), uint64(3): false}},
		{"timestamp", []any{uint64(1), uint64(1_000_000_000)}},
		{"senml-record", map[any]any{uint64(2): 1.0, uint64(3): "x"}},
		{"senml-record", map[any]any{uint64(1): "W", uint64(2): 1.0}},
		{"command-result", map[any]any{uint64(1): make([]byte, 16), uint64(2): uint64(5)}},
		{"setting-value", []any{}},
	} {
		if err := schema.matchName(tc.rule, tc.v); err == nil {
			t.Errorf("%s accepted %v", tc.rule, tc.v)
		}
	}
}
