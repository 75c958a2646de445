package cloud

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// soon is how long a change may take to reach an observing device.
const soon = time.Second

// schemes are the transports the back-channel tests run over: DTLS with
// the device's PSK, and TLS with device tokens.
var schemes = []string{"coaps", "coaps+tcp"}

// testClock is a clock the test moves.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// clockedNode starts a node on SQLite in a temporary directory, like
// testNode, on a clock the test moves, admitting the devices whose
// certificates factory issues (zero-touch).
func clockedNode(t *testing.T) (n *Node, clock *testClock, factory *identity.CA) {
	t.Helper()
	clock = &testClock{now: time.Now()}
	rootKey, _ := newDeviceKey(t)
	factory, err := identity.NewRootCA(rootKey, "Test Factory", nil)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(factory.Cert)
	ctx := context.Background()
	n, err = New(ctx, Config{Dir: t.TempDir(), FleetSecret: testFleetSecret, Now: clock.Now, DeviceRoots: roots})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if err := n.Store().AddModel(ctx, store.Model{ID: "acme-aircon-x1", Name: "Acme Aircon X1"}); err != nil {
		t.Fatal(err)
	}
	return n, clock, factory
}

// A testDevice is a device imported into a node.
type testDevice struct {
	key crypto.Signer
	id  identity.ID
}

func importDevice(t *testing.T, n *Node) testDevice {
	t.Helper()
	key, id := newDeviceKey(t)
	if _, err := n.ImportDevice(context.Background(), ImportedDevice{Key: key.Public(), Model: "acme-aircon-x1"}); err != nil {
		t.Fatal(err)
	}
	return testDevice{key, id}
}

// listen makes n listen on scheme, on a free loopback port.
func listen(t *testing.T, n *Node, scheme string) string {
	t.Helper()
	u, err := n.Listen(scheme + "://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// dial connects d to n at url: coaps:// with d's PSK, coaps+tcp:// with
// d's tokens.
func (d testDevice) dial(t *testing.T, n *Node, url string) *transport.Client {
	t.Helper()
	var cfg transport.ClientConfig
	if strings.HasPrefix(url, "coaps+tcp:") {
		cfg.Signer, cfg.Audience, cfg.ServerRoots = d.key, DefaultTokenAudience, serverRoots(n)
	} else {
		cfg.PSK, _ = transport.DerivePSK(testFleetSecret, d.id)
		cfg.Device = d.id
	}
	return dialURL(t, url, cfg)
}

// dialURL connects to url with cfg and closes the client at the end of
// the test.
func dialURL(t *testing.T, url string, cfg transport.ClientConfig) *transport.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg.Retry = transport.RetryPolicy{Attempts: 2, Timeout: 3 * time.Second}
	c, err := transport.Dial(ctx, url, cfg)
	if err != nil {
		t.Fatalf("dialing %s: %v", url, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// observe registers for path and returns the values notified, decoded
// into T, starting with the answer to the registration. News of missed
// notifications (a reconnect) is skipped; an ended observation fails the
// test.
func observe[T any](t *testing.T, c *transport.Client, path string) <-chan T {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch := make(chan T, 64)
	_, err := c.Observe(ctx, path, func(nt transport.Notification) {
		if errors.Is(nt.Err, transport.ErrMissedNotifications) {
			return
		}
		var v T
		if err := nt.Decode(&v); err != nil {
			t.Errorf("notification of %s: %v", path, err)
			return
		}
		select {
		case ch <- v:
		default:
			t.Errorf("notifications of %s not read", path)
		}
	})
	if err != nil {
		t.Fatalf("observing %s: %v", path, err)
	}
	return ch
}

// next returns the first value from ch for which ok holds, failing the
// test unless one comes within soon.
func next[T any](t *testing.T, ch <-chan T, what string, ok func(T) bool) T {
	t.Helper()
	timeout := time.After(soon)
	for {
		select {
		case v := <-ch:
			if ok(v) {
				return v
			}
		case <-timeout:
			t.Fatalf("no notification of %s within %v", what, soon)
		}
	}
}

// isCode reports whether err is a CoAP error response with code c.
func isCode(err error, c transport.Code) bool {
	return errors.Is(err, &transport.Error{Code: c})
}

func TestDeviceStateDelta(t *testing.T) {
	for _, tc := range []struct {
		name              string
		desired, reported protocol.Settings
		want              protocol.Settings
	}{
		{"none desired", nil, protocol.Settings{"fan": int64(2)}, nil},
		{"in force", protocol.Settings{"mode": "cool", "eco": true}, protocol.Settings{"mode": "cool", "eco": true, "fan": int64(2)}, nil},
		{"not reported", protocol.Settings{"mode": "cool"}, nil, protocol.Settings{"mode": "cool"}},
		{"other value", protocol.Settings{"mode": "cool", "fan": int64(3)}, protocol.Settings{"mode": "cool", "fan": int64(2)}, protocol.Settings{"fan": int64(3)}},
		{"other type", protocol.Settings{"eco": true}, protocol.Settings{"eco": "true"}, protocol.Settings{"eco": true}},
		{"integer as float", protocol.Settings{"target_c": int64(22)}, protocol.Settings{"target_c": 22.0}, nil},
		{"float as integer", protocol.Settings{"target_c": 22.0}, protocol.Settings{"target_c": int64(22)}, nil},
		{"float not integer", protocol.Settings{"target_c": 22.5}, protocol.Settings{"target_c": int64(22)}, protocol.Settings{"target_c": 22.5}},
		{"beyond int64", protocol.Settings{"n": int64(1<<63 - 1)}, protocol.Settings{"n": float64(1 << 63)}, protocol.Settings{"n": int64(1<<63 - 1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := DeviceState{Desired: protocol.Desired{Version: 1, Settings: tc.desired}, Reported: protocol.Reported{Version: 1, Settings: tc.reported}}
			if got := s.Delta(); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Delta = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestState: a device observing /v1/state hears of a desired change at
// once; its report on the current version is stored and the delta
// follows from it, one on a stale version is refused with 4.12.
func TestState(t *testing.T) {
	for _, scheme := range schemes {
		t.Run(scheme, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			n := testNode(t)
			d := importDevice(t, n)
			c := d.dial(t, n, listen(t, n, scheme))
			states := observe[protocol.Desired](t, c, protocol.StatePath)
			if got := next(t, states, "the desired state", func(protocol.Desired) bool { return true }); got.Version != 0 || len(got.Settings) != 0 {
				t.Fatalf("desired state before any: %+v", got)
			}

			want := protocol.Settings{"mode": "cool", "target_c": 22.5, "fan": int64(2)}
			v, err := n.SetDesired(ctx, d.id, want, 0)
			if err != nil || v != 1 {
				t.Fatalf("SetDesired = %d, %v", v, err)
			}
			got := next(t, states, "desired version 1", func(d protocol.Desired) bool { return d.Version == 1 })
			if got.Fetch || !reflect.DeepEqual(got.Settings, want) {
				t.Fatalf("notified %+v, want settings %v", got, want)
			}

			// A report on a version that is not the current one.
			stale := protocol.Reported{Version: 0, Settings: protocol.Settings{"mode": "heat"}}
			if err := c.Post(ctx, protocol.StatePath, stale, nil); !isCode(err, preconditionFailed) {
				t.Fatalf("report on a stale version: %v, want 4.12", err)
			}
			rep := protocol.Reported{
				Version:  1,
				Settings: protocol.Settings{"mode": "cool", "target_c": 22.5, "fan": int64(3)},
				Errors:   map[string]string{"fan": "speed 2 is not available in cool mode"},
			}
			if err := c.Post(ctx, protocol.StatePath, rep, nil); err != nil {
				t.Fatalf("report: %v", err)
			}
			s, err := n.State(ctx, d.id)
			if err != nil {
				t.Fatal(err)
			}
			if s.ReportedVersion != 1 || !reflect.DeepEqual(s.Reported, rep) || s.Desired.Version != 1 {
				t.Fatalf("State = %+v, want the report %+v", s, rep)
			}
			if delta, err := n.StateDelta(ctx, d.id); err != nil || !reflect.DeepEqual(delta, protocol.Settings{"fan": int64(2)}) {
				t.Fatalf("StateDelta = %v, %v; want fan 2", delta, err)
			}

			// Setting the desired state against a version.
			if v, err := n.SetDesired(ctx, d.id, protocol.Settings{"mode": "cool", "fan": int64(3)}, 1); err != nil || v != 2 {
				t.Fatalf("SetDesired on version 1 = %d, %v", v, err)
			}
			var se *store.StaleError
			if _, err := n.SetDesired(ctx, d.id, protocol.Settings{"mode": "heat"}, 1); !errors.As(err, &se) || se.Current != 2 {
				t.Fatalf("SetDesired on a stale version: %v, want a StaleError at 2", err)
			}
			next(t, states, "desired version 2", func(d protocol.Desired) bool { return d.Version == 2 })
			if err := c.Post(ctx, protocol.StatePath, rep, nil); !isCode(err, preconditionFailed) {
				t.Fatalf("report on version 1 after 2: %v, want 4.12", err)
			}
			if err := c.Post(ctx, protocol.StatePath, protocol.Reported{Version: 2, Settings: protocol.Settings{"mode": "cool", "fan": int64(3)}}, nil); err != nil {
				t.Fatal(err)
			}
			if delta, err := n.StateDelta(ctx, d.id); err != nil || delta != nil {
				t.Fatalf("StateDelta in the desired state = %v, %v", delta, err)
			}
		})
	}
}

// TestStateLimits: a report over the body limit is 4.13; SetDesired
// refuses a document over the store's limit and settings a device could
// not decode; a desired state too large for a notification is notified
// with Fetch and comes whole with a GET (block-wise over DTLS).
func TestStateLimits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := testNode(t)
	d := importDevice(t, n)
	c := d.dial(t, n, listen(t, n, "coaps"))

	big := protocol.Reported{Settings: protocol.Settings{"note": strings.Repeat("x", protocol.MaxBody)}}
	if err := c.Post(ctx, protocol.StatePath, big, nil); !errors.Is(err, transport.ErrTooLarge) {
		t.Fatalf("report over %d bytes: %v, want 4.13", protocol.MaxBody, err)
	}
	var tl *store.TooLargeError
	huge := protocol.Settings{"note": strings.Repeat("x", store.MaxDocument)}
	if _, err := n.SetDesired(ctx, d.id, huge, 0); !errors.As(err, &tl) || !errors.Is(err, store.ErrTooLarge) {
		t.Fatalf("SetDesired over %d bytes: %v, want a TooLargeError", store.MaxDocument, err)
	}
	many := protocol.Settings{}
	for i := range 300 {
		many[strconv.Itoa(i)] = true
	}
	for name, s := range map[string]protocol.Settings{
		"nested":      {"schedule": []int{1, 2}},
		"not UTF-8":   {"mode": "\xff"},
		"300 entries": many,
	} {
		if _, err := n.SetDesired(ctx, d.id, s, 0); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("SetDesired %s: %v, want ErrInvalid", name, err)
		}
	}
	if _, err := n.SetDesired(ctx, identity.ID{1}, protocol.Settings{"mode": "cool"}, 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetDesired of an unknown device: %v, want ErrNotFound", err)
	}

	states := observe[protocol.Desired](t, c, protocol.StatePath)
	next(t, states, "the desired state", func(protocol.Desired) bool { return true })
	large := protocol.Settings{}
	for _, k := range []string{"a", "b", "c"} {
		large[k] = strings.Repeat(k, protocol.MaxNotificationBody/2)
	}
	v, err := n.SetDesired(ctx, d.id, large, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := next(t, states, "a large desired state", func(d protocol.Desired) bool { return d.Version == v })
	if !got.Fetch || got.Settings != nil {
		t.Fatalf("notified %+v, want only the version and Fetch", got)
	}
	var whole protocol.Desired
	if err := c.Get(ctx, protocol.StatePath, &whole); err != nil {
		t.Fatal(err)
	}
	if whole.Version != v || whole.Fetch || !reflect.DeepEqual(whole.Settings, large) {
		t.Fatalf("GET after Fetch: version %d, fetch %v, %d settings", whole.Version, whole.Fetch, len(whole.Settings))
	}
}

// TestBackChannelRefuses: a device admitted by its manufacturer chain
// that has not enrolled gets 4.04 from /v1/state and /v1/commands; a
// device suspended while its session lasts (as through another node)
// gets 4.01.
func TestBackChannelRefuses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, _, factory := clockedNode(t)

	key, _ := newDeviceKey(t)
	csr, err := identity.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := factory.IssueDevice(csr, nil)
	if err != nil {
		t.Fatal(err)
	}
	chain := &tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
	stranger := dialURL(t, listen(t, n, "coaps+tcp"), transport.ClientConfig{Certificate: chain, ServerRoots: serverRoots(n)})
	for _, path := range []string{protocol.StatePath, protocol.CommandsPath} {
		if err := stranger.Get(ctx, path, nil); !errors.Is(err, transport.ErrNotFound) {
			t.Errorf("GET %s by a device not enrolled: %v, want 4.04", path, err)
		}
	}
	if err := stranger.Post(ctx, protocol.StatePath, protocol.Reported{}, nil); !errors.Is(err, transport.ErrNotFound) {
		t.Errorf("POST %s by a device not enrolled: %v, want 4.04", protocol.StatePath, err)
	}

	d := importDevice(t, n)
	c := d.dial(t, n, listen(t, n, "coaps"))
	if err := c.Get(ctx, protocol.StatePath, nil); err != nil {
		t.Fatal(err)
	}
	if err := n.Store().SetStanding(ctx, d.id, store.Suspended, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{protocol.StatePath, protocol.CommandsPath} {
		if err := c.Get(ctx, path, nil); !errors.Is(err, transport.ErrUnauthorized) {
			t.Errorf("GET %s by a suspended device: %v, want 4.01", path, err)
		}
	}
	if err := c.Post(ctx, protocol.CommandsPath, protocol.CommandResult{Status: protocol.Done}, nil); !errors.Is(err, transport.ErrUnauthorized) {
		t.Errorf("POST %s by a suspended device: %v, want 4.01", protocol.CommandsPath, err)
	}
}
