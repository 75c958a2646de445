package device_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device"
)

// tinyDisk mounts a tmpfs of size bytes on a new directory, or skips t
// where it cannot (not root, no CAP_SYS_ADMIN).
func tinyDisk(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("a full disk needs a tmpfs of its own, which this process may not mount (%v): run the tests as root", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// TestDiskFull: on a full disk Record fails with ErrDiskFull and loses
// nothing it recorded before; once there is room again, everything it
// recorded reaches the cloud once.
func TestDiskFull(t *testing.T) {
	disk := tinyDisk(t, "1m")
	k := newKeys(t)
	c := startCloud(t, k, t.TempDir(), "coaps://127.0.0.1:0")
	m := c.importMeter()
	cfg := k.config(t, m, filepath.Join(disk, "outbox"), c.url)
	a, err := device.New(context.Background(), cfg)
	must(t, err)
	defer a.Close()

	// Leave the outbox about 200 KiB.
	filler := filepath.Join(disk, "filler")
	var st syscall.Statfs_t
	must(t, syscall.Statfs(disk, &st))
	must(t, os.WriteFile(filler, make([]byte, int64(st.Bavail)*st.Bsize-200<<10), 0o600))

	ctx := context.Background()
	note := strings.Repeat("n", 1000)
	var recorded []int64
	var full error
	for n := range int64(10_000) {
		err := a.Record(ctx, "count", policy.Reading{"ts": time.Now(), "n": n, "note": note})
		if err != nil {
			full = err
			break
		}
		recorded = append(recorded, n)
	}
	var oe *device.OutboxError
	if !errors.Is(full, device.ErrDiskFull) || !errors.As(full, &oe) {
		t.Fatalf("after %d readings: %v, want ErrDiskFull", len(recorded), full)
	}
	t.Logf("disk full after %d readings: %v", len(recorded), full)
	if err := a.Record(ctx, "count", policy.Reading{"ts": time.Now(), "n": int64(-1), "note": note}); !errors.Is(err, device.ErrDiskFull) {
		t.Fatalf("again: %v", err)
	}
	if h := a.Health(); h.Queued != len(recorded) {
		t.Fatalf("queued %d, recorded %d", h.Queued, len(recorded))
	}
	must(t, a.Close())

	// What was recorded is in the file, which opens.
	a = newAgent(t, cfg)
	if h := a.Health(); h.Queued != len(recorded) {
		t.Fatalf("after reopening: queued %d, recorded %d", h.Queued, len(recorded))
	}
	must(t, os.Remove(filler))
	n := int64(len(recorded) + 10)
	must(t, a.Record(ctx, "count", policy.Reading{"ts": time.Now(), "n": n, "note": note}))
	recorded = append(recorded, n)
	must(t, a.Start())
	drain(t, a, 30*time.Second)
	if got := counts(t, c.stored(m, "count")); !slices.Equal(got, recorded) {
		t.Fatalf("cloud holds %d readings, recorded %d: %v", len(got), len(recorded), got)
	}
}
