package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
)

// Interop tests against libcoap's example client and server (Debian's
// libcoap3-bin, built with OpenSSL), over loopback only. libcoap 4.3.1's
// coap-client exits 0 even when the handshake fails or the response is an
// error, so the tests judge by what it prints: the payload of a 2.xx
// response goes to -o's file, an error code and its diagnostic to stderr,
// and with -v 7 its debug log (each PDU, as "v:1 t:ACK c:2.04 ...") to
// stdout.

// needLibcoap returns the path of a libcoap tool, or skips the test.
func needLibcoap(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") == "true" {
			// .ci/run installs libcoap3-bin: in CI a missing tool is a failure.
			t.Fatalf("%s not found in CI", tool)
		}
		t.Skipf("%s not found; install Debian's libcoap3-bin to run libcoap interop tests", tool)
	}
	return p
}

// coapClient runs libcoap's coap-client-openssl with args, for at most
// timeout, and returns the payload of its response (-o file), its stdout
// (the debug log) and its stderr.
func coapClient(t *testing.T, timeout time.Duration, args ...string) (payload []byte, stdout, stderr string) {
	t.Helper()
	bin := needLibcoap(t, "coap-client-openssl")
	out := filepath.Join(t.TempDir(), "payload")
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// -B bounds libcoap's own wait; the context bounds the process.
	wait := strconv.Itoa(max(1, int(timeout/time.Second)-1))
	cmd := exec.CommandContext(ctx, bin, append([]string{"-v", "7", "-B", wait, "-o", out}, args...)...)
	cmd.WaitDelay = time.Second
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	if err := cmd.Run(); err != nil {
		t.Logf("coap-client-openssl %s: %v", strings.Join(printable(args), " "), err)
	}
	payload, err := os.ReadFile(out)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return payload, so.String(), se.String()
}

// printable quotes arguments that are not printable ASCII (raw keys).
func printable(args []string) []string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = a
		for _, c := range []byte(a) {
			if c < 0x21 || c > 0x7e {
				q[i] = strconv.Quote(a)
				break
			}
		}
	}
	return q
}

// pskDevice returns a device ID and its DerivePSK key. libcoap 4.3.1 reads
// -k as a C string (no hex form), so the raw key goes on the command line
// as it is, and must not hold a zero byte.
func pskDevice(t *testing.T) (identity.ID, []byte) {
	t.Helper()
	for range 100 {
		id, err := identity.IDOf(mustKey(t))
		must(t, err)
		key, err := DerivePSK(fleetSecret, id)
		must(t, err)
		if !bytes.Contains(key, []byte{0}) {
			return id, key
		}
	}
	t.Fatal("no PSK without a zero byte in 100 devices")
	return identity.ID{}, nil
}

func TestInteropLibcoapClientWellKnownCore(t *testing.T) {
	t.Parallel()
	needLibcoap(t, "coap-client-openssl")
	f := newFixture(t, "coap", ServerConfig{})
	payload, stdout, stderr := coapClient(t, 4*time.Second, "-m", "get", f.url+"/.well-known/core")
	if !strings.Contains(stdout, "c:2.05") || !strings.Contains(stdout, "Content-Format:application/link-format") {
		t.Errorf("no 2.05 link-format response in libcoap's log:\n%s\nstderr %q", stdout, stderr)
	}
	for _, want := range []string{"</v1/telemetry>", `</v1/status>`, `</v1/auth>;rt="sensible.auth"`} {
		if !strings.Contains(string(payload), want) {
			t.Errorf("/.well-known/core lacks %s:\npayload %q\nstdout %q\nstderr %q", want, payload, stdout, stderr)
		}
	}
}

// TestInteropLibcoapClientDiagnostic: libcoap's client prints an error's
// diagnostic as it is, for it is UTF-8 text without a content-format (RFC
// 7252 section 5.5.2); as a CBOR text string it printed a stray byte
// before it.
func TestInteropLibcoapClientDiagnostic(t *testing.T) {
	t.Parallel()
	needLibcoap(t, "coap-client-openssl")
	f := newFixture(t, "coap", ServerConfig{})
	const diag = "no consent for purpose analytics"
	must(t, f.srv.Handle(Resource{Path: "/v1/refuse", Public: true,
		Handler: func(context.Context, *Request) (any, error) { return nil, Errorf(Forbidden, diag) }}))
	payload, stdout, stderr := coapClient(t, 4*time.Second, "-m", "get", f.url+"/v1/refuse")
	if stderr != "4.03 "+diag+"\n" {
		t.Errorf("libcoap printed %q, want %q", stderr, "4.03 "+diag+"\n")
	}
	if len(payload) > 0 {
		t.Errorf("an error response's diagnostic went to the payload file: %q", payload)
	}
	for _, line := range strings.Split(stdout, "\n") {
		if strings.Contains(line, "c:4.03") && (strings.Contains(line, "Content-Format") || !strings.HasSuffix(line, ":: '"+diag+"'")) {
			t.Errorf("the 4.03 PDU in libcoap's log is %q, want no Content-Format and the text as payload", line)
		}
	}
	if !strings.Contains(stdout, "c:4.03") {
		t.Errorf("no 4.03 in libcoap's log:\n%s", stdout)
	}
}

// probe is a protected resource that records who called it.
type probe struct {
	calls atomic.Int32
	mu    sync.Mutex
	devs  []identity.ID
}

func (p *probe) resource() Resource {
	return Resource{
		Path: "/v1/probe", Methods: []Method{POST}, MaxBody: 1024,
		Handler: func(ctx context.Context, r *Request) (any, error) {
			p.calls.Add(1)
			dev, ok := DeviceFrom(ctx)
			p.mu.Lock()
			p.devs = append(p.devs, dev)
			p.mu.Unlock()
			if !ok {
				return nil, Errorf(Unauthorized, "no device")
			}
			var in []reading
			if err := r.Decode(&in); err != nil {
				return nil, err
			}
			return ack{Device: dev.String(), Count: len(in)}, nil
		},
	}
}

func (p *probe) devices() []identity.ID {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]identity.ID(nil), p.devs...)
}

func TestInteropLibcoapClientPSK(t *testing.T) {
	t.Parallel()
	needLibcoap(t, "coap-client-openssl")
	dev, key := pskDevice(t)
	f := newFixture(t, "coaps", ServerConfig{
		PSK: func(_ context.Context, id identity.ID) ([]byte, error) {
			if id != dev {
				return nil, identity.ErrUnknownDevice
			}
			return DerivePSK(fleetSecret, id)
		},
	})
	var p probe
	must(t, f.srv.Handle(p.resource()))
	body, err := codec.Marshal([]reading{{"power", 41.5}, {"power", 42}})
	must(t, err)
	file := filepath.Join(t.TempDir(), "body.cbor")
	must(t, os.WriteFile(file, body, 0o600))
	url := f.url + "/v1/probe"

	t.Run("right key", func(t *testing.T) {
		payload, stdout, stderr := coapClient(t, 4*time.Second,
			"-m", "post", "-t", "60", "-f", file, "-u", dev.String(), "-k", string(key), url)
		if len(payload) == 0 {
			t.Fatalf("no 2.xx response payload:\nstdout %s\nstderr %q", stdout, stderr)
		}
		var got ack
		if err := codec.Unmarshal(payload, &got); err != nil {
			t.Fatalf("no 2.xx CBOR response (%v):\npayload %x\nstdout %s\nstderr %q", err, payload, stdout, stderr)
		}
		if !strings.Contains(stdout, "c:2.04") {
			t.Errorf("no 2.04 in libcoap's log:\n%s", stdout)
		}
		if got.Device != dev.String() || got.Count != 2 {
			t.Fatalf("response %+v, want device %s count 2", got, dev)
		}
		if devs := p.devices(); len(devs) != 1 || devs[0] != dev {
			t.Fatalf("handler saw devices %v, want [%s]", devs, dev)
		}
	})
	t.Run("wrong key", func(t *testing.T) {
		before := p.calls.Load()
		wrong := bytes.Repeat([]byte{'7'}, PSKSize)
		payload, stdout, stderr := coapClient(t, 3*time.Second,
			"-m", "post", "-t", "60", "-f", file, "-u", dev.String(), "-k", string(wrong), url)
		if len(payload) > 0 || strings.Contains(stdout, "c:2.") || strings.Contains(stdout, "session connected") {
			t.Fatalf("a wrong key got through:\npayload %x\nstdout %s\nstderr %q", payload, stdout, stderr)
		}
		if n := p.calls.Load() - before; n != 0 {
			t.Fatalf("handler reached %d times with a wrong key", n)
		}
	})
}

// libcoapServer is a running coap-server-openssl.
type libcoapServer struct {
	port int // coap://; coaps:// is port+1
	done chan struct{}
	mu   sync.Mutex
	out  bytes.Buffer
}

func (s *libcoapServer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.Write(p)
}

func (s *libcoapServer) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// freePortPair finds a port p on 127.0.0.1 such that p and p+1 are free
// for both UDP and TCP: coap-server listens on p (coap, coap+tcp) and p+1
// (coaps, coaps+tcp).
func freePortPair(t *testing.T) int {
	t.Helper()
	for range 50 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		must(t, err)
		p := pc.LocalAddr().(*net.UDPAddr).Port
		closers := []func() error{pc.Close}
		ok := p < 65535
		if ok {
			if c, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p+1)); err == nil {
				closers = append(closers, c.Close)
			} else {
				ok = false
			}
		}
		for _, port := range []int{p, p + 1} {
			if !ok {
				break
			}
			if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
				closers = append(closers, l.Close)
			} else {
				ok = false
			}
		}
		for _, c := range closers {
			c()
		}
		if ok {
			return p
		}
	}
	t.Fatal("no free pair of loopback ports")
	return 0
}

// startLibcoapServer runs coap-server-openssl on loopback with PSK key,
// waits until it answers coap:// and stops it when the test ends.
func startLibcoapServer(t *testing.T, key []byte) *libcoapServer {
	t.Helper()
	bin := needLibcoap(t, "coap-server-openssl")
	for attempt := 0; ; attempt++ {
		s := &libcoapServer{port: freePortPair(t), done: make(chan struct{})}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		cmd := exec.CommandContext(ctx, bin, "-A", "127.0.0.1", "-p", strconv.Itoa(s.port),
			"-k", string(key), "-h", "sensible")
		cmd.Stdout, cmd.Stderr = s, s
		cmd.WaitDelay = time.Second
		must(t, cmd.Start())
		go func() {
			cmd.Wait()
			close(s.done)
		}()
		stop := func() {
			cancel() // kills the process
			<-s.done
		}
		err := s.waitReady()
		if err == nil {
			t.Cleanup(stop)
			return s
		}
		stop()
		if attempt == 2 {
			t.Fatalf("coap-server-openssl on port %d: %v\n%s", s.port, err, s.output())
		}
		t.Logf("coap-server-openssl on port %d: %v; trying another port\n%s", s.port, err, s.output())
	}
}

// waitReady retries a GET of / over coap:// for up to 3 s. Every endpoint
// is bound before coap-server answers, coaps:// included.
func (s *libcoapServer) waitReady() error {
	deadline := time.Now().Add(3 * time.Second)
	url := fmt.Sprintf("coap://127.0.0.1:%d", s.port)
	for {
		select {
		case <-s.done:
			return errors.New("exited")
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		c, err := Dial(ctx, url, ClientConfig{Retry: RetryPolicy{Attempts: 1}})
		if err == nil {
			_, _, err = c.GetRaw(ctx, "/")
			c.Close()
		}
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not answering: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestInteropClientWithLibcoapServer(t *testing.T) {
	t.Parallel()
	needLibcoap(t, "coap-server-openssl")
	dev, key := pskDevice(t)
	s := startLibcoapServer(t, key)

	check := func(t *testing.T, c *Client) {
		t.Helper()
		cf, body, err := c.GetRaw(ctx5(t), "/")
		if err != nil {
			t.Fatalf("GET /: %v", err)
		}
		if cf != 0 || !strings.Contains(string(body), "libcoap") {
			t.Fatalf("GET / = %d %q, want text/plain from libcoap", cf, body)
		}
		cf, body, err = c.GetRaw(ctx5(t), "/.well-known/core")
		if err != nil {
			t.Fatalf("GET /.well-known/core: %v", err)
		}
		if cf != LinkFormat || !strings.Contains(string(body), "</time>") {
			t.Fatalf("GET /.well-known/core = %d %q, want link-format with </time>", cf, body)
		}
		// A CBOR body goes out and an error response comes back as an
		// *Error: libcoap's / answers GET only.
		err = c.DoRaw(ctx5(t), POST, "/", CBOR, []byte{0x81, 0x01}, nil)
		var e *Error
		if !errors.Is(err, ErrMethodNotAllowed) || !errors.As(err, &e) || e.Diagnostic != "Method Not Allowed" {
			t.Fatalf("POST / = %v, want 4.05 with libcoap's diagnostic", err)
		}
		// libcoap sends its diagnostics as RFC 7252 has them: plain
		// text without a content-format.
		err = c.Get(ctx5(t), "/nothing", nil)
		if !errors.Is(err, ErrNotFound) || !errors.As(err, &e) || e.Diagnostic != "Not Found" {
			t.Fatalf("GET /nothing = %#v, want 4.04 with libcoap's diagnostic", err)
		}
	}

	t.Run("coap", func(t *testing.T) {
		c, err := Dial(ctx5(t), fmt.Sprintf("coap://127.0.0.1:%d", s.port), ClientConfig{})
		must(t, err)
		defer c.Close()
		check(t, c)
	})
	t.Run("coaps PSK", func(t *testing.T) {
		c, err := Dial(ctx5(t), fmt.Sprintf("coaps://127.0.0.1:%d", s.port+1), ClientConfig{PSK: key, Device: dev})
		if err != nil {
			t.Fatalf("%v\ncoap-server-openssl:\n%s", err, s.output())
		}
		defer c.Close()
		check(t, c)
	})
	t.Run("coaps wrong key", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		cfg := ClientConfig{PSK: bytes.Repeat([]byte{'7'}, PSKSize), Device: dev, Retry: RetryPolicy{Attempts: 1}}
		c, err := Dial(ctx, fmt.Sprintf("coaps://127.0.0.1:%d", s.port+1), cfg)
		if err == nil {
			defer c.Close()
			if _, _, err = c.GetRaw(ctx, "/"); err == nil {
				t.Fatal("DTLS-PSK with a wrong key reached libcoap's resource")
			}
		}
		t.Logf("wrong key: %v", err)
	})
}
