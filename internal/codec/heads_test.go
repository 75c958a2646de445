package codec_test

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// This file holds a small CBOR head walker, written from RFC 8949 §3 and
// Appendix C and independent of the CBOR library, so that tests can check
// what an input really contains: whether it is one well-formed item, and
// whether it uses an indefinite length or a tag anywhere.

var (
	errWalkTruncated = errors.New("truncated")
	errWalkInvalid   = errors.New("not well-formed")
)

// headScan is what scanHeads found.
type headScan struct {
	indefinite bool // an indefinite-length string, array or map
	tag        bool // a tag (major type 6)
}

// scanHeads walks data, which must be exactly one well-formed CBOR item.
func scanHeads(data []byte) (headScan, error) {
	var s headScan
	off, err := s.item(data, 0)
	if err == nil && off != len(data) {
		err = errWalkInvalid // trailing bytes
	}
	return s, err
}

// item walks the data item at off and returns the offset after it.
func (s *headScan) item(b []byte, off int) (int, error) {
	if off >= len(b) {
		return 0, errWalkTruncated
	}
	major, ai := b[off]>>5, b[off]&0x1f
	off++
	var arg uint64
	switch {
	case ai < 24:
		arg = uint64(ai)
	case ai < 28:
		n := 1 << (ai - 24)
		if len(b)-off < n {
			return 0, errWalkTruncated
		}
		for _, c := range b[off : off+n] {
			arg = arg<<8 | uint64(c)
		}
		off += n
		if major == 7 && ai == 24 && arg < 32 {
			return 0, errWalkInvalid // two-byte simple value below 32
		}
	case ai == 31 && major >= 2 && major <= 5:
		s.indefinite = true
		return s.indefiniteItem(b, off, major)
	default: // 28..30 are reserved; 31 is a break or invalid for types 0, 1, 6
		return 0, errWalkInvalid
	}
	switch major {
	case 2, 3:
		if arg > uint64(len(b)-off) {
			return 0, errWalkTruncated
		}
		return off + int(arg), nil
	case 4, 5:
		n := arg
		if major == 5 {
			if n > uint64(len(b)) {
				return 0, errWalkTruncated
			}
			n *= 2
		}
		if n > uint64(len(b)-off) { // every item takes at least one byte
			return 0, errWalkTruncated
		}
		var err error
		for range n {
			if off, err = s.item(b, off); err != nil {
				return 0, err
			}
		}
	case 6:
		s.tag = true
		return s.item(b, off)
	}
	return off, nil
}

// indefiniteItem walks the chunks or elements of an indefinite-length item
// of the given major type, up to and including its break byte.
func (s *headScan) indefiniteItem(b []byte, off int, major byte) (int, error) {
	var n int
	for ; ; n++ {
		if off >= len(b) {
			return 0, errWalkTruncated
		}
		if b[off] == 0xff {
			break
		}
		if major <= 3 && (b[off]>>5 != major || b[off]&0x1f == 31) {
			return 0, errWalkInvalid // a chunk must be a definite string of the same type
		}
		var err error
		if off, err = s.item(b, off); err != nil {
			return 0, err
		}
	}
	if major == 5 && n%2 == 1 {
		return 0, errWalkInvalid // a key without a value
	}
	return off + 1, nil
}

// unhex decodes hex written with optional spaces; it panics on bad hex,
// which is a bug in a test table.
func unhex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

func TestScanHeads(t *testing.T) {
	tests := []struct {
		hex        string
		indefinite bool
		tag        bool
		err        error
	}{
		{hex: "00"},
		{hex: "1bffffffffffffffff"},
		{hex: "83 01 82 02 03 a1 61 61 40"},
		{hex: "f8 ff"},
		{hex: "5f 41 00 ff", indefinite: true},
		{hex: "82 c1 01 bf ff", indefinite: true, tag: true},
		{hex: "d9 d9 f7 c0 60", tag: true},
		{hex: "", err: errWalkTruncated},
		{hex: "19 01", err: errWalkTruncated},
		{hex: "83 01 02", err: errWalkTruncated},
		{hex: "9b ffffffffffffffff", err: errWalkTruncated},
		{hex: "bb ffffffffffffffff", err: errWalkTruncated},
		{hex: "5f 41 00", err: errWalkTruncated},
		{hex: "01 02", err: errWalkInvalid},
		{hex: "ff", err: errWalkInvalid},
		{hex: "1c", err: errWalkInvalid},
		{hex: "3f", err: errWalkInvalid},
		{hex: "f8 10", err: errWalkInvalid},
		{hex: "5f 61 00 ff", err: errWalkInvalid},
		{hex: "5f 5f ff ff", err: errWalkInvalid},
		{hex: "bf 01 ff", err: errWalkInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.hex, func(t *testing.T) {
			s, err := scanHeads(unhex(tt.hex))
			if err != tt.err {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if err == nil && (s.indefinite != tt.indefinite || s.tag != tt.tag) {
				t.Errorf("scan = %+v, want indefinite %v tag %v", s, tt.indefinite, tt.tag)
			}
		})
	}
}
