package device_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/consent/policy"
)

// BenchmarkRecord measures durable Record: each call returns once its
// reading is synced to the outbox, with 1 and 8 goroutines calling at
// once. It reports readings a second, the 99th percentile of one call's
// latency and the commits (syncs) per reading. The outbox is in a
// temporary directory, or in SENSIBLE_BENCH_DIR where that is set (a
// tmpfs, say, to leave out the disk's sync).
func BenchmarkRecord(b *testing.B) {
	for _, callers := range []int{1, 8} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			k := newKeys(b)
			dir := b.TempDir()
			if d := os.Getenv("SENSIBLE_BENCH_DIR"); d != "" {
				var err error
				dir, err = os.MkdirTemp(d, "bench")
				must(b, err)
				b.Cleanup(func() { os.RemoveAll(dir) })
			}
			cfg := k.config(b, newMeter(b), dir, "")
			cfg.MaxReadings = 1 << 30
			cfg.MaxBytes = 1 << 40
			a := newAgent(b, cfg)
			ctx := context.Background()
			now := time.Now()
			latencies := make([][]time.Duration, callers)
			var next atomic.Int64
			var failed atomic.Value
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for c := range callers {
				wg.Go(func() {
					r := policy.Reading{"ts": now, "n": int64(0), "note": "compressor on"}
					for {
						n := next.Add(1)
						if n > int64(b.N) {
							return
						}
						r["n"] = n
						t0 := time.Now()
						if err := a.Record(ctx, "count", r); err != nil {
							failed.Store(err)
							return
						}
						latencies[c] = append(latencies[c], time.Since(t0))
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if err, ok := failed.Load().(error); ok {
				b.Fatal(err)
			}
			all := slices.Concat(latencies...)
			slices.Sort(all)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "readings/s")
			b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
			b.ReportMetric(float64(a.Health().Commits)/float64(b.N), "commits/reading")
		})
	}
}
