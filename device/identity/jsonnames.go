package identity

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
)

// The top-level names of a token's header and claims that this package
// reads or refuses. encoding/json, which golang-jwt decodes with, matches a
// struct field without regard to case, with Unicode folding ("ſub" is sub),
// where other JWT readers match exactly; checkNames refuses a name that
// equals one of these only when case is ignored, so that every reader sees
// the same claims.
var (
	headerNames = []string{"alg", "typ", "crit", "kid", "jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256"}
	claimNames  = []string{"iss", "sub", "aud", "iat", "exp", "nbf", "jti"}
)

// maxJSONDepth bounds the nesting of arrays and objects in a token's header
// and claims. A device token nests nothing; the bound keeps hostile input
// from costing more than its length.
const maxJSONDepth = 16

var (
	errDuplicateName = errors.New("duplicate member name")
	errNameCase      = errors.New("member name differs from a known one only in case")
	errEscapedName   = errors.New("member name written with escapes")
	errNotObject     = errors.New("not a JSON object")
	errTooDeep       = errors.New("arrays and objects nested too deeply")
	errTrailingData  = errors.New("data after the JSON object")
)

// checkNames reads the JSON object b in one pass and refuses what
// encoding/json accepts but other readers may read differently: a member
// name repeated within one object (encoding/json keeps the last value,
// other readers the first or an error), a member name written with escapes,
// and at the top level a name equal to one of known only when case is
// ignored. It also refuses nesting deeper than maxJSONDepth and anything
// after the object. For each top-level member it calls top, if not nil,
// with the name and the first token of the value: a string, a json.Number,
// a bool, nil, or the json.Delim that opens an array or object.
//
// Time and memory are linear in len(b): each object's names go in a set of
// its own.
func checkNames(b []byte, known []string, top func(name string, value json.Token) error) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil {
		return err
	} else if t != json.Delim('{') {
		return errNotObject
	}
	// One level per open array or object; names is nil for an array.
	type level struct {
		names    map[string]struct{}
		wantName bool // the next token is a member name or the closing brace
	}
	stack := []level{{names: make(map[string]struct{}), wantName: true}}
	var topName string
	for len(stack) > 0 {
		start := dec.InputOffset()
		t, err := dec.Token()
		if err != nil {
			return err
		}
		l := &stack[len(stack)-1]
		if l.wantName {
			if t == json.Delim('}') {
				stack = stack[:len(stack)-1]
				continue
			}
			name, ok := t.(string)
			if !ok {
				return errNotObject
			}
			// The token's bytes are the name, in quotes, after any
			// comma and white space.
			if bytes.IndexByte(b[start:dec.InputOffset()], '\\') >= 0 {
				return errEscapedName
			}
			if _, dup := l.names[name]; dup {
				return errDuplicateName
			}
			l.names[name] = struct{}{}
			if len(stack) == 1 {
				for _, k := range known {
					if name != k && strings.EqualFold(name, k) {
						return errNameCase
					}
				}
				topName = name
			}
			l.wantName = false
			continue
		}
		l.wantName = l.names != nil
		if len(stack) == 1 && top != nil {
			if err := top(topName, t); err != nil {
				return err
			}
		}
		switch t {
		case json.Delim('{'), json.Delim('['):
			if len(stack) >= maxJSONDepth {
				return errTooDeep
			}
			next := level{}
			if t == json.Delim('{') {
				next = level{names: make(map[string]struct{}), wantName: true}
			}
			stack = append(stack, next)
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
	}
	if _, err := dec.Token(); err != io.EOF {
		return errTrailingData
	}
	return nil
}
