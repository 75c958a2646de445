package transport

import (
	"context"
	"testing"
)

// BenchmarkTransportRequestSides splits BenchmarkTransportRequest's
// ours/raw ratio into its two sides, over coap+tcp with one client:
// "client" posts with our Client and with raw go-coap's client to the same
// raw go-coap server; "server" posts with our Client to our Server and to
// the raw server. Run it as BenchmarkTransportRequest is run
// (-benchtime=5000x, several -count).
func BenchmarkTransportRequestSides(b *testing.B) {
	ctx := context.Background()
	b.Run("client", func(b *testing.B) {
		f := benchFixture(b, "coap+tcp", benchServerConfig())
		rawAddr := "coap+tcp://" + rawServer(b, "coap+tcp", f)
		c, err := Dial(ctx, rawAddr, ClientConfig{})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		r, err := rawDial("coap+tcp", rawAddr[len("coap+tcp://"):], f)
		if err != nil {
			b.Fatal(err)
		}
		defer r.close()
		benchCompare(b, ctx, "coap+tcp", []poster{oursPoster{c}}, []poster{r})
	})
	b.Run("server", func(b *testing.B) {
		f := benchFixture(b, "coap+tcp", benchServerConfig())
		ours, err := Dial(ctx, f.url, benchClientConfig(b, f))
		if err != nil {
			b.Fatal(err)
		}
		defer ours.Close()
		raw, err := Dial(ctx, "coap+tcp://"+rawServer(b, "coap+tcp", f), ClientConfig{})
		if err != nil {
			b.Fatal(err)
		}
		defer raw.Close()
		benchCompare(b, ctx, "coap+tcp", []poster{oursPoster{ours}}, []poster{oursPoster{raw}})
	})
}
