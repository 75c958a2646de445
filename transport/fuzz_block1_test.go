package transport

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
)

// FuzzBlock1 drives Block1 reassembly with a fuzzed sequence of blocks on
// one connection: each step is 4 bytes (the Block1 value in 3, and a flag
// byte choosing Size1, a second Request-Tag, a payload length), so
// uploads start, interleave, repeat, skip and overrun. It checks that
// reassembly never panics, never holds more of the in-flight budget than
// it has taken, never hands on a body over MaxBody or out of order, and
// gives every byte back when the connection goes. Seeds are in
// testdata/fuzz/FuzzBlock1.
func FuzzBlock1(f *testing.F) {
	f.Add([]byte{0, 0, 0x0e, 0x00, 0, 0, 0x1e, 0x00, 0, 0, 0x26, 0x00}) // 3 blocks of 1 KiB, last one final
	f.Add([]byte{0, 0, 0x0e, 0x01, 0, 0, 0x0e, 0x01, 0, 0, 0x16, 0x00}) // block 0 twice, then final
	f.Add([]byte{0, 0, 0x2e, 0x00})                                     // a middle block with no start
	f.Add([]byte{0, 0, 0x0f, 0x00})                                     // BERT over UDP
	f.Add([]byte{0, 0, 0x0e, 0x80, 0, 0, 0x0e, 0x40, 0, 0, 0x16, 0x40}) // Size1 too large; a second tag
	f.Add([]byte{0, 0, 0x08, 0x20, 0, 0, 0x18, 0x20, 0, 0, 0x20, 0x10}) // 16-byte blocks, short last

	const maxBody = 4096
	f.Fuzz(func(t *testing.T, steps []byte) {
		if len(steps) > 4*64 {
			steps = steps[:4*64]
		}
		s := NewServer(ServerConfig{MaxInFlightBytes: 8 << 10})
		defer s.Close()
		rt, err := newRoute(Resource{Path: "/v1/up", Methods: []Method{POST}, Public: true, MaxBody: maxBody,
			Handler: func(context.Context, *Request) (any, error) { return nil, nil }})
		if err != nil {
			t.Fatal(err)
		}
		ss := &session{scheme: "coap"}
		now := time.Unix(1e9, 0)
		taken := int64(0) // bytes the server accepted and still holds
		for i := 0; i+4 <= len(steps); i += 4 {
			v := uint32(steps[i])<<16 | uint32(steps[i+1])<<8 | uint32(steps[i+2])
			flags := steps[i+3]
			m := pool.NewMessage(context.Background())
			m.SetCode(codes.POST)
			if err := m.SetPath("/v1/up"); err != nil {
				t.Fatal(err)
			}
			m.SetContentFormat(message.AppCBOR)
			m.SetOptionUint32(message.Block1, v)
			if flags&0x80 != 0 {
				m.SetOptionUint32(message.Size1, uint32(flags&0x7f)<<8)
			}
			if flags&0x40 != 0 {
				m.SetOptionBytes(message.RequestTag, []byte{1})
			}
			b := decodeBlock(v)
			n := b.size()
			if flags&0x20 != 0 {
				n = int(flags & 0x1f)
			}
			payload := bytes.Repeat([]byte{byte(b.num)}, n)
			m.SetBody(bytes.NewReader(payload))
			p := s.block1(ss, m, &route{Resource: rt.Resource, dec: rt.dec}, false, false, now)
			now = now.Add(time.Millisecond)
			switch {
			case p.release != nil:
				body := readPayload(m)
				if len(body) > maxBody {
					t.Fatalf("a %d-byte body handed on, MaxBody %d", len(body), maxBody)
				}
				if m.HasOption(message.Block1) {
					t.Fatal("a reassembled request still carries Block1")
				}
				// Blocks are numbered by their offset: each byte is its
				// block's number, so order shows in the body.
				for j := 1; j < len(body); j++ {
					if body[j] < body[j-1] {
						t.Fatalf("body out of order at %d", j)
					}
				}
				p.release()
				p.release() // idempotent
			case p.reply != nil:
				if p.reply.Code.IsSuccess() {
					t.Fatalf("reply with success code %v", p.reply.Code)
				}
			case p.code != continueCode:
				t.Fatalf("neither a body, a refusal nor 2.31: %+v", p)
			}
			taken = 0
			ss.mu.Lock()
			for _, tr := range ss.transfers {
				if int64(len(tr.buf)) != tr.held {
					t.Fatalf("transfer holds %d bytes of budget for %d bytes", tr.held, len(tr.buf))
				}
				if len(tr.buf) > maxBody {
					t.Fatalf("transfer of %d bytes, MaxBody %d", len(tr.buf), maxBody)
				}
				taken += tr.held
			}
			if len(ss.transfers) > maxTransfers {
				t.Fatalf("%d transfers on one connection", len(ss.transfers))
			}
			ss.mu.Unlock()
			if !s.inflight.TryAcquire(s.cfg.MaxInFlightBytes - taken) {
				t.Fatalf("budget holds more than the %d bytes in transfers", taken)
			}
			s.inflight.Release(s.cfg.MaxInFlightBytes - taken)
		}
		s.expireTransfers(ss, now, true)
		if !budgetFree(s) {
			t.Fatal("budget not all given back when the connection went")
		}
	})
}
