package transport

import (
	"context"
	"net"
	"net/url"
	"testing"
	"time"
)

// FuzzServerStream sends an arbitrary byte stream on a new coap+tcp://
// connection to a real server (RFC 8323 framing, signalling messages,
// requests): the server must not crash, must close or keep the
// connection without leaking it, and must go on answering a well-formed
// request on another connection after each one. Seeds
// (testdata/fuzz/FuzzServerStream) cover CSM, Ping, Release and Abort
// signals, a request, and truncated, oversized and malformed frames.
func FuzzServerStream(f *testing.F) {
	get := []byte{0xa0, 0x01, 0xb2, 'v', '1', 0x06, 's', 't', 'a', 't', 'u', 's'}
	f.Add([]byte{0x00, 0xe1})                                             // empty CSM
	f.Add(append([]byte{0x00, 0xe1}, get...))                             // CSM, then GET /v1/status
	f.Add([]byte{0x00, 0xe1, 0x01, 0xe2, 0x07})                           // CSM, Ping with a token
	f.Add([]byte{0x00, 0xe1, 0x00, 0xe4})                                 // CSM, Release
	f.Add([]byte{0x00, 0xe1, 0x00, 0xe5})                                 // CSM, Abort
	f.Add([]byte{0x20, 0xe1, 0x22, 0xfe})                                 // CSM with Max-Message-Size option cut short
	f.Add([]byte{0xf0, 0xff, 0xff, 0xff, 0xff, 0x01})                     // 4 GiB length
	f.Add([]byte{0xd9, 0xff, 0x01})                                       // 13-length form, truncated
	f.Add([]byte{0x0f, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})      // TKL 15
	f.Add(append([]byte{0x00, 0xe1}, 0x30, 0x02, 0xff, 0xa0, 0x00))       // POST with payload marker
	f.Add(append([]byte{0x00, 0xe1}, 0x31, 0x02, 0x01, 0xd1, 0x0e, 0x0e)) // POST with Block1 SZX 6

	// The probe asks once per input: no rate limit.
	fx := newFixture(f, "coap+tcp", ServerConfig{HandshakeTimeout: 500 * time.Millisecond, RateLimit: RateLimit{PerSecond: -1}})
	u, _ := url.Parse(fx.url)
	probe, err := Dial(context.Background(), fx.url, ClientConfig{Retry: RetryPolicy{Attempts: 2}})
	if err != nil {
		f.Fatal(err)
	}
	defer probe.Close()

	f.Fuzz(func(t *testing.T, stream []byte) {
		c, err := net.DialTimeout("tcp", u.Host, time.Second)
		if err != nil {
			t.Skip("not connected:", err)
		}
		c.SetDeadline(time.Now().Add(time.Second))
		c.Write(stream)
		// Read whatever the server answers until it closes or goes quiet.
		buf := make([]byte, 4096)
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		for {
			if _, err := c.Read(buf); err != nil {
				break
			}
		}
		c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var s string
		if err := probe.Get(ctx, "/v1/status", &s); err != nil || s != "ok" {
			t.Fatalf("server stopped answering after %x: %q, %v", stream, s, err)
		}
	})
	// Every fuzzed connection was closed by its client: the server lets
	// go of them all (the probe's is the one left).
	deadline := time.Now().Add(3 * time.Second)
	for fx.srv.adm.live() > 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := fx.srv.adm.live(); n > 1 {
		f.Fatalf("%d connections still admitted after the fuzzed ones closed", n)
	}
}
