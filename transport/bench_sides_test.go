package transport

import (
	"context"
	"runtime"
	"syscall"
	"testing"
	"time"
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

// BenchmarkTransportRequestAlone runs one stack at a time, ours (our
// Client to our Server) or raw (go-coap's client to go-coap's server),
// with one client posting serially, so that a CPU or memory profile and
// allocs/op belong to one stack only. Wall time is not compared here
// (BenchmarkTransportRequest does that); use it as
//
//	go test -run='^$' -bench='TransportRequestAlone/coap\+tcp/ours' -benchtime=20000x -cpuprofile cpu.out ./transport/
//
// It reports the process's CPU time per request, client, server and
// runtime together, in user space and in the kernel (user-us/op,
// sys-us/op): less disturbed than wall time by other work on the
// machine, though the kernel's share still varies with it.
func BenchmarkTransportRequestAlone(b *testing.B) {
	for _, scheme := range benchSchemes {
		b.Run(scheme, func(b *testing.B) {
			f := benchFixture(b, scheme, benchServerConfig())
			rawAddr := rawServer(b, scheme, f)
			ctx := context.Background()
			cfg := benchClientConfig(b, f)
			sides := []struct {
				name string
				dial func() (poster, error)
			}{
				{"ours", func() (poster, error) {
					c, err := Dial(ctx, f.url, cfg)
					if err != nil {
						return nil, err
					}
					return oursPoster{c}, nil
				}},
				{"raw", func() (poster, error) { return rawDial(scheme, rawAddr, f) }},
			}
			for _, side := range sides {
				b.Run(side.name, func(b *testing.B) {
					if (scheme == "coap" || scheme == "coaps") && b.N > 50000 {
						b.Fatalf("b.N %d: keep -benchtime at or below 50000x on UDP", b.N)
					}
					p, err := side.dial()
					if err != nil {
						b.Fatal(err)
					}
					defer p.close()
					if err := warmUp(ctx, []poster{p}, 4); err != nil {
						b.Fatal(err)
					}
					b.ReportAllocs()
					runtime.GC()
					u0, s0 := cpuTimes(b)
					b.ResetTimer()
					for range b.N {
						if err := p.post(ctx); err != nil {
							b.Fatal(err)
						}
					}
					b.StopTimer()
					u1, s1 := cpuTimes(b)
					us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / float64(b.N) }
					b.ReportMetric(us(u1-u0), "user-us/op")
					b.ReportMetric(us(s1-s0), "sys-us/op")
				})
			}
		})
	}
}

// cpuTimes returns the user and system CPU time the process has used.
func cpuTimes(tb testing.TB) (user, sys time.Duration) {
	var ru syscall.Rusage
	must(tb, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}
