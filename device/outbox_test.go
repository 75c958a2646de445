package device_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device"
)

// newMeter makes a device the cloud does not know.
func newMeter(t testing.TB) *meter {
	t.Helper()
	key, err := generateKey()
	must(t, err)
	return &meter{key: key}
}

// TestPriorities: a full outbox drops the lowest priority first, the
// oldest first within a priority, never a higher priority than the new
// reading's; with nothing to drop it refuses. Every drop is counted.
func TestPriorities(t *testing.T) {
	k := newKeys(t)
	c := startCloud(t, k, t.TempDir(), "coaps://127.0.0.1:0")
	m := c.importMeter()
	cfg := k.config(t, m, t.TempDir(), c.url)
	cfg.MaxReadings = 10
	cfg.Priorities = map[string]int{"count": 1} // bulk: 0
	a := newAgent(t, cfg)
	ctx := context.Background()
	record := func(stream string, n int64) error { return a.Record(ctx, stream, tick(n)) }
	for n := range int64(6) {
		must(t, record("bulk", n))
	}
	for n := range int64(4) {
		must(t, record("count", n))
	}
	must(t, record("count", 4))  // drops bulk 0
	must(t, record("bulk", 100)) // drops bulk 1: its own priority, oldest first
	for n := int64(5); n < 10; n++ {
		must(t, record("count", n)) // drop bulk 2, 3, 4, 5, 100
	}
	if err := record("bulk", 200); !errors.Is(err, device.ErrOutboxFull) {
		t.Fatalf("bulk into an outbox full of count: %v", err)
	}
	must(t, record("count", 10)) // drops count 0
	h := a.Health()
	if h.Queued != 10 || h.Drops[device.DropEvicted] != 8 || h.Drops[device.DropOutboxFull] != 1 {
		t.Fatalf("health: %+v", h)
	}
	must(t, a.Start())
	drain(t, a, 20*time.Second)
	if got := counts(t, c.stored(m, "count")); !slices.Equal(got, []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}) {
		t.Errorf("count in the cloud: %v", got)
	}
	if got := c.stored(m, "bulk"); len(got) != 0 {
		t.Errorf("bulk in the cloud: %v", got)
	}
}

// TestMaxBytes: the outbox stays within its bytes.
func TestMaxBytes(t *testing.T) {
	k := newKeys(t)
	cfg := k.config(t, newMeter(t), t.TempDir(), "")
	cfg.MaxBytes = 4000
	a := newAgent(t, cfg)
	for n := range int64(200) {
		must(t, a.Record(context.Background(), "count", policy.Reading{"ts": time.Now(), "n": n, "note": "some forty bytes of text to fill it up"}))
		if h := a.Health(); h.QueuedBytes > cfg.MaxBytes {
			t.Fatalf("after %d: %d bytes queued", n, h.QueuedBytes)
		}
	}
	h := a.Health()
	if h.Drops[device.DropEvicted] == 0 || h.Queued+int(h.Drops[device.DropEvicted]) != 200 {
		t.Fatalf("health: %+v", h)
	}
}

// TestEncryptedAtRest: the outbox file holds no reading, in a queue or
// in a formed batch, no consent record and no stream name.
func TestEncryptedAtRest(t *testing.T) {
	k := newKeys(t)
	dir := t.TempDir()
	// Delivery to a port nobody listens on forms a batch and keeps it.
	a := newAgent(t, k.config(t, newMeter(t), dir, "coaps://127.0.0.1:9"))
	ctx := context.Background()
	const marker = "marker-7c1d9e-the-reading-itself"
	signed := k.sign(t, analytics())
	must(t, a.AddConsent(ctx, signed))
	must(t, a.Record(ctx, "count", policy.Reading{"ts": time.Now(), "n": int64(1), "note": marker}))
	must(t, a.Start())
	deadline := time.Now().Add(10 * time.Second)
	for a.Health().Batches == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	must(t, a.Record(ctx, "count", policy.Reading{"ts": time.Now(), "n": int64(2), "note": marker}))
	must(t, a.Record(ctx, "power", policy.Reading{"ts": time.Now(), "watts": 1234.0, "serial": marker}))
	if h := a.Health(); h.Batches != 1 || h.Queued != 3 {
		t.Fatalf("health: %+v", h)
	}
	must(t, a.Close())
	file, err := os.ReadFile(filepath.Join(dir, device.OutboxFile))
	must(t, err)
	for _, secret := range [][]byte{[]byte(marker), []byte(owner), []byte("subject:app"), []byte("count"), []byte("power"),
		[]byte("watts"), signed[len(signed)-64:], k.hash[:]} {
		if bytes.Contains(file, secret) {
			t.Errorf("the outbox file holds %q", secret)
		}
	}
}

// TestSwapped: records moved to another place in the file do not open;
// they are dropped, counted, and never sent.
func TestSwapped(t *testing.T) {
	k := newKeys(t)
	c := startCloud(t, k, t.TempDir(), "coaps://127.0.0.1:0")
	m := c.importMeter()
	cfg := k.config(t, m, t.TempDir(), c.url)
	a := newAgent(t, cfg)
	for n := range int64(3) {
		must(t, a.Record(context.Background(), "count", tick(n)))
	}
	must(t, a.Close())

	db, err := bbolt.Open(filepath.Join(cfg.Dir, device.OutboxFile), 0o600, nil)
	must(t, err)
	must(t, db.Update(func(tx *bbolt.Tx) error {
		readings := tx.Bucket([]byte("readings"))
		var q []byte
		must(t, readings.ForEachBucket(func(k []byte) error { q = slices.Clone(k); return nil }))
		b := readings.Bucket(q)
		c := b.Cursor()
		k1, v1 := c.First()
		k2, v2 := c.Next()
		v1, v2 = slices.Clone(v1), slices.Clone(v2)
		must(t, b.Put(k1, v2))
		return b.Put(slices.Clone(k2), v1)
	}))
	must(t, db.Close())

	a = newAgent(t, cfg)
	must(t, a.Start())
	drain(t, a, 20*time.Second)
	if h := a.Health(); h.Drops[device.DropUnreadable] != 2 || h.Delivered != 1 {
		t.Fatalf("health: %+v", h)
	}
	if got := counts(t, c.stored(m, "count")); !slices.Equal(got, []int64{2}) {
		t.Fatalf("cloud holds %v", got)
	}
}

// TestCorrupt: a damaged outbox is ErrOutboxCorrupt; SetAside, or
// Config.SetAsideCorrupt, starts a new one with a new epoch.
func TestCorrupt(t *testing.T) {
	k := newKeys(t)
	m := newMeter(t)
	ctx := context.Background()
	// filled returns a directory with an outbox holding readings, and its
	// epoch.
	filled := func(t *testing.T) (string, uint64) {
		dir := t.TempDir()
		a, err := device.New(ctx, k.config(t, m, dir, ""))
		must(t, err)
		for n := range int64(300) {
			must(t, a.Record(ctx, "count", tick(n)))
		}
		epoch := a.Health().Epoch
		must(t, a.Close())
		return dir, epoch
	}
	damage := map[string]func(t *testing.T, path string){
		"garbage": func(t *testing.T, path string) {
			junk := make([]byte, 64<<10)
			rand.Read(junk)
			must(t, os.WriteFile(path, junk, 0o600))
		},
		"pages": func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			must(t, err)
			defer f.Close()
			st, err := f.Stat()
			must(t, err)
			junk := make([]byte, st.Size()-3*4096)
			rand.Read(junk)
			_, err = f.WriteAt(junk, 3*4096)
			must(t, err)
		},
		"truncated": func(t *testing.T, path string) { must(t, os.Truncate(path, 4096+100)) },
		"not an outbox": func(t *testing.T, path string) {
			must(t, os.Remove(path))
			db, err := bbolt.Open(path, 0o600, nil)
			must(t, err)
			must(t, db.Update(func(tx *bbolt.Tx) error { _, err := tx.CreateBucket([]byte("other")); return err }))
			must(t, db.Close())
		},
	}
	for name, fn := range damage {
		t.Run(name, func(t *testing.T) {
			dir, epoch := filled(t)
			fn(t, filepath.Join(dir, device.OutboxFile))
			cfg := k.config(t, m, dir, "")
			_, err := device.New(ctx, cfg)
			var oe *device.OutboxError
			if !errors.Is(err, device.ErrOutboxCorrupt) || !errors.As(err, &oe) || oe.Path != filepath.Join(dir, device.OutboxFile) {
				t.Fatalf("New: %v", err)
			}
			aside, err := device.SetAside(dir)
			must(t, err)
			if _, err := os.Stat(aside); err != nil {
				t.Fatal(err)
			}
			a := newAgent(t, cfg)
			if h := a.Health(); h.Epoch == epoch || h.Epoch == 0 || h.Queued != 0 {
				t.Fatalf("after SetAside: %+v, old epoch %d", h, epoch)
			}
			must(t, a.Record(ctx, "count", tick(1)))
		})
	}
	t.Run("wrong secret", func(t *testing.T) {
		dir, _ := filled(t)
		cfg := k.config(t, m, dir, "")
		cfg.Secret = []byte("another secret, not the device's")
		if _, err := device.New(ctx, cfg); !errors.Is(err, device.ErrOutboxCorrupt) {
			t.Fatalf("New with another secret: %v", err)
		}
	})
	t.Run("set aside by itself", func(t *testing.T) {
		dir, epoch := filled(t)
		damage["garbage"](t, filepath.Join(dir, device.OutboxFile))
		cfg := k.config(t, m, dir, "")
		cfg.SetAsideCorrupt = true
		a := newAgent(t, cfg)
		if h := a.Health(); h.Epoch == epoch || h.Queued != 0 {
			t.Fatalf("health: %+v", h)
		}
		matches, err := filepath.Glob(filepath.Join(dir, device.OutboxFile+".corrupt-*"))
		must(t, err)
		if len(matches) != 1 {
			t.Fatalf("set aside: %v", matches)
		}
	})
	t.Run("locked", func(t *testing.T) {
		cfg := k.config(t, m, t.TempDir(), "")
		newAgent(t, cfg)
		if _, err := device.New(ctx, cfg); !errors.Is(err, device.ErrOutboxLocked) {
			t.Fatalf("a second agent on the outbox: %v", err)
		}
	})
}

// TestCloudRestart: readings recorded while the cloud is down wait in the
// outbox, and once it is back (on the same directory) all of them reach
// it, in order, once each.
func TestCloudRestart(t *testing.T) {
	k := newKeys(t)
	cloudDir := t.TempDir()
	c := startCloud(t, k, cloudDir, "coaps://127.0.0.1:0")
	m := c.importMeter()
	a := newAgent(t, k.config(t, m, t.TempDir(), c.url))
	must(t, a.Start())
	ctx := context.Background()
	n := int64(0)
	for ; n < 50; n++ {
		must(t, a.Record(ctx, "count", tick(n)))
		time.Sleep(time.Millisecond)
	}
	drain(t, a, 20*time.Second)
	must(t, c.node.Close())
	start := time.Now()
	for ; n < 150; n++ {
		must(t, a.Record(ctx, "count", tick(n)))
		time.Sleep(time.Millisecond)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("recording with the cloud down took %v", d)
	}
	deadline := time.Now().Add(10 * time.Second)
	for a.Health().LastError == "" && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if h := a.Health(); h.LastError == "" || h.Queued == 0 {
		t.Fatalf("with the cloud down: %+v", h)
	}
	c = startCloud(t, k, cloudDir, "coaps://127.0.0.1:"+c.port())
	for ; n < 200; n++ {
		must(t, a.Record(ctx, "count", tick(n)))
	}
	drain(t, a, 30*time.Second)
	got := counts(t, c.stored(m, "count"))
	want := make([]int64, 200)
	for i := range want {
		want[i] = int64(i)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("cloud holds %d readings: %v", len(got), got)
	}
	if h := a.Health(); h.Delivered != 200 || len(h.Drops) != 0 || h.LastError != "" {
		t.Fatalf("health: %+v", h)
	}
}

// TestBatchKept: a batch formed before a restart is sent after it with
// the same key and bytes, before what was recorded later.
func TestBatchKept(t *testing.T) {
	k := newKeys(t)
	c := startCloud(t, k, t.TempDir(), "coaps://127.0.0.1:0")
	m := c.importMeter()
	cfg := k.config(t, m, t.TempDir(), "coaps://127.0.0.1:9")
	a := newAgent(t, cfg)
	ctx := context.Background()
	for n := range int64(5) {
		must(t, a.Record(ctx, "count", tick(n)))
	}
	must(t, a.Start())
	deadline := time.Now().Add(10 * time.Second)
	for a.Health().Batches == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	for n := int64(5); n < 8; n++ {
		must(t, a.Record(ctx, "count", tick(n)))
	}
	must(t, a.Close())
	formed := func() map[string][]byte {
		db, err := bbolt.Open(filepath.Join(cfg.Dir, device.OutboxFile), 0o600, &bbolt.Options{ReadOnly: true})
		must(t, err)
		defer db.Close()
		out := map[string][]byte{}
		must(t, db.View(func(tx *bbolt.Tx) error {
			return tx.Bucket([]byte("batches")).ForEach(func(k, v []byte) error {
				out[string(k)] = slices.Clone(v)
				return nil
			})
		}))
		return out
	}
	before := formed()
	if len(before) != 1 {
		t.Fatalf("%d batches formed", len(before))
	}

	cfg.URL = "coaps://127.0.0.1:9"
	a = newAgent(t, cfg)
	if h := a.Health(); h.Batches != 1 || h.Queued != 8 {
		t.Fatalf("after a restart: %+v", h)
	}
	must(t, a.Close())
	for seq, v := range formed() {
		if !bytes.Equal(before[seq], v) {
			t.Fatalf("batch %x changed across a restart", seq)
		}
	}
	cfg.URL = c.url
	a = newAgent(t, cfg)
	must(t, a.Start())
	drain(t, a, 20*time.Second)
	if got := counts(t, c.stored(m, "count")); !slices.Equal(got, []int64{0, 1, 2, 3, 4, 5, 6, 7}) {
		t.Fatalf("cloud holds %v", got)
	}
	gaps, err := c.node.Store().ListGaps(ctx, m.id)
	must(t, err)
	if len(gaps) != 0 {
		t.Fatalf("gaps in the sequence numbers: %+v", gaps)
	}
}
