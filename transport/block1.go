package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/pool"
)

// Block-wise uploads (RFC 7959 Block1) are reassembled here, not by
// go-coap, so that nothing is held before the route, the peer's
// authentication, the content-format and the size are checked, and so
// that what is held counts against the server's in-flight budget.
const (
	// maxTransfers is how many uploads one connection may have in
	// progress; a new one replaces the oldest.
	maxTransfers = 2
	// transferIdle is how long an upload may pause between blocks.
	transferIdle = 30 * time.Second
	// busyMaxAge is the Max-Age of a 5.03 sent when the in-flight budget
	// is spent: the seconds after which the peer may try again.
	busyMaxAge = 5
)

// A transfer is one Block1 upload in progress on a connection.
type transfer struct {
	buf     []byte
	held    int64 // bytes reserved from the server's in-flight budget
	updated time.Time
	// last is the Block1 value of the last block taken, so that a
	// retransmitted block is answered again rather than refused.
	last uint32
}

// pre is what the filter decided about a request before go-coap handles
// it, carried to dispatch in the request's context.
type pre struct {
	// reply, when set, answers the request without calling its handler.
	reply *Error
	code  Code // a success code to answer with instead (2.31 Continue)
	opts  []message.Option
	// release gives back the in-flight bytes of a reassembled body.
	release func()
}

type preKey struct{}

func preOf(ctx context.Context) *pre {
	p, _ := ctx.Value(preKey{}).(*pre)
	return p
}

// continueCode is 2.31 Continue (RFC 7959).
const continueCode Code = 0x5f

// block is a decoded Block1 or Block2 option value.
type block struct {
	num  uint32
	more bool
	szx  uint8
}

func decodeBlock(v uint32) block {
	return block{num: v >> 4, more: v&0x8 != 0, szx: uint8(v & 0x7)}
}

func (b block) encode() uint32 {
	v := b.num<<4 | uint32(b.szx)
	if b.more {
		v |= 0x8
	}
	return v
}

// size is the block size in bytes; BERT (szx 7, RFC 8323) counts in
// units of 1 KiB.
func (b block) size() int {
	if b.szx == 7 {
		return 1024
	}
	return 16 << b.szx
}

func uintOption(id message.OptionID, v uint32) message.Option {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	o := b[:]
	for len(o) > 0 && o[0] == 0 {
		o = o[1:]
	}
	return message.Option{ID: id, Value: o}
}

// block1 takes one block of an upload. It returns what to tell the
// request's context: an answer for a block that is refused or that more
// blocks follow, or, for the last block, nothing to answer early but the
// whole body set on m and the Block1 option to echo.
func (s *Server) block1(ss *session, m *pool.Message, rt *route, dev bool, tcp bool, now time.Time) *pre {
	ss.mu.Lock()
	closed := ss.closed
	ss.mu.Unlock()
	if closed {
		return &pre{reply: Errorf(ServiceUnavailable, "connection closed")}
	}
	v, err := m.GetOptionUint32(message.Block1)
	if err != nil || v > 0xfffff {
		return &pre{reply: Errorf(BadOption, "malformed Block1")}
	}
	b := decodeBlock(v)
	payload := readPayload(m)
	switch {
	case rt == nil:
		path, _ := m.Path()
		return &pre{reply: Errorf(NotFound, "no resource %s", path)}
	case !rt.allows(Method(m.Code())):
		return &pre{reply: Errorf(MethodNotAllowed, "%s not allowed", Method(m.Code()))}
	case !rt.Public && !dev:
		return &pre{reply: Errorf(Unauthorized, "authenticate first")}
	case b.szx == 7 && !tcp:
		return &pre{reply: Errorf(BadOption, "BERT blocks (SZX 7) need a TCP transport")}
	case b.more && (len(payload) == 0 || len(payload)%b.size() != 0 || (b.szx != 7 && len(payload) != b.size())):
		return &pre{reply: Errorf(BadRequest, "block %d: %d bytes, want %d", b.num, len(payload), b.size())}
	}
	tooLarge := func() *pre {
		return &pre{reply: Errorf(RequestEntityTooLarge, "body over %d bytes", rt.MaxBody),
			opts: []message.Option{uintOption(message.Size1, uint32(rt.MaxBody))}}
	}
	if size, err := m.GetOptionUint32(message.Size1); err == nil && int64(size) > int64(rt.MaxBody) {
		s.dropTransfer(ss, transferKey(m))
		return tooLarge()
	}
	offset := int64(b.num) * int64(b.size())
	if offset+int64(len(payload)) > int64(rt.MaxBody) {
		s.dropTransfer(ss, transferKey(m))
		return tooLarge()
	}
	key := transferKey(m)
	ss.mu.Lock()
	t := ss.transfers[key]
	if b.num == 0 {
		if t != nil && t.last == v && len(t.buf) == len(payload) && b.more {
			// A retransmission of the first block.
			t.updated = now
			ss.mu.Unlock()
			return &pre{code: continueCode, opts: []message.Option{uintOption(message.Block1, v)}}
		}
		if cf, err := m.ContentFormat(); err != nil || !rt.accepts(Format(cf)) {
			ss.mu.Unlock()
			if err != nil {
				return &pre{reply: Errorf(UnsupportedFormat, "content-format required")}
			}
			return &pre{reply: Errorf(UnsupportedFormat, "content-format %d not accepted", cf)}
		}
		if t != nil {
			s.releaseTransfer(ss, key, t)
		}
		t = &transfer{}
		if ss.transfers == nil {
			ss.transfers = make(map[string]*transfer)
		}
		for len(ss.transfers) >= maxTransfers {
			var oldK string
			var old *transfer
			for k, o := range ss.transfers {
				if old == nil || o.updated.Before(old.updated) {
					oldK, old = k, o
				}
			}
			s.releaseTransfer(ss, oldK, old)
		}
		ss.transfers[key] = t
	}
	switch {
	case t == nil:
		ss.mu.Unlock()
		return &pre{reply: Errorf(RequestEntityIncomplete, "block %d without block 0", b.num)}
	case t.last == v && int64(len(t.buf)) == offset+int64(len(payload)) && b.num > 0:
		t.updated = now
		ss.mu.Unlock()
		if b.more {
			return &pre{code: continueCode, opts: []message.Option{uintOption(message.Block1, v)}}
		}
		return &pre{reply: Errorf(RequestEntityIncomplete, "block %d repeated after the upload ended", b.num)}
	case offset != int64(len(t.buf)):
		s.releaseTransfer(ss, key, t)
		ss.mu.Unlock()
		return &pre{reply: Errorf(RequestEntityIncomplete, "block %d out of order", b.num)}
	}
	n := int64(len(payload))
	if n > 0 && !s.inflight.TryAcquire(n) {
		s.releaseTransfer(ss, key, t)
		ss.mu.Unlock()
		return &pre{reply: Errorf(ServiceUnavailable, "server busy"),
			opts: []message.Option{uintOption(message.MaxAge, busyMaxAge)}}
	}
	t.held += n
	t.buf = append(t.buf, payload...)
	t.last, t.updated = v, now
	if b.more {
		ss.mu.Unlock()
		return &pre{code: continueCode, opts: []message.Option{uintOption(message.Block1, v)}}
	}
	// The last block: hand the whole body on as one request. Its bytes
	// stay charged until the request is answered, or, should go-coap
	// answer it from its cache or drop it instead (a reused message ID),
	// until the sweeper finds the hand-off older than a request can live.
	delete(ss.transfers, key)
	h := &handoff{n: t.held, until: now.Add(s.cfg.RequestTimeout + handoffSlack)}
	ss.handoffs = append(ss.handoffs, h)
	ss.mu.Unlock()
	m.Remove(message.Block1)
	m.Remove(message.Size1)
	m.SetBody(bytes.NewReader(t.buf))
	return &pre{opts: []message.Option{uintOption(message.Block1, v)}, release: func() {
		ss.mu.Lock()
		defer ss.mu.Unlock()
		s.releaseHandoff(ss, h)
	}}
}

// handoffSlack is how long past RequestTimeout a reassembled body that
// never reached its handler stays charged to the in-flight budget.
const handoffSlack = 5 * time.Second

// A handoff is a reassembled body handed on to go-coap, charged to the
// in-flight budget until its request is answered.
type handoff struct {
	n     int64
	until time.Time
	done  bool
}

// releaseHandoff gives back the bytes of h once; ss.mu is held.
func (s *Server) releaseHandoff(ss *session, h *handoff) {
	if h.done {
		return
	}
	h.done = true
	s.inflight.Release(h.n)
	for i, x := range ss.handoffs {
		if x == h {
			ss.handoffs = append(ss.handoffs[:i], ss.handoffs[i+1:]...)
			break
		}
	}
}

// continuesUpload reports whether m is the next block of an upload in
// progress on ss: such a block is not charged to the rate limiter, which
// charged the upload's first block. A block-wise request is many
// messages, and a limit that counted each would stop a body of more
// blocks than its burst halfway, again and again. Only a block that
// moves its upload on is free: a repeated, out-of-order or first block
// is charged as any request, so the free blocks of one upload are at
// most its resource's MaxBody over the block size.
func (s *Server) continuesUpload(ss *session, m *pool.Message, isRequest bool) bool {
	if !isRequest || !m.HasOption(message.Block1) {
		return false
	}
	v, err := m.GetOptionUint32(message.Block1)
	if err != nil || v > 0xfffff {
		return false
	}
	b := decodeBlock(v)
	if b.num == 0 {
		return false
	}
	key := transferKey(m)
	ss.mu.Lock()
	defer ss.mu.Unlock()
	t := ss.transfers[key]
	return t != nil && int64(b.num)*int64(b.size()) == int64(len(t.buf))
}

// transferKey names an upload on its connection: method, path and
// Request-Tag (RFC 9175), which together tell concurrent uploads apart.
func transferKey(m *pool.Message) string {
	var b bytes.Buffer
	b.WriteByte(byte(m.Code()))
	for _, o := range m.Options() {
		if o.ID == message.URIPath || o.ID == message.RequestTag {
			b.WriteByte(byte(o.ID))
			b.WriteByte(byte(len(o.Value)))
			b.Write(o.Value)
		}
	}
	return b.String()
}

// releaseTransfer forgets an upload and gives back its bytes; ss.mu is
// held.
func (s *Server) releaseTransfer(ss *session, key string, t *transfer) {
	if ss.transfers[key] == t {
		delete(ss.transfers, key)
	}
	if t.held > 0 {
		s.inflight.Release(t.held)
		t.held = 0
	}
	t.buf = nil
}

func (s *Server) dropTransfer(ss *session, key string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if t := ss.transfers[key]; t != nil {
		s.releaseTransfer(ss, key, t)
	}
}

// expireTransfers forgets the uploads of ss idle past transferIdle and
// the hand-offs past their time, or all of them when the connection is
// gone.
func (s *Server) expireTransfers(ss *session, now time.Time, all bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for k, t := range ss.transfers {
		if all || now.Sub(t.updated) > transferIdle {
			s.releaseTransfer(ss, k, t)
		}
	}
	for _, h := range append([]*handoff(nil), ss.handoffs...) {
		if all || now.After(h.until) {
			s.releaseHandoff(ss, h)
		}
	}
}

// readPayload returns a message's payload without copying it when it can.
func readPayload(m *pool.Message) []byte {
	body := m.Body()
	if body == nil {
		return nil
	}
	if r, ok := body.(*bytes.Reader); ok && r.Size() == 0 {
		return nil
	}
	if _, err := body.Seek(0, 0); err != nil {
		return nil
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(body); err != nil {
		return nil
	}
	return buf.Bytes()
}
