package identity

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// The member names the token parser reads. encoding/json matches names
// without regard to case and lets a repeated name override an earlier one;
// checkKeys refuses both, so that this parser and any other JWT reader see
// the same claims.
var (
	headerNames = []string{"alg", "typ", "crit"}
	claimNames  = []string{"iss", "sub", "aud", "iat", "exp", "nbf", "jti"}
)

var (
	errDuplicateKey = errors.New("duplicate member name")
	errKeyCase      = errors.New("member name differs from a known one only in case")
	errNotObject    = errors.New("not a JSON object")
)

// checkKeys walks the top-level members of the JSON object b and refuses a
// repeated name, a name with escapes, or a name that equals one of known
// only when case is ignored. It does not validate the rest of the JSON:
// encoding/json does that next. It never reads past b and always ends.
func checkKeys(b []byte, known []string) error {
	return walkMembers(b, known, nil)
}

// walkMembers is checkKeys that also calls found, if not nil, with the
// index in known and the raw value of every member whose name is known.
func walkMembers(b []byte, known []string, found func(k int, raw []byte) error) error {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return errNotObject
	}
	i++
	var seen [8][]byte
	names := seen[:0]
	for {
		i = skipSpace(b, i)
		if i < len(b) && b[i] == '}' {
			return nil
		}
		if i >= len(b) || b[i] != '"' {
			return errNotObject
		}
		j := i + 1
		for j < len(b) && b[j] != '"' {
			if b[j] == '\\' {
				return errors.New("escaped member name")
			}
			j++
		}
		if j >= len(b) {
			return errNotObject
		}
		name := b[i+1 : j]
		for _, n := range names {
			if string(n) == string(name) {
				return errDuplicateKey
			}
		}
		k := -1
		for ki, kn := range known {
			if string(name) == kn {
				k = ki
			} else if len(name) == len(kn) && strings.EqualFold(string(name), kn) {
				return errKeyCase
			}
		}
		names = append(names, name)
		i = skipSpace(b, j+1)
		if i >= len(b) || b[i] != ':' {
			return errNotObject
		}
		start := skipSpace(b, i+1)
		if i = skipValue(b, start); i < 0 {
			return errNotObject
		}
		if k >= 0 && found != nil {
			if err := found(k, trimSpace(b[start:i])); err != nil {
				return err
			}
		}
		i = skipSpace(b, i)
		if i < len(b) && b[i] == ',' {
			i++
			continue
		}
		if i < len(b) && b[i] == '}' {
			return nil
		}
		return errNotObject
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the index just after the JSON value starting at or
// after i, or -1. Nested arrays and objects are skipped by counting
// brackets outside strings.
func skipValue(b []byte, i int) int {
	i = skipSpace(b, i)
	depth := 0
	for i < len(b) {
		switch c := b[i]; c {
		case '"':
			i++
			for i < len(b) && b[i] != '"' {
				if b[i] == '\\' {
					i++
				}
				i++
			}
			if i >= len(b) {
				return -1
			}
			i++
		case '{', '[':
			depth++
			i++
		case '}', ']':
			if depth == 0 {
				return i
			}
			depth--
			i++
		case ',':
			if depth == 0 {
				return i
			}
			i++
		default:
			i++
		}
		if depth == 0 && i < len(b) {
			if c := b[i-1]; c == '"' || c == '}' || c == ']' {
				return i
			}
		}
	}
	if depth != 0 {
		return -1
	}
	return i
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t' || b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// decodeClaims fills c from the JSON claims b: the same result as
// encoding/json.Unmarshal into tokenClaims, for valid JSON with no
// repeated or case-variant names, without reflection.
func decodeClaims(b []byte, c *tokenClaims) error {
	if !json.Valid(b) {
		return errors.New("invalid JSON")
	}
	return walkMembers(b, claimNames, func(k int, raw []byte) error {
		var err error
		switch claimNames[k] {
		case "iss":
			c.Iss, err = jsonString(raw)
		case "sub":
			c.Sub, err = jsonString(raw)
		case "jti":
			c.Jti, err = jsonString(raw)
		case "aud":
			c.Aud = raw
		case "iat":
			c.Iat, err = jsonNumber(raw)
		case "exp":
			c.Exp, err = jsonNumber(raw)
		case "nbf":
			c.Nbf, err = jsonNumber(raw)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", claimNames[k], err)
		}
		return nil
	})
}

// jsonString decodes a JSON string value; raw is valid JSON.
func jsonString(raw []byte) (string, error) {
	n := len(raw)
	if n >= 2 && raw[0] == '"' && bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1 : n-1]), nil
	}
	if n == 0 || raw[0] != '"' {
		return "", errors.New("not a string")
	}
	var s string
	err := json.Unmarshal(raw, &s)
	return s, err
}

// jsonNumber decodes a JSON number value; raw is valid JSON, so a value
// that starts like a number follows the JSON number grammar.
func jsonNumber(raw []byte) (*float64, error) {
	if len(raw) == 0 || !(raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9') {
		return nil, errors.New("not a number")
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil {
		return nil, err
	}
	return &f, nil
}
