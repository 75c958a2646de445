package transport

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// TestPeerCertificates: a handler sees the chain a device authenticated
// with over DTLS and TLS, and none for a device that used a pre-shared
// key or a token.
func TestPeerCertificates(t *testing.T) {
	if PeerCertificates(context.Background()) != nil {
		t.Fatal("a chain outside a handler")
	}
	for _, scheme := range []string{"coaps+cert", "coaps+tcp", "coaps", "coap+tcp"} {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{})
			must(t, f.srv.Handle(Resource{
				Path: "/v1/chain",
				Handler: func(ctx context.Context, r *Request) (any, error) {
					var raw [][]byte
					for _, c := range PeerCertificates(ctx) {
						raw = append(raw, c.Raw)
					}
					return raw, nil
				},
			}))
			c := f.dial(t, true)
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var got [][]byte
			must(t, c.Get(ctx, "/v1/chain", &got))
			want := f.pki.device.Certificate
			if scheme == "coaps" || scheme == "coap+tcp" {
				want = nil
			}
			if len(got) != len(want) {
				t.Fatalf("%d certificates, want %d", len(got), len(want))
			}
			for i := range got {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("certificate %d is not the device's", i)
				}
			}
		})
	}
}
