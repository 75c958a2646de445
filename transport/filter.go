package transport

import (
	"context"
	"net"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	tcpclient "github.com/plgd-dev/go-coap/v3/tcp/client"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"
)

// The filter sees every message a peer sends, parsed, before go-coap
// caches, reassembles or dispatches it (go-coap's request monitor). It
// runs on the connection's read path, so it only looks things up; it
// drops what no client of ours sends, applies the per-peer rate limit,
// and takes Block1 uploads.
//
// Dropping over-limit requests rather than answering each one matters
// over UDP: go-coap keeps every answer for 247 s to deduplicate
// retransmissions and scans that cache on every datagram from the peer,
// so the answers to a flood would make each of its datagrams slower than
// the last. A peer over its limit is told 4.29 a few times and then at
// most once a second.

func (s *Server) udpFilter(cc *udpclient.Conn, m *pool.Message) (bool, error) {
	return s.filter(cc, m, false), nil
}

func (s *Server) tcpFilter(cc *tcpclient.Conn, m *pool.Message) (bool, error) {
	return s.filter(cc, m, true), nil
}

// filter reports whether to drop m.
func (s *Server) filter(cc conn, m *pool.Message, tcp bool) (drop bool) {
	ss, _ := cc.Context().Value(sessionKey{}).(*session)
	if ss == nil {
		return true // not admitted (yet)
	}
	now := time.Now()
	ss.touch(now)
	if ss.scheme == "coap" {
		s.unauth.seen(ss)
	}
	code := m.Code()
	if !tcp {
		switch m.Type() {
		case message.Acknowledgement, message.Reset:
			// We send no requests, so an ACK or RST is only ever the
			// empty answer to a confirmable notification or a ping.
			if code != codes.Empty || len(m.Token()) > 0 || hasPayload(m) {
				return true
			}
			if s.obs.answer(cc, m.MessageID(), m.Type() == message.Reset) {
				return true // ours, not go-coap's
			}
			return false
		}
	}
	isRequest := code >= codes.GET && code < 32
	switch {
	case code == codes.Empty:
	case tcp && code>>5 == 7: // signalling (RFC 8323 section 5)
		return false
	case !isRequest:
		return true // a response, or a code no peer should send us
	}
	// Before it authenticates a peer is its IP address, whatever its
	// port: a new port is not a new allowance.
	key, authenticated := ss.limitKey()
	if !s.continuesUpload(ss, m, isRequest) && !s.limiter.allow(key, now) {
		// Over TCP nothing is cached and a dropped request would only
		// hang the client: every request is answered.
		if !isRequest || (!tcp && !s.notices.allow(key, now)) {
			if ss.scheme == "coap" && ss.drops.Add(1) >= abuseDrops {
				// go-coap scans this peer's response cache on every
				// datagram it sends: a peer that floods loses it, and
				// the session, and starts again empty.
				cc.Close()
			}
			return true
		}
		mark(m, &pre{reply: Errorf(TooManyRequests, "rate limit"),
			opts: []message.Option{uintOption(message.MaxAge, 1)}})
		stripBlocks(m)
		return false
	}
	if isRequest && m.HasOption(message.Block1) {
		path, err := m.Path()
		if err != nil {
			mark(m, &pre{reply: Errorf(BadOption, "bad path")})
			stripBlocks(m)
			return false
		}
		if path == "" || path[0] != '/' {
			path = "/" + path
		}
		s.mu.RLock()
		rt := s.routes[path]
		s.mu.RUnlock()
		p := s.block1(ss, m, rt, authenticated, tcp, now)
		if p.release == nil {
			stripBlocks(m)
		}
		mark(m, p)
	}
	return false
}

// A UDP peer over its rate limit is told 4.29 up to noticeBurst times at
// once and then once a second (go-coap caches each answer); after
// abuseDrops dropped datagrams a plain-UDP peer's connection is closed.
const (
	noticeBurst = 4
	abuseDrops  = 256
)

// mark attaches the filter's decision to m's context for dispatch.
func mark(m *pool.Message, p *pre) {
	m.SetContext(context.WithValue(m.Context(), preKey{}, p))
}

// stripBlocks takes a request that is answered early out of go-coap's
// block-wise handling: no Block1 to reassemble, no body to hold.
func stripBlocks(m *pool.Message) {
	m.Remove(message.Block1)
	m.Remove(message.Size1)
	m.SetBody(nil)
}

// ipOf returns the IP address of a, without its port.
func ipOf(a net.Addr) string {
	switch v := a.(type) {
	case *net.UDPAddr:
		return v.AddrPort().Addr().Unmap().String()
	case *net.TCPAddr:
		return v.AddrPort().Addr().Unmap().String()
	}
	if host, _, err := net.SplitHostPort(a.String()); err == nil {
		return host
	}
	return a.String()
}

func hasPayload(m *pool.Message) bool {
	n, err := m.BodySize()
	return err == nil && n > 0
}
