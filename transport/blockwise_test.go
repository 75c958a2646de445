package transport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"testing"
	"time"
)

// TestLargeBodies sends and receives 200 KiB bodies on every transport:
// block-wise transfer (RFC 7959) on UDP and DTLS, large frames on TCP and
// TLS (RFC 8323).
func TestLargeBodies(t *testing.T) {
	const size = 200 << 10
	big := make([]byte, size)
	for i := range big {
		big[i] = byte(i * 7)
	}
	sum := sha256.Sum256(big)
	for _, scheme := range allSchemes {
		t.Run(scheme, func(t *testing.T) {
			// A block is a request: lift the per-peer rate limit.
			f := newFixture(t, scheme, ServerConfig{RateLimit: RateLimit{PerSecond: -1}})
			must(t, f.srv.Handle(Resource{
				Path: "/v1/blob", Methods: []Method{GET, POST}, MaxBody: 512 << 10,
				Handler: func(ctx context.Context, r *Request) (any, error) {
					if r.Method == GET {
						return big, nil
					}
					var in []byte
					if err := r.Decode(&in); err != nil {
						return nil, err
					}
					h := sha256.Sum256(in)
					return h[:], nil
				},
			}))
			cfg := f.config(t, true)
			cfg.MaxResponseBody = 512 << 10
			c, err := Dial(ctx5(t), f.url, cfg)
			must(t, err)
			defer c.Close()
			var got []byte
			must(t, c.Post(ctx5(t), "/v1/blob", big, &got))
			if !bytes.Equal(got, sum[:]) {
				t.Fatalf("server saw a different body: %x", got)
			}
			got = nil
			must(t, c.Get(ctx5(t), "/v1/blob", &got))
			if !bytes.Equal(got, big) {
				t.Fatalf("GET returned %d bytes, want the %d sent", len(got), len(big))
			}
		})
	}
}

// TestBlock1RateLimit: an upload of more blocks than the per-peer burst
// goes through under the rate limit, which charges its first block only.
func TestBlock1RateLimit(t *testing.T) {
	for _, scheme := range []string{"coap", "coaps"} {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{RateLimit: RateLimit{PerSecond: 1, Burst: 3}})
			must(t, f.srv.Handle(Resource{
				Path: "/v1/blob", Methods: []Method{POST}, MaxBody: 64 << 10, Public: true,
				Handler: func(ctx context.Context, r *Request) (any, error) { return len(r.Body), nil },
			}))
			c, err := Dial(ctx5(t), f.url, f.config(t, true))
			must(t, err)
			defer c.Close()
			body := make([]byte, 20<<10) // 21 blocks, the burst is 3
			var n int
			start := time.Now()
			must(t, c.Post(ctx5(t), "/v1/blob", body, &n))
			if n < len(body) {
				t.Fatalf("the handler saw %d bytes, want %d or more", n, len(body))
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("the upload took %v: its blocks were rate-limited", d)
			}
		})
	}
}
