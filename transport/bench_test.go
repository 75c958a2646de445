package transport

// Benchmarks of the transport against raw go-coap, on loopback, and the
// wire-size and memory figures recorded in BENCHMARKS.md. See the
// "Transport (transport)" section there for the commands and results.

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	dtlsnet "github.com/pion/dtls/v3/pkg/net"
	"github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/mux"
	coapnet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/tcp"
	tcpclient "github.com/plgd-dev/go-coap/v3/tcp/client"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"
	"github.com/plgd-dev/go-coap/v3/udp/coder"

	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
)

// benchReading is one 5-field sensor reading, the payload of every
// benchmark request.
type benchReading struct {
	TS   int64   `cbor:"ts" json:"ts"`
	Temp float64 `cbor:"temp" json:"temp"`
	Hum  float64 `cbor:"hum" json:"hum"`
	CO2  int     `cbor:"co2" json:"co2"`
	PM25 int     `cbor:"pm25" json:"pm25"`
}

var benchSample = benchReading{TS: 1763900000, Temp: 21.5, Hum: 40.2, CO2: 612, PM25: 8}

// benchAck is the small answer to a reading.
type benchAck struct {
	N int `cbor:"n"`
}

// benchPath is the resource the benchmarks post to, ours and raw.
const benchPath = "/v1/readings"

// benchMaxBody is the body limit of the benchmark resource, ours and raw.
const benchMaxBody = 1024

// benchResource is the resource our server serves: a Typed handler that
// decodes the reading strictly and answers an ack.
func benchResource() Resource {
	return Resource{
		Path: benchPath, Methods: []Method{POST}, MaxBody: benchMaxBody,
		Handler: Typed(func(ctx context.Context, in benchReading) (benchAck, error) {
			if in.TS == 0 {
				return benchAck{}, Errorf(BadRequest, "no timestamp")
			}
			return benchAck{N: 1}, nil
		}),
	}
}

// rawBenchHandler is the same resource for raw go-coap: it reads the body,
// decodes it with the same strict decoder and limit, and answers the same
// CBOR ack.
func rawBenchHandler() mux.HandlerFunc {
	dec := mustDecoder(codec.Limits{MaxBody: benchMaxBody})
	return func(w mux.ResponseWriter, r *mux.Message) {
		body, err := r.ReadBody()
		var in benchReading
		if err != nil || dec.Unmarshal(body, &in) != nil || in.TS == 0 {
			_ = w.SetResponse(codes.BadRequest, message.TextPlain, nil)
			return
		}
		out, err := codec.Marshal(benchAck{N: 1})
		if err != nil {
			_ = w.SetResponse(codes.InternalServerError, message.TextPlain, nil)
			return
		}
		_ = w.SetResponse(codes.Changed, message.AppCBOR, bytes.NewReader(out))
	}
}

// benchServerConfig lifts the connection and handshake caps for the
// benchmarks' hundreds of clients.
func benchServerConfig() ServerConfig {
	return ServerConfig{MaxConnections: 1 << 20, MaxConnectionsPerPrefix: 1 << 20, HandshakeRate: RateLimit{PerSecond: 1e6, Burst: 1 << 20}}
}

// benchFixture is newFixture with the benchmark resource. Its token
// verifier accepts benchDevice's tokens, as many live ones as the
// benchmark has clients: every client is the same device, and the
// fixture's own verifier refuses a device's 65th live token
// (identity.DefaultMaxLiveTokens).
func benchFixture(tb testing.TB, scheme string, cfg ServerConfig) *fixture {
	tb.Helper()
	keys, err := identity.StaticKeys(benchDevice.Public())
	must(tb, err)
	cfg.Tokens, err = identity.NewTokenVerifier(identity.VerifierConfig{Audience: testAudience, Keys: keys, MaxLiveTokens: 1 << 16})
	must(tb, err)
	f := newFixture(tb, scheme, cfg)
	must(tb, f.srv.Handle(benchResource()))
	return f
}

// benchDevice signs the tokens of the benchmarks' clients on coap:// and
// coap+tcp://.
var benchDevice = func() crypto.Signer {
	k, err := identity.GenerateKey(identity.P256)
	if err != nil {
		panic(err)
	}
	return k
}()

// benchClientConfig is fixture.config(t, true) for any testing.TB: the
// fixture's device, authenticated by PSK (coaps) or its certificate
// (coaps+tcp), or benchDevice by a token (coap, coap+tcp).
func benchClientConfig(tb testing.TB, f *fixture) ClientConfig {
	cfg := ClientConfig{Audience: testAudience}
	switch f.scheme {
	case "coaps":
		psk, err := DerivePSK(fleetSecret, f.dev)
		must(tb, err)
		cfg.PSK, cfg.Device = psk, f.dev
	case "coaps+tcp":
		cfg.ServerRoots = f.pki.serverRoots
		cfg.Certificate = &f.pki.device
	default:
		cfg.Signer = benchDevice
	}
	return cfg
}

// poster is one client connection that posts the benchmark reading.
type poster interface {
	post(ctx context.Context) error
	close()
}

// oursPoster posts through our Client: CBOR encoding of the reading,
// strict decoding of the ack.
type oursPoster struct{ c *Client }

func (p oursPoster) post(ctx context.Context) error {
	var a benchAck
	if err := p.c.Post(ctx, benchPath, benchSample, &a); err != nil {
		return err
	}
	if a.N != 1 {
		return fmt.Errorf("ack %+v", a)
	}
	return nil
}

func (p oursPoster) close() { p.c.Close() }

// rawPoster posts through a raw go-coap connection, doing the same work
// around it: CBOR encoding of the reading, strict decoding of the ack.
type rawPoster struct {
	conn mux.Conn
	dec  *codec.Decoder
}

func (p rawPoster) post(ctx context.Context) error {
	body, err := codec.Marshal(benchSample)
	if err != nil {
		return err
	}
	resp, err := p.conn.Post(ctx, benchPath, message.AppCBOR, bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer p.conn.ReleaseMessage(resp)
	if resp.Code() != codes.Changed {
		return fmt.Errorf("raw response %v", resp.Code())
	}
	b, err := resp.ReadBody()
	if err != nil {
		return err
	}
	var a benchAck
	if err := p.dec.Unmarshal(b, &a); err != nil {
		return err
	}
	if a.N != 1 {
		return fmt.Errorf("ack %+v", a)
	}
	return nil
}

func (p rawPoster) close() {
	p.conn.Close()
	<-p.conn.Done()
}

// rawServer starts a raw go-coap server for scheme on loopback, serving
// rawBenchHandler through a mux.Router: udp.NewServer, dtls.NewServer with
// pion PSK and TLS_PSK_WITH_AES_128_CCM_8, or tcp.NewServer, over TLS
// with the fixture's server certificate for coaps+tcp. Apart from the idle
// timeout, raised to ours so that no connection drops mid-benchmark,
// go-coap's defaults apply. It returns the address.
func rawServer(tb testing.TB, scheme string, f *fixture) string {
	tb.Helper()
	router := mux.NewRouter()
	must(tb, router.Handle(benchPath, rawBenchHandler()))
	var serve func() error
	var stop func()
	var addr string
	switch scheme {
	case "coap":
		l, err := coapnet.NewListenUDP("udp", "127.0.0.1:0")
		must(tb, err)
		srv := udp.NewServer(options.WithMux(router),
			options.WithInactivityMonitor(DefaultIdleTimeout, func(cc *udpclient.Conn) { cc.Close() }))
		serve, stop, addr = func() error { return srv.Serve(l) }, srv.Stop, l.LocalAddr().String()
	case "coaps":
		key, err := DerivePSK(fleetSecret, f.dev)
		must(tb, err)
		l, err := coapnet.NewDTLSListener("udp", "127.0.0.1:0", coapnet.NewDTLSServerOptions(
			piondtls.WithPSK(func([]byte) ([]byte, error) { return key, nil }),
			piondtls.WithCipherSuites(piondtls.TLS_PSK_WITH_AES_128_CCM_8),
			piondtls.WithLoggerFactory(silentLogs{})))
		must(tb, err)
		srv := dtls.NewServer(options.WithMux(router),
			options.WithInactivityMonitor(DefaultIdleTimeout, func(cc *udpclient.Conn) { cc.Close() }))
		serve, stop, addr = func() error { return srv.Serve(l) }, srv.Stop, l.Addr().String()
	case "coap+tcp", "coaps+tcp":
		var l interface {
			coapnetListener
			Addr() net.Addr
		}
		var err error
		if scheme == "coaps+tcp" {
			l, err = coapnet.NewTLSListener("tcp", "127.0.0.1:0",
				&tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{f.pki.server}})
		} else {
			l, err = coapnet.NewTCPListener("tcp", "127.0.0.1:0")
		}
		must(tb, err)
		srv := tcp.NewServer(options.WithMux(router),
			options.WithInactivityMonitor(DefaultIdleTimeout, func(cc *tcpclient.Conn) { cc.Close() }))
		serve, stop, addr = func() error { return srv.Serve(l) }, srv.Stop, l.Addr().String()
	default:
		tb.Fatalf("no raw server for %s", scheme)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = serve()
	}()
	tb.Cleanup(func() {
		stop()
		<-done
	})
	return addr
}

// coapnetListener is what tcp.Server.Serve takes.
type coapnetListener interface {
	AcceptWithContext(ctx context.Context) (net.Conn, error)
	Close() error
}

// rawDial connects a raw go-coap client for scheme: udp.Dial, dtls.Dial
// with pion PSK (same suite and identity as ours, no connection ID), or
// tcp.Dial (with TLS trusting the fixture's server root for coaps+tcp).
func rawDial(scheme, addr string, f *fixture) (poster, error) {
	var conn mux.Conn
	var err error
	switch scheme {
	case "coap":
		conn, err = udp.Dial(addr)
	case "coaps":
		key, kerr := DerivePSK(fleetSecret, f.dev)
		if kerr != nil {
			return nil, kerr
		}
		conn, err = dtls.Dial(addr, dtls.NewDTLSClientOptions(
			piondtls.WithPSK(func([]byte) ([]byte, error) { return key, nil }),
			piondtls.WithPSKIdentityHint([]byte(f.dev.String())),
			piondtls.WithCipherSuites(piondtls.TLS_PSK_WITH_AES_128_CCM_8),
			piondtls.WithLoggerFactory(silentLogs{})))
	case "coap+tcp":
		conn, err = tcp.Dial(addr)
	case "coaps+tcp":
		conn, err = tcp.Dial(addr, options.WithTLS(&tls.Config{MinVersion: tls.VersionTLS12,
			RootCAs: f.pki.serverRoots, ServerName: "127.0.0.1"}))
	default:
		err = fmt.Errorf("no raw client for %s", scheme)
	}
	if err != nil {
		return nil, err
	}
	return rawPoster{conn: conn, dec: mustDecoder(codec.Limits{})}, nil
}

// dialAll opens n connections with dial, concurrently.
func dialAll(tb testing.TB, n int, dial func() (poster, error)) []poster {
	tb.Helper()
	out := make([]poster, n)
	errs := make([]error, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(n, 8) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				out[i], errs[i] = dial()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		closeAll(out)
		tb.Fatal(err)
	}
	return out
}

func closeAll(ps []poster) {
	for _, p := range ps {
		if p != nil {
			p.close()
		}
	}
}

// runRequests has every client post, one request at a time each, until
// len(lat) requests are done, recording each one's latency in lat. It
// returns the wall time.
func runRequests(ctx context.Context, clients []poster, lat []time.Duration) (time.Duration, error) {
	var next atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	start := time.Now()
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(len(lat)) {
					return
				}
				t0 := time.Now()
				if err := c.post(ctx); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if e := firstErr.Load(); e != nil {
		return elapsed, *e
	}
	return elapsed, nil
}

// warmUp has every client post k times, all clients at once.
func warmUp(ctx context.Context, clients []poster, k int) error {
	errs := make([]error, len(clients))
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range k {
				if errs[i] = c.post(ctx); errs[i] != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// percentile returns the p-th percentile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)) * p / 100)
	return sorted[min(i, len(sorted)-1)]
}

// benchSchemes are the transports compared with raw go-coap.
var benchSchemes = []string{"coap", "coaps", "coap+tcp", "coaps+tcp"}

// BenchmarkTransportRequest measures one POST of a 5-field CBOR reading to
// a Typed handler that answers a CBOR ack, through our Server and Client
// and through raw go-coap, with 1, 16 and 256 clients, each with its own
// connection and one request in flight. Each b.N is b.N requests through
// ours and b.N through raw, alternating in rounds so both see the same
// machine state; ns/op is the two together. Reported: requests per second,
// p50 and p99 latency of each, ours/raw, the ratio of wall time per
// request, and, for rounds held up by a lost datagram, mean-ours/raw (the
// ratio of mean latencies of requests that took at most a second) and
// ours-over-1s, raw-over-1s (how many took longer: CoAP retransmissions).
//
// Keep b.N fixed and moderate (-benchtime=5000x): go-coap keeps every
// UDP and DTLS response about 247 s, keyed by message ID, and its UDP
// server scans the sending peer's cache on every datagram, so the cost per
// request grows with the number of requests; and one connection must not
// wrap its 16-bit message IDs within that time.
func BenchmarkTransportRequest(b *testing.B) {
	for _, scheme := range benchSchemes {
		b.Run(scheme, func(b *testing.B) {
			f := benchFixture(b, scheme, benchServerConfig())
			rawAddr := rawServer(b, scheme, f)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cfg := benchClientConfig(b, f)
			dialOurs := func() (poster, error) {
				dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
				defer dcancel()
				c, err := Dial(dctx, f.url, cfg)
				if err != nil {
					return nil, err
				}
				return oursPoster{c}, nil
			}
			dialRaw := func() (poster, error) { return rawDial(scheme, rawAddr, f) }
			for _, n := range []int{1, 16, 256} {
				b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
					// Fresh connections for every run, so that no run
					// inherits go-coap's response caches from the last.
					ours := dialAll(b, n, dialOurs)
					defer closeAll(ours)
					raw := dialAll(b, n, dialRaw)
					defer closeAll(raw)
					benchCompare(b, ctx, scheme, ours, raw)
				})
			}
		})
	}
}

func benchCompare(b *testing.B, ctx context.Context, scheme string, ours, raw []poster) {
	if (scheme == "coap" || scheme == "coaps") && b.N > 50000 {
		b.Fatalf("b.N %d: keep -benchtime at or below 50000x on UDP (see the benchmark's doc)", b.N)
	}
	// Warm up: every connection carries a few requests first (this also
	// completes raw DTLS's lazy handshake and go-coap's TCP CSM exchange).
	for _, side := range [][]poster{ours, raw} {
		if err := warmUp(ctx, side, 4); err != nil {
			b.Fatal(err)
		}
	}
	oursLat := make([]time.Duration, b.N)
	rawLat := make([]time.Duration, b.N)
	// Alternate in an even number of rounds, each long enough for every
	// client to post several times, starting with ours and raw in turn.
	rounds := min(20, max(2, b.N/(8*len(ours)))) &^ 1
	if b.N < 2 {
		rounds = 1
	}
	var oursT, rawT time.Duration
	runtime.GC()
	b.ResetTimer()
	for r := range rounds {
		lo, hi := r*b.N/rounds, (r+1)*b.N/rounds
		order := []bool{true, false}
		if r%2 == 1 {
			order = []bool{false, true}
		}
		for _, isOurs := range order {
			var d time.Duration
			var err error
			if isOurs {
				d, err = runRequests(ctx, ours, oursLat[lo:hi])
				oursT += d
			} else {
				d, err = runRequests(ctx, raw, rawLat[lo:hi])
				rawT += d
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	slices.Sort(oursLat)
	slices.Sort(rawLat)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	b.ReportMetric(float64(b.N)/oursT.Seconds(), "ours-req/s")
	b.ReportMetric(float64(b.N)/rawT.Seconds(), "raw-req/s")
	b.ReportMetric(us(percentile(oursLat, 50)), "ours-p50-us")
	b.ReportMetric(us(percentile(oursLat, 99)), "ours-p99-us")
	b.ReportMetric(us(percentile(rawLat, 50)), "raw-p50-us")
	b.ReportMetric(us(percentile(rawLat, 99)), "raw-p99-us")
	b.ReportMetric(float64(oursT)/float64(rawT), "ours/raw")
	// A lost datagram costs a CoAP retransmission, 2 to 3 s on UDP and
	// DTLS, which holds up the wall time of its whole round while the
	// other clients idle. So also report the ratio of mean latencies of
	// the requests that took at most a second, and how many took longer.
	b.ReportMetric(float64(sumUpTo(oursLat, time.Second))/float64(sumUpTo(rawLat, time.Second)), "mean-ours/raw")
	b.ReportMetric(float64(over(oursLat, time.Second)), "ours-over-1s")
	b.ReportMetric(float64(over(rawLat, time.Second)), "raw-over-1s")
}

// over counts the durations over limit.
func over(ds []time.Duration, limit time.Duration) int {
	n := 0
	for _, d := range ds {
		if d > limit {
			n++
		}
	}
	return n
}

// sumUpTo sums the durations of at most limit.
func sumUpTo(ds []time.Duration, limit time.Duration) time.Duration {
	var t time.Duration
	for _, d := range ds {
		if d <= limit {
			t += d
		}
	}
	return t
}

// countingUDPRelay forwards datagrams between clients and a server and
// records the size of each, per direction.
type countingUDPRelay struct {
	down *net.UDPConn // clients' side
	up   *net.UDPConn // connected to the server

	mu       sync.Mutex
	client   *net.UDPAddr
	toServer []int
	toClient []int
}

func newCountingUDPRelay(t *testing.T, server string) *countingUDPRelay {
	t.Helper()
	sa, err := net.ResolveUDPAddr("udp", server)
	must(t, err)
	r := &countingUDPRelay{}
	r.down, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	must(t, err)
	r.up, err = net.DialUDP("udp", nil, sa)
	must(t, err)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := r.down.ReadFromUDP(buf)
			if err != nil {
				return
			}
			r.mu.Lock()
			r.client = from
			r.toServer = append(r.toServer, n)
			r.mu.Unlock()
			_, _ = r.up.Write(buf[:n])
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 65536)
		for {
			n, err := r.up.Read(buf)
			if err != nil {
				return
			}
			r.mu.Lock()
			c := r.client
			r.toClient = append(r.toClient, n)
			r.mu.Unlock()
			_, _ = r.down.WriteToUDP(buf[:n], c)
		}
	}()
	t.Cleanup(func() {
		r.down.Close()
		r.up.Close()
		wg.Wait()
	})
	return r
}

func (r *countingUDPRelay) addr() string { return r.down.LocalAddr().String() }

// mark returns how many datagrams went each way so far.
func (r *countingUDPRelay) mark() (int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.toServer), len(r.toClient)
}

// since returns the datagram sizes each way after a mark.
func (r *countingUDPRelay) since(s, c int) ([]int, []int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.toServer[s:]), slices.Clone(r.toClient[c:])
}

// countingTCPRelay forwards TCP connections to a server and counts the
// payload bytes each way.
type countingTCPRelay struct {
	ln                 net.Listener
	toServer, toClient atomic.Int64
}

func newCountingTCPRelay(t *testing.T, server string) *countingTCPRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	r := &countingTCPRelay{ln: ln}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", server)
			if err != nil {
				down.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, down, up)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); relayCopy(up, down, &r.toServer) }()
			go func() { defer wg.Done(); relayCopy(down, up, &r.toClient) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return r
}

func relayCopy(dst, src net.Conn, n *atomic.Int64) {
	buf := make([]byte, 65536)
	for {
		k, err := src.Read(buf)
		if k > 0 {
			n.Add(int64(k))
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// Record overheads for the consistency checks of TestTransportWireBytes.
const (
	// DTLS 1.2 record with AES-128-CCM-8: 13-byte header, 8-byte explicit
	// nonce, 8-byte tag.
	dtlsCCM8Overhead = 13 + 8 + 8
	// With an 8-byte connection ID (RFC 9146): the CID in the header and
	// the inner content type byte.
	dtlsCIDOverhead = dtlsCCM8Overhead + 8 + 1
	// TLS 1.3 record: 5-byte header, inner content type, 16-byte tag.
	tls13Overhead = 5 + 1 + 16
)

// TestTransportWireBytes measures the bytes one 5-field reading takes on
// the wire: a real client posts it through a counting relay to a real
// server, after the handshake, on every transport (DTLS with and without
// connection ID); and computes MQTT 3.1.1 PUBLISH QoS 1 with the same
// reading as JSON, plain and in a TLS 1.3 record, for comparison. Bytes
// are UDP or TCP payload (application records); IPv4+UDP adds 28 per
// datagram, IPv4+TCP 40 per segment (52 with timestamps), not counted.
func TestTransportWireBytes(t *testing.T) {
	cborBody, err := codec.Marshal(benchSample)
	must(t, err)
	jsonBody, err := json.Marshal(benchSample)
	must(t, err)

	type row struct {
		name     string
		req, rsp int
	}
	var rows []row
	var dev string
	for _, scheme := range benchSchemes {
		f := benchFixture(t, scheme, benchServerConfig())
		dev = f.dev.String()
		u, err := url.Parse(f.url)
		must(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		t.Cleanup(cancel)
		switch scheme {
		case "coap", "coaps":
			relay := newCountingUDPRelay(t, u.Host)
			measure := func(name string, p poster) (int, int) {
				time.Sleep(50 * time.Millisecond) // let the handshake settle
				s, c := relay.mark()
				must(t, p.post(ctx))
				time.Sleep(20 * time.Millisecond)
				up, down := relay.since(s, c)
				if len(up) != 1 || len(down) != 1 {
					t.Fatalf("%s: datagrams %v up, %v down, want one each", name, up, down)
				}
				rows = append(rows, row{name, up[0], down[0]})
				return up[0], down[0]
			}
			c, err := Dial(ctx, scheme+"://"+relay.addr(), benchClientConfig(t, f))
			must(t, err)
			name := scheme
			if scheme == "coaps" {
				name = "coaps (PSK, CCM_8, CID)"
			}
			req, rsp := measure(name, oursPoster{c})
			c.Close()
			if scheme == "coaps" {
				plain := rows[0]
				if req != plain.req+dtlsCIDOverhead || rsp != plain.rsp+dtlsCCM8Overhead {
					t.Errorf("DTLS with CID %d/%d bytes, want CoAP %d/%d + %d/%d", req, rsp,
						plain.req, plain.rsp, dtlsCIDOverhead, dtlsCCM8Overhead)
				}
				// The same request without connection IDs: a raw pion
				// client that does not offer them.
				p, err := rawDial(scheme, relay.addr(), f)
				must(t, err)
				must(t, p.post(ctx)) // handshake
				req, rsp = measure("coaps (PSK, CCM_8, no CID)", p)
				p.close()
				if req != plain.req+dtlsCCM8Overhead || rsp != plain.rsp+dtlsCCM8Overhead {
					t.Errorf("DTLS without CID %d/%d bytes, want CoAP %d/%d + %d", req, rsp,
						plain.req, plain.rsp, dtlsCCM8Overhead)
				}
			}
		default:
			relay := newCountingTCPRelay(t, u.Host)
			c, err := Dial(ctx, scheme+"://"+relay.ln.Addr().String(), benchClientConfig(t, f))
			must(t, err)
			must(t, c.Post(ctx, benchPath, benchSample, nil)) // past CSM and session tickets
			time.Sleep(50 * time.Millisecond)
			s, d := relay.toServer.Load(), relay.toClient.Load()
			must(t, oursPoster{c}.post(ctx))
			time.Sleep(20 * time.Millisecond)
			rows = append(rows, row{scheme, int(relay.toServer.Load() - s), int(relay.toClient.Load() - d)})
			c.Close()
			if scheme == "coaps+tcp" {
				plain := rows[len(rows)-2]
				if got := rows[len(rows)-1]; got.req != plain.req+tls13Overhead || got.rsp != plain.rsp+tls13Overhead {
					t.Errorf("CoAP over TLS %d/%d bytes, want CoAP over TCP %d/%d + %d", got.req, got.rsp,
						plain.req, plain.rsp, tls13Overhead)
				}
			}
		}
	}

	// MQTT 3.1.1 PUBLISH, QoS 1: fixed header (type and flags, remaining
	// length), topic (2-byte length and the string), packet ID, payload;
	// answered by a 4-byte PUBACK.
	topic := "devices/" + dev + "/telemetry"
	variable := 2 + len(topic) + 2
	remaining := variable + len(jsonBody)
	mqtt := 1 + varintLen(remaining) + remaining
	const puback = 4
	rows = append(rows,
		row{"MQTT 3.1.1 QoS 1 + JSON over TCP", mqtt, puback},
		row{"MQTT 3.1.1 QoS 1 + JSON over TLS 1.3", mqtt + tls13Overhead, puback + tls13Overhead})

	t.Logf("reading %+v: CBOR %d bytes, JSON %d bytes (%s); MQTT topic %q (%d bytes)",
		benchSample, len(cborBody), len(jsonBody), jsonBody, topic, len(topic))
	t.Logf("%-40s %8s %8s", "transport (UDP/TCP payload bytes)", "request", "response")
	for _, r := range rows {
		t.Logf("%-40s %8d %8d", r.name, r.req, r.rsp)
	}
}

// varintLen is the length of an MQTT remaining-length field.
func varintLen(n int) int {
	l := 1
	for n >= 128 {
		n >>= 7
		l++
	}
	return l
}

// memChildEnv makes TestTransportDTLSMemoryServer the server process of
// BenchmarkTransportDTLSMemory.
const memChildEnv = "SENSIBLE_TRANSPORT_MEM_SERVER"

// TestTransportDTLSMemoryServer is not a test: it is the server process of
// BenchmarkTransportDTLSMemory, and skips unless started by it. It serves
// coaps:// with PSK, prints its address and device, and answers "measure"
// on stdin with its memory after a full GC.
func TestTransportDTLSMemoryServer(t *testing.T) {
	if os.Getenv(memChildEnv) != "1" {
		t.Skip("server process of BenchmarkTransportDTLSMemory")
	}
	cfg := benchServerConfig()
	cfg.IdleTimeout = time.Hour
	f := benchFixture(t, "coaps", cfg)
	fmt.Printf("ready %s %s\n", f.url, f.dev)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() != "measure" {
			return
		}
		runtime.GC()
		runtime.GC()
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Printf("mem %d %d %d %d %d\n", ms.HeapAlloc, ms.StackInuse, vmRSS(), runtime.NumGoroutine(), f.srv.conns.Load())
	}
}

// vmRSS returns the process's resident set in bytes (Linux), or 0.
func vmRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// memSample is the server process's memory at one point.
type memSample struct {
	heap, stack, rss, goroutines, conns int64
}

// memServer is the server process of BenchmarkTransportDTLSMemory.
type memServer struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
	url string
	dev string
}

func startMemServer(b *testing.B) *memServer {
	cmd := exec.Command(os.Args[0], "-test.run=^TestTransportDTLSMemoryServer$", "-test.count=1")
	cmd.Env = append(os.Environ(), memChildEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	must(b, err)
	out, err := cmd.StdoutPipe()
	must(b, err)
	must(b, cmd.Start())
	m := &memServer{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	b.Cleanup(func() {
		m.in.Close()
		_ = m.cmd.Wait()
	})
	line, err := m.next("ready ")
	must(b, err)
	fields := strings.Fields(line)
	if len(fields) != 2 {
		b.Fatalf("server process said %q", line)
	}
	m.url, m.dev = fields[0], fields[1]
	return m
}

// next returns the rest of the next output line starting with prefix.
func (m *memServer) next(prefix string) (string, error) {
	for m.out.Scan() {
		if rest, ok := strings.CutPrefix(m.out.Text(), prefix); ok {
			return rest, nil
		}
	}
	return "", fmt.Errorf("server process ended before %q: %v", prefix, m.out.Err())
}

func (m *memServer) measure(b *testing.B) memSample {
	_, err := io.WriteString(m.in, "measure\n")
	must(b, err)
	line, err := m.next("mem ")
	must(b, err)
	var s memSample
	if _, err := fmt.Sscan(line, &s.heap, &s.stack, &s.rss, &s.goroutines, &s.conns); err != nil {
		b.Fatalf("server process said %q: %v", line, err)
	}
	return s
}

// pskSession is one device's DTLS session, held idle.
type pskSession struct {
	dc *piondtls.Conn
	nc net.Conn
}

// dialPSKSession opens a DTLS-PSK session as our Client does (same suite,
// identity, connection ID), on its own UDP socket, and posts one reading
// on it, so that the server holds what it holds for a device that has
// reported once; no go-coap client is kept on the device side.
func dialPSKSession(ctx context.Context, addr, dev string, key []byte, mid uint16) (*pskSession, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return nil, err
	}
	dc, err := piondtls.ClientWithOptions(dtlsnet.PacketConnFromConn(nc), nc.RemoteAddr(),
		piondtls.WithCipherSuites(piondtls.TLS_PSK_WITH_AES_128_CCM_8),
		piondtls.WithPSK(func([]byte) ([]byte, error) { return key, nil }),
		piondtls.WithPSKIdentityHint([]byte(dev)),
		piondtls.WithConnectionIDGenerator(piondtls.OnlySendCIDGenerator()),
		piondtls.WithLoggerFactory(silentLogs{}))
	if err != nil {
		nc.Close()
		return nil, err
	}
	s := &pskSession{dc: dc, nc: nc}
	if err := dc.HandshakeContext(ctx); err != nil {
		s.close()
		return nil, err
	}
	body, err := codec.Marshal(benchSample)
	if err != nil {
		s.close()
		return nil, err
	}
	req := pool.NewMessage(ctx)
	token := message.Token{byte(mid >> 8), byte(mid), 1, 2, 3, 4, 5, 6}
	if err := req.SetupPost(benchPath, token, message.AppCBOR, bytes.NewReader(body)); err != nil {
		s.close()
		return nil, err
	}
	req.SetType(message.Confirmable)
	req.SetMessageID(int32(mid))
	data, err := req.MarshalWithEncoder(coder.DefaultCoder)
	if err != nil {
		s.close()
		return nil, err
	}
	if _, err := dc.Write(data); err != nil {
		s.close()
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	_ = dc.SetReadDeadline(deadline)
	buf := make([]byte, 1500)
	n, err := dc.Read(buf)
	if err != nil {
		s.close()
		return nil, err
	}
	resp := message.Message{Options: make(message.Options, 0, 8)}
	if _, err := coder.DefaultCoder.Decode(buf[:n], &resp); err != nil || resp.Code != codes.Changed {
		s.close()
		return nil, fmt.Errorf("response %v, %v", resp.Code, err)
	}
	return s, nil
}

func (s *pskSession) close() {
	s.dc.Close()
	s.nc.Close()
}

// raiseFileLimit raises the soft limit on open files to at least n, up to
// the hard limit.
func raiseFileLimit(b *testing.B, n uint64) {
	var rl syscall.Rlimit
	must(b, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl))
	if rl.Cur >= n {
		return
	}
	if rl.Max < n {
		b.Skipf("open files hard limit %d, need %d", rl.Max, n)
	}
	rl.Cur = n
	must(b, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl))
}

// BenchmarkTransportDTLSMemory measures the server's memory per idle
// DTLS-PSK device session, at 1,000 and 10,000 sessions (10,000 skipped
// with -short). The server runs in a child process (this test binary
// again, TestTransportDTLSMemoryServer), so the devices' side of each
// session, held here on one UDP socket each, is not counted. Each device
// completes a real handshake and posts one reading, then stays idle. The
// server process reports its live heap (after two GCs), goroutine stacks
// and resident set; the growth over the empty server, divided by the
// sessions, is reported per session. The work is done once, whatever b.N;
// the sub-benchmarks only report it.
func BenchmarkTransportDTLSMemory(b *testing.B) {
	const big = 10000
	raiseFileLimit(b, big+1024)
	srv := startMemServer(b)
	u, err := url.Parse(srv.url)
	must(b, err)
	dev, err := identity.ParseID(srv.dev)
	must(b, err)
	key, err := DerivePSK(fleetSecret, dev)
	must(b, err)

	var sessions []*pskSession
	defer func() {
		for _, s := range sessions {
			s.close()
		}
	}()
	open := func(tb testing.TB, n int) time.Duration {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		opened := make([]*pskSession, n)
		var next atomic.Int64
		var firstErr atomic.Pointer[error]
		var wg sync.WaitGroup
		base := len(sessions)
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1) - 1)
					if i >= n || firstErr.Load() != nil {
						return
					}
					hctx, hcancel := context.WithTimeout(ctx, 20*time.Second)
					s, err := dialPSKSession(hctx, u.Host, srv.dev, key, uint16(base+i))
					hcancel()
					if err != nil {
						err = fmt.Errorf("session %d: %w", base+i, err)
						firstErr.CompareAndSwap(nil, &err)
						return
					}
					opened[i] = s
				}
			}()
		}
		wg.Wait()
		for _, s := range opened {
			if s != nil {
				sessions = append(sessions, s)
			}
		}
		if e := firstErr.Load(); e != nil {
			tb.Fatal(*e)
		}
		return time.Since(start)
	}
	perSession := func(b *testing.B, base, now memSample, n int, took time.Duration) {
		if now.conns != int64(n) {
			b.Fatalf("server holds %d connections, want %d", now.conns, n)
		}
		kib := func(d int64) float64 { return float64(d) / 1024 / float64(n) }
		b.ReportMetric(kib(now.heap-base.heap), "heap-KiB/session")
		b.ReportMetric(kib(now.stack-base.stack), "stack-KiB/session")
		b.ReportMetric(kib(now.heap-base.heap+now.stack-base.stack), "KiB/session")
		b.ReportMetric(kib(now.rss-base.rss), "rss-KiB/session")
		b.ReportMetric(float64(now.goroutines-base.goroutines)/float64(n), "goroutines/session")
		b.ReportMetric(float64(n)/took.Seconds(), "handshakes/s")
	}

	base := srv.measure(b)
	took1 := open(b, 1000)
	at1 := srv.measure(b)
	b.Run("sessions=1000", func(b *testing.B) { perSession(b, base, at1, 1000, took1) })
	b.Run(fmt.Sprintf("sessions=%d", big), func(b *testing.B) {
		if testing.Short() {
			b.Skip("10,000 sessions skipped in -short mode")
		}
		if len(sessions) < big {
			took := open(b, big-len(sessions))
			at := srv.measure(b)
			memBig = &memResult{at: at, took: took1 + took}
		}
		perSession(b, base, memBig.at, big, memBig.took)
	})
}

// memResult keeps the 10,000-session sample for the sub-benchmark's second
// run (the testing package runs it with b.N 1, then with the final b.N).
type memResult struct {
	at   memSample
	took time.Duration
}

var memBig *memResult
