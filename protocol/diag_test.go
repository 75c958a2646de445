package protocol_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

// diagWidth is the line width up to which an array or map is written on
// one line in the golden .diag files.
const diagWidth = 76

// diagnose writes one CBOR data item in diagnostic notation (RFC 8949
// section 8, RFC 8610 appendix G), indented for reading: arrays and maps
// that do not fit on a line get one line per element. Scalars are written
// by the CBOR library's own diagnostic notation.
func diagnose(data []byte) (string, error) {
	var b strings.Builder
	rest, err := diagItem(&b, data, 0, 0)
	if err != nil {
		return "", err
	}
	if len(rest) != 0 {
		return "", errors.New("diagnose: bytes after the item")
	}
	b.WriteByte('\n')
	return b.String(), nil
}

// head reads an item's head: its major type, its argument and the head's
// length. Indefinite lengths are refused: v1 never writes them.
func head(data []byte) (major byte, arg uint64, n int, err error) {
	if len(data) == 0 {
		return 0, 0, 0, errors.New("diagnose: truncated")
	}
	major, ai := data[0]>>5, data[0]&0x1f
	switch {
	case ai < 24:
		return major, uint64(ai), 1, nil
	case ai <= 27:
		size := 1 << (ai - 24)
		if len(data) < 1+size {
			return 0, 0, 0, errors.New("diagnose: truncated")
		}
		var buf [8]byte
		copy(buf[8-size:], data[1:1+size])
		return major, binary.BigEndian.Uint64(buf[:]), 1 + size, nil
	}
	return 0, 0, 0, fmt.Errorf("diagnose: additional information %d", ai)
}

// itemLen returns the length of the item data starts with.
func itemLen(data []byte) (int, error) {
	major, arg, n, err := head(data)
	if err != nil {
		return 0, err
	}
	switch major {
	case 2, 3:
		if uint64(len(data)-n) < arg {
			return 0, errors.New("diagnose: truncated")
		}
		return n + int(arg), nil
	case 4, 5:
		count := arg
		if major == 5 {
			count *= 2
		}
		off := n
		for range count {
			l, err := itemLen(data[off:])
			if err != nil {
				return 0, err
			}
			off += l
		}
		return off, nil
	case 6:
		l, err := itemLen(data[n:])
		return n + l, err
	}
	return n, nil
}

// diagItem writes the item data starts with, at nesting level level and
// column col, and returns the bytes after it.
func diagItem(b *strings.Builder, data []byte, level, col int) ([]byte, error) {
	l, err := itemLen(data)
	if err != nil {
		return nil, err
	}
	item, rest := data[:l], data[l:]
	one, err := cbor.Diagnose(item)
	if err != nil {
		return nil, err
	}
	major, arg, n, _ := head(item)
	if major < 4 || major > 6 || col+len(one) <= diagWidth {
		b.WriteString(one)
		return rest, nil
	}
	if major == 6 {
		fmt.Fprintf(b, "%d(", arg)
		tag := fmt.Sprintf("%d(", arg)
		if _, err := diagItem(b, item[n:], level, col+len(tag)); err != nil {
			return nil, err
		}
		b.WriteByte(')')
		return rest, nil
	}
	open, close := "[", "]"
	if major == 5 {
		open, close = "{", "}"
	}
	pad := strings.Repeat("  ", level+1)
	b.WriteString(open)
	b.WriteByte('\n')
	elems := item[n:]
	for i := uint64(0); i < arg; i++ {
		b.WriteString(pad)
		c := len(pad)
		if major == 5 {
			start := b.Len()
			if elems, err = diagItem(b, elems, level+1, c); err != nil {
				return nil, err
			}
			b.WriteString(": ")
			c += b.Len() - start
		}
		if elems, err = diagItem(b, elems, level+1, c); err != nil {
			return nil, err
		}
		if i+1 < arg {
			b.WriteByte(',')
		}
		b.WriteByte('\n')
	}
	b.WriteString(pad[2:])
	b.WriteString(close)
	return rest, nil
}

// TestDiagnoseMatchesLibrary: the indented notation is the library's,
// apart from white space outside strings.
func TestDiagnoseMatchesLibrary(t *testing.T) {
	for _, data := range [][]byte{
		{0x83, 0x01, 0x82, 0x02, 0x03, 0xa1, 0x61, 0x61, 0xf9, 0x3e, 0x00},
		{0xd2, 0x84, 0x43, 0xa1, 0x01, 0x27, 0xa0, 0x41, 0x00, 0x40},
	} {
		got, err := diagnose(data)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := cbor.Diagnose(data)
		if squeeze(got) != squeeze(want) {
			t.Errorf("diagnose(%x) = %q, library says %q", data, got, want)
		}
	}
}

// squeeze removes white space outside double-quoted strings.
func squeeze(s string) string {
	var b strings.Builder
	in := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case in && c == '\\' && i+1 < len(s):
			b.WriteByte(c)
			i++
			c = s[i]
		case c == '"':
			in = !in
		case !in && (c == ' ' || c == '\n' || c == '\t'):
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
