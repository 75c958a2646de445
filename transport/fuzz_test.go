package transport

import (
	"context"
	"net"
	"net/url"
	"testing"
	"time"
)

// FuzzServerDatagram sends arbitrary datagrams to a real UDP server: it
// must not crash, and must go on answering a well-formed request after
// each one. Seeds (testdata/fuzz/FuzzServerDatagram) cover valid requests
// and malformed headers, tokens, options and payloads.
func FuzzServerDatagram(f *testing.F) {
	f.Add([]byte{0x40, 0x01, 0x12, 0x34, 0xbb, '.', 'w', 'e', 'l', 'l', '-', 'k', 'n', 'o', 'w', 'n', 0x04, 'c', 'o', 'r', 'e'})
	f.Add([]byte{0x44, 0x02, 0x00, 0x01, 1, 2, 3, 4, 0xb2, 'v', '1', 0x09, 't', 'e', 'l', 'e', 'm', 'e', 't', 'r', 'y', 0x11, 60, 0xff, 0x81, 0xa1, 0x61, 'x', 0x01})
	f.Add([]byte{0x40})
	f.Add([]byte{0x4f, 0x01, 0, 0})
	f.Add([]byte{0x40, 0x01, 0, 0, 0xff})
	f.Add([]byte{0x40, 0x01, 0, 0, 0xf0})
	f.Add([]byte{0x40, 0x01, 0, 0, 0xbe, 0xff, 0xff})
	f.Add([]byte{0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})

	// The probe asks once per input: no rate limit.
	fx := newFixture(f, "coap", ServerConfig{RateLimit: RateLimit{PerSecond: -1}})
	u, _ := url.Parse(fx.url)
	addr, err := net.ResolveUDPAddr("udp", u.Host)
	if err != nil {
		f.Fatal(err)
	}
	raw, err := net.DialUDP("udp", nil, addr)
	if err != nil {
		f.Fatal(err)
	}
	defer raw.Close()
	cfg := ClientConfig{Retry: RetryPolicy{Attempts: 2}}
	probe, err := Dial(context.Background(), fx.url, cfg)
	if err != nil {
		f.Fatal(err)
	}
	defer probe.Close()

	f.Fuzz(func(t *testing.T, datagram []byte) {
		if _, err := raw.Write(datagram); err != nil {
			t.Skip("datagram not sent:", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var s string
		if err := probe.Get(ctx, "/v1/status", &s); err != nil || s != "ok" {
			t.Fatalf("server stopped answering after %x: %q, %v", datagram, s, err)
		}
	})
}
