package device_test

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/transport"
)

// childEnv, when set, makes the test binary a recording device (see
// recorder) configured by the file it names, rather than run the tests.
const childEnv = "SENSIBLE_DEVICE_CHILD"

func TestMain(m *testing.M) {
	if path := os.Getenv(childEnv); path != "" {
		os.Exit(recorder(path))
	}
	os.Exit(m.Run())
}

// A childConfig is what a recording child needs to know.
type childConfig struct {
	Dir      string
	URL      string
	Device   string
	PSK      []byte
	Secret   []byte
	Manifest []byte
	Maker    []byte // the maker's Ed25519 public key
	Run      int64
	Interval time.Duration
}

// recorder records a reading of the count stream every Interval, n
// being Run·10⁶ and up, and prints each n once Record returned, until
// it is killed. It delivers as it goes.
func recorder(path string) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "recorder:", err)
		return 2
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fail(err)
	}
	var cc childConfig
	if err := json.Unmarshal(data, &cc); err != nil {
		return fail(err)
	}
	id, err := identity.ParseID(cc.Device)
	if err != nil {
		return fail(err)
	}
	var makers consent.KeySet
	if err := makers.Add(consent.TrustedKey{KID: []byte("maker-1"), Key: ed25519.PublicKey(cc.Maker), Role: consent.ControllerKey}); err != nil {
		return fail(err)
	}
	ctx := context.Background()
	a, err := device.New(ctx, device.Config{
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Dir:    cc.Dir, Manifest: cc.Manifest, Makers: &makers, Device: id, Secret: cc.Secret, URL: cc.URL,
		Transport:   transport.ClientConfig{PSK: cc.PSK, Retry: transport.RetryPolicy{Attempts: 2, Timeout: 2 * time.Second}},
		RetryBase:   20 * time.Millisecond,
		RetryMax:    250 * time.Millisecond,
		MaxReadings: 10_000_000,
		MaxBytes:    1 << 30,
	})
	if err != nil {
		return fail(err)
	}
	if err := a.Start(); err != nil {
		return fail(err)
	}
	out := bufio.NewWriterSize(os.Stdout, 64)
	deadline := time.Now().Add(time.Minute) // never outlive a parent that died
	for i := int64(0); time.Now().Before(deadline); i++ {
		n := cc.Run*1_000_000 + i
		if err := a.Record(ctx, "count", policy.Reading{"ts": time.Now(), "n": n}); err != nil {
			return fail(err)
		}
		fmt.Fprintln(out, n)
		out.Flush()
		time.Sleep(cc.Interval)
	}
	return 0
}

// TestKill9 kills a recording device with SIGKILL at random moments, over
// and over, starts it again on the same outbox, and at last drains it:
// every reading whose Record returned is in the cloud exactly once, no
// reading is there twice, and each stream's readings are in the order
// recorded.
//
// SENSIBLE_KILL_ITERATIONS sets how many times (20 by default); for a
// thousand:
//
//	SENSIBLE_KILL_ITERATIONS=1000 go test -run TestKill9 -timeout 3h ./device/
func TestKill9(t *testing.T) {
	iterations := 20
	if s := os.Getenv("SENSIBLE_KILL_ITERATIONS"); s != "" {
		var err error
		if iterations, err = strconv.Atoi(s); err != nil {
			t.Fatal(err)
		}
	}
	if testing.Short() {
		iterations = 3
	}
	k := newKeys(t)
	c := startCloud(t, k, t.TempDir(), "coaps://127.0.0.1:0")
	m := c.importMeter()
	psk, err := transport.DerivePSK(k.fleet, m.id)
	must(t, err)
	cc := childConfig{
		Dir: t.TempDir(), URL: c.url, Device: m.id.String(), PSK: psk, Secret: []byte("the meter's own secret, 32 bytes"),
		Manifest: k.signed, Maker: k.maker.Public().(ed25519.PublicKey),
	}
	acked := map[int64]bool{}
	for run := 1; run <= iterations; run++ {
		// Every other run records as fast as it can, so that most kills
		// land in the middle of a commit.
		cc.Run, cc.Interval = int64(run), time.Duration(run%2)*time.Millisecond
		path := filepath.Join(t.TempDir(), "child.json")
		data, err := json.Marshal(cc)
		must(t, err)
		must(t, os.WriteFile(path, data, 0o600))
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+path)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		must(t, err)
		must(t, cmd.Start())
		var lines []int64
		var wg sync.WaitGroup
		wg.Go(func() {
			s := bufio.NewScanner(stdout)
			for s.Scan() {
				if n, err := strconv.ParseInt(s.Text(), 10, 64); err == nil {
					lines = append(lines, n)
				}
			}
		})
		time.Sleep(50*time.Millisecond + rand.N(450*time.Millisecond))
		must(t, cmd.Process.Signal(syscall.SIGKILL))
		wg.Wait()
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("run %d ended by itself (%v): %s", run, err, stderr.String())
		}
		for _, n := range lines {
			acked[n] = true
		}
		if stderr.Len() > 0 {
			t.Errorf("run %d: %s", run, stderr.String())
		}
		t.Logf("run %d: %d readings recorded before the kill", run, len(lines))
	}

	// Drain what is left with an agent of the same device.
	var makers consent.KeySet
	must(t, makers.Add(consent.TrustedKey{KID: []byte("maker-1"), Key: k.maker.Public(), Role: consent.ControllerKey}))
	a := newAgent(t, device.Config{Dir: cc.Dir, Manifest: k.signed, Makers: &makers, Device: m.id, Secret: cc.Secret, URL: c.url,
		Transport: transport.ClientConfig{PSK: psk, Retry: transport.RetryPolicy{Attempts: 2, Timeout: 2 * time.Second}},
		RetryBase: 20 * time.Millisecond, RetryMax: 250 * time.Millisecond, MaxReadings: 10_000_000, MaxBytes: 1 << 30})
	must(t, a.Start())
	drain(t, a, time.Minute)
	h := a.Health()
	if len(h.Drops) != 0 {
		t.Fatalf("drops: %+v", h)
	}

	stored := counts(t, c.stored(m, "count"))
	seen := map[int64]bool{}
	for i, n := range stored {
		if seen[n] {
			t.Errorf("reading %d is stored twice", n)
		}
		seen[n] = true
		if i > 0 && n <= stored[i-1] {
			t.Errorf("reading %d stored after %d", n, stored[i-1])
		}
	}
	lost := 0
	for n := range acked {
		if !seen[n] {
			lost++
			if lost < 10 {
				t.Errorf("reading %d: Record returned, but the cloud does not hold it", n)
			}
		}
	}
	if lost > 0 {
		gaps, err := c.node.Store().ListGaps(context.Background(), m.id)
		must(t, err)
		t.Fatalf("%d of %d acknowledged readings lost; the cloud holds %d; epoch %d; gaps in the sequence numbers: %+v",
			lost, len(acked), len(stored), h.Epoch, gaps)
	}
	t.Logf("%d kills: Record returned for %d readings; the cloud holds %d, %d of them delivered by the children, %d at the end; %d were durable but killed before they were printed",
		iterations, len(acked), len(stored), len(stored)-int(h.Delivered), h.Delivered, len(stored)-len(acked))
	if len(acked) == 0 {
		t.Fatal("no reading was recorded: the children never got going")
	}
}
