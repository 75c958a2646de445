package transport

import (
	"context"
	"testing"
	"time"
)

// dialAndPost connects with one try and a short deadline and posts once.
func dialAndPost(t *testing.T, f *fixture) (*Client, error) {
	t.Helper()
	cfg := f.config(t, true)
	cfg.Retry.Attempts = 1
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	c, err := Dial(ctx, f.url, cfg)
	if err != nil {
		return nil, err
	}
	if err := c.Post(ctx, "/v1/telemetry", []reading{{"p", 1}}, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func TestMaxConnections(t *testing.T) {
	for _, scheme := range allSchemes {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{MaxConnections: 2})
			var open []*Client
			for i := range 2 {
				c, err := dialAndPost(t, f)
				if err != nil {
					t.Fatalf("connection %d under the cap: %v", i+1, err)
				}
				open = append(open, c)
			}
			if c, err := dialAndPost(t, f); err == nil {
				c.Close()
				t.Fatal("a third connection was served with MaxConnections 2")
			}
			if scheme == "coap" {
				return // a UDP peer's slot is freed by the idle timeout, not by the client
			}
			must(t, open[0].Close())
			deadline := time.Now().Add(3 * time.Second)
			for {
				c, err := dialAndPost(t, f)
				if err == nil {
					c.Close()
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no slot after a client left: %v", err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			for _, c := range open[1:] {
				c.Close()
			}
		})
	}
}

func TestHandshakeRate(t *testing.T) {
	for _, scheme := range []string{"coaps", "coaps+cert", "coaps+tcp"} {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{HandshakeRate: RateLimit{PerSecond: 0.001, Burst: 2}})
			for i := range 2 {
				c, err := dialAndPost(t, f)
				if err != nil {
					t.Fatalf("handshake %d within the burst: %v", i+1, err)
				}
				defer c.Close()
			}
			if c, err := dialAndPost(t, f); err == nil {
				c.Close()
				t.Fatal("a third handshake was allowed with a burst of 2")
			}
		})
	}
}
