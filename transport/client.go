package transport

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	piondtls "github.com/pion/dtls/v3"
	dtlsnet "github.com/pion/dtls/v3/pkg/net"
	"github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/mux"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/pkg/runner/periodic"
	"github.com/plgd-dev/go-coap/v3/tcp"
	tcpclient "github.com/plgd-dev/go-coap/v3/tcp/client"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
)

// ClientConfig configures a Client. The zero value connects without
// authentication.
type ClientConfig struct {
	// Signer, when set, makes the client present a device token signed
	// with it at AuthPath once per session (after every connect), for
	// transports without client certificates.
	Signer crypto.Signer
	// Audience is the token audience; empty means the dialed URL's
	// scheme and host, such as "coap+tcp://cloud.example.com:5684".
	Audience string
	// IdleTimeout closes the connection after this long without traffic;
	// zero means DefaultIdleTimeout. The next request, or the keepalive
	// of an observation, connects again.
	IdleTimeout time.Duration
	// MaxMessageSize caps one message; zero means DefaultMaxMessageSize.
	MaxMessageSize int
	// MaxResponseBody caps a response body decoded by the client; zero
	// means 64 KiB.
	MaxResponseBody int
	// PSK is the device's DTLS pre-shared key for coaps://; its identity
	// is Device.
	PSK []byte
	// Device is the PSK identity; zero means the ID of Signer's key.
	Device identity.ID
	// Certificate is the device's certificate chain and key, presented on
	// coaps+tcp:// and on coaps:// without PSK. Its PrivateKey may be any
	// crypto.Signer, such as a key in a secure element.
	Certificate *tls.Certificate
	// ServerRoots are the roots the server's certificate must chain to;
	// nil means the system roots (TLS) or none (DTLS).
	ServerRoots *x509.CertPool
	// ServerName is checked against the server's certificate; empty means
	// the host of the dialed URL.
	ServerName string
	// Retry says how requests are retried; the zero value means the
	// defaults of RetryPolicy.
	Retry RetryPolicy
	// KeepAlive is how often a client with observations checks that the
	// server still holds them, which also keeps NAT bindings open (a
	// router may forget a UDP binding after 30 s of silence). Over
	// coap+tcp:// and coaps+tcp:// the check is a CoAP ping; over
	// coap:// and coaps:// the client registers each observation again,
	// for there a server that restarted, or dropped the observation,
	// answers a ping as before. A check that goes unanswered makes the
	// client reconnect and register again. Zero means DefaultKeepAlive;
	// a negative value turns the checks off, so that a lost server is
	// noticed only when the connection closes or a request fails.
	KeepAlive time.Duration
	// Logger receives go-coap's diagnostics; nil discards them.
	Logger *slog.Logger
}

// DefaultKeepAlive is how often, by default, a client with observations
// checks that the server still holds them.
const DefaultKeepAlive = 30 * time.Second

// RetryPolicy governs retries. A request is retried only when it may not
// have reached the server, or the server asked for it to be: the
// connection failed, closed before the response came, or no response came
// within Timeout (the client reconnects first, authenticating again), or
// the server answered 5.03 or 4.29 (the client waits the response's
// Max-Age, when it has one). Any other response, one that cannot be
// decoded, and any local error are returned at once. No retry outlasts
// the caller's context: when the wait before one would pass the
// context's deadline, the last error is returned instead. Waits grow
// exponentially from Base to Max with full jitter. v1 requests are safe to
// repeat: telemetry carries an idempotency key.
type RetryPolicy struct {
	// Attempts is how many times a request is tried in all; zero means
	// DefaultRetryAttempts, 1 disables retries.
	Attempts int
	// Base is the first wait; zero means 100 ms.
	Base time.Duration
	// Max caps one wait; zero means 5 s.
	Max time.Duration
	// Timeout bounds one attempt: how long the client waits for the
	// response before it takes the connection for lost. Zero means
	// DefaultAttemptTimeout. An attempt may wait up to 1/64 longer: the
	// attempts that start about the same time share one timer.
	Timeout time.Duration
}

// DefaultRetryAttempts is how many times a request is tried by default.
const DefaultRetryAttempts = 4

// DefaultAttemptTimeout bounds one attempt of a request by default:
// longer than a server's DefaultRequestTimeout, so that a handler that
// takes its whole time is not run twice, and about as long as CoAP's
// retransmissions of a confirmable message over UDP last (RFC 7252
// section 4.8.2).
const DefaultAttemptTimeout = 45 * time.Second

func (p RetryPolicy) attempts() int {
	if p.Attempts <= 0 {
		return DefaultRetryAttempts
	}
	return p.Attempts
}

func (p RetryPolicy) timeout() time.Duration {
	if p.Timeout <= 0 {
		return DefaultAttemptTimeout
	}
	return p.Timeout
}

func (p RetryPolicy) max() time.Duration {
	if p.Max <= 0 {
		return 5 * time.Second
	}
	return p.Max
}

// wait returns the pause before retry number n (0 for the first retry):
// a random duration up to min(Max, Base*2^n).
func (p RetryPolicy) wait(n int) time.Duration {
	return p.waitUpTo(n, p.max())
}

// waitUpTo is wait with another cap.
func (p RetryPolicy) waitUpTo(n int, max time.Duration) time.Duration {
	base := p.Base
	if base <= 0 {
		base = 100 * time.Millisecond
	}
	d := base << min(n, 20)
	if d <= 0 || d > max {
		d = max
	}
	return time.Duration(rand.Int64N(int64(d)) + 1)
}

// A Client talks to one server over one of the four transports. It is safe
// for concurrent use.
//
// A Client owns one goroutine while it is open, and one per observation:
// the first reconnects and registers the observations again when the
// server goes away, and checks on them every KeepAlive; the others call
// the observations' handlers. Close ends them all.
type Client struct {
	cfg ClientConfig
	url *url.URL
	log *slog.Logger
	// dec decodes responses and notifications: tolerant of map keys it
	// does not know, so that the server may add fields.
	dec *codec.Decoder

	clock *attemptClock // bounds each attempt by the attempt timeout

	tick chan struct{}      // closed by Close: ends go-coap's periodic runner
	kick chan struct{}      // wakes the keeper
	stop context.CancelFunc // ends the keeper's context
	wg   sync.WaitGroup     // the keeper and the observations' goroutines

	dialMu sync.Mutex // held while reconnecting

	mu           sync.Mutex
	conn         mux.Conn // nil after a failure, until the next request or the keeper redials
	closed       bool
	observations map[*Observation]struct{}
	byToken      map[string]*Observation // observations, by the token of their notifications
	uploads      map[string]struct{}     // tokens of requests with a body in flight
}

// Dial connects to rawURL (coap://, coaps://, coap+tcp:// or coaps+tcp://),
// completing any DTLS or TLS handshake within ctx, and, if cfg.Signer is
// set, authenticates with a device token. A URL it cannot use fails with
// an error matching ErrBadURL; a server it cannot reach, with one matching
// ErrUnreachable.
func Dial(ctx context.Context, rawURL string, cfg ClientConfig) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadURL, err)
	}
	switch u.Scheme {
	case "coap", "coaps", "coap+tcp", "coaps+tcp":
	default:
		return nil, fmt.Errorf("%w: unsupported scheme %q (want coap, coaps, coap+tcp or coaps+tcp)", ErrBadURL, u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%w: %q has no host", ErrBadURL, rawURL)
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = DefaultMaxMessageSize
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = DefaultKeepAlive
	}
	if cfg.Audience == "" {
		cfg.Audience = u.Scheme + "://" + u.Host
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dec, err := codec.NewTolerantDecoder(codec.Limits{MaxBody: cfg.MaxResponseBody})
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, url: u, log: log, dec: dec, tick: make(chan struct{}), kick: make(chan struct{}, 1),
		observations: make(map[*Observation]struct{}), byToken: make(map[string]*Observation),
		uploads: make(map[string]struct{}), clock: newAttemptClock(cfg.Retry.timeout())}
	conn, err := c.connect(ctx)
	if err != nil {
		c.clock.stop()
		close(c.tick)
		return nil, err
	}
	c.conn = conn
	kctx, stop := context.WithCancel(context.Background())
	c.stop = stop
	c.wg.Add(1)
	go c.keep(kctx)
	return c, nil
}

// live returns the current connection, or dials a new one (authenticating)
// if the last one failed. The keeper registers the observations on it.
func (c *Client) live(ctx context.Context) (mux.Conn, error) {
	c.dialMu.Lock()
	defer c.dialMu.Unlock()
	c.mu.Lock()
	conn, closed := c.conn, c.closed
	c.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	if conn != nil {
		select {
		case <-conn.Done():
			c.drop(conn, errConnClosed)
		default:
			return conn, nil
		}
	}
	conn, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		conn.Close()
		<-conn.Done()
		return nil, ErrClosed
	}
	c.conn = conn
	c.mu.Unlock()
	c.wake()
	return conn, nil
}

// Causes given for lost observations and failed exchanges.
const (
	errConnClosed  = sentinel("the connection closed")
	errNoResponse  = sentinel("no response in time")
	errSessionLost = sentinel("the server lost the session")
)

// drop forgets conn after a failure and closes it; the observations
// registered on it are lost (their handlers hear of it), and the keeper
// will register them again.
func (c *Client) drop(conn mux.Conn, cause error) {
	lost := c.lose(conn, true)
	conn.Close()
	<-conn.Done()
	for _, o := range lost {
		o.missed(cause)
	}
	c.wake()
}

// lose marks the observations registered on conn as not registered, and
// returns them; with forget it also forgets conn as the current
// connection.
func (c *Client) lose(conn mux.Conn, forget bool) []*Observation {
	c.mu.Lock()
	defer c.mu.Unlock()
	if forget && c.conn == conn {
		c.conn = nil
	}
	var lost []*Observation
	for o := range c.observations {
		if o.on == conn {
			o.on = nil
			lost = append(lost, o)
		}
	}
	return lost
}

// wake tells the keeper to look again.
func (c *Client) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// connError is a failure of the connection rather than of the exchange:
// the request may not have reached the server, so it may be sent again on
// a new connection.
type connError struct {
	op  string // such as "POST /v1/telemetry" or "dial coaps://host:5684"
	err error
}

func (e *connError) Error() string { return "transport: " + e.op + ": " + e.err.Error() }

// Is reports whether target is ErrUnreachable.
func (e *connError) Is(target error) bool { return target == ErrUnreachable }

func (e *connError) Unwrap() error { return e.err }

// withRetry runs fn on a live connection, retrying per the RetryPolicy.
func (c *Client) withRetry(ctx context.Context, fn func(context.Context, mux.Conn) error) error {
	attempts := c.cfg.Retry.attempts()
	for n := 0; ; n++ {
		err := c.attempt(ctx, fn)
		if err == nil || ctx.Err() != nil || n+1 >= attempts || !retryable(err) {
			return err
		}
		wait := c.cfg.Retry.wait(n)
		var e *Error
		if errors.As(err, &e) && e.RetryAfter > 0 {
			wait = e.RetryAfter // the server's Max-Age
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
	}
}

// attempt runs fn once on a live connection, within the attempt timeout,
// and drops the connection if fn found it broken.
func (c *Client) attempt(ctx context.Context, fn func(context.Context, mux.Conn) error) error {
	conn, err := c.live(ctx)
	if err != nil {
		return unlessDone(ctx, err)
	}
	actx, cancel := c.clock.bound(ctx, time.Now())
	defer cancel()
	err = fn(actx, conn)
	if errors.Is(err, ErrUnauthorized) && c.usesToken() {
		// The server lost the session (it restarted, or a device's UDP
		// source address changed), and with it the observations:
		// authenticate again on this connection, and try once more.
		lost := c.lose(conn, false)
		for _, o := range lost {
			o.missed(errSessionLost)
		}
		if aerr := c.authenticate(actx, conn); aerr != nil {
			err = aerr
		} else {
			c.wake()
			err = fn(actx, conn)
		}
	}
	if err != nil {
		var ce *connError
		if errors.As(err, &ce) {
			c.drop(conn, err)
		}
	}
	return unlessDone(ctx, err)
}

// unlessDone returns err, unless ctx has ended: then the error says so
// (errors.Is(err, context.DeadlineExceeded) or context.Canceled), for it
// was the caller who stopped waiting, not the server who failed.
func unlessDone(ctx context.Context, err error) error {
	if err == nil || ctx.Err() == nil {
		return err
	}
	var ce *connError
	if errors.As(err, &ce) {
		return fmt.Errorf("transport: %s: %w", ce.op, ctx.Err())
	}
	return err
}

// retryable reports whether the request that failed with err may be sent
// again: it may not have reached the server, or the server asked for it.
func retryable(err error) bool {
	var ce *connError
	if errors.As(err, &ce) {
		return true
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code == ServiceUnavailable || e.Code == TooManyRequests
	}
	return false
}

// usesToken reports whether sessions are authenticated by a device token.
func (c *Client) usesToken() bool {
	return c.cfg.Signer != nil && c.cfg.PSK == nil && c.cfg.Certificate == nil
}

func (c *Client) connect(ctx context.Context) (mux.Conn, error) {
	errs := options.WithErrors(func(err error) { c.log.Debug("coap", "err", err) })
	maxMsg := options.WithMaxMessageSize(uint32(c.cfg.MaxMessageSize))
	ticker := options.WithPeriodicRunner(periodic.New(c.tick, time.Second))
	handler := options.WithMux(mux.HandlerFunc(c.notification))
	op := "dial " + c.url.Redacted()
	var conn mux.Conn
	var err error
	switch c.url.Scheme {
	case "coap":
		conn, err = udp.Dial(c.url.Host, errs, maxMsg, ticker, handler, options.WithContext(context.WithoutCancel(ctx)),
			options.WithRequestMonitor(c.udpFilter),
			options.WithInactivityMonitor(c.cfg.IdleTimeout, func(cc *udpclient.Conn) { cc.Close() }))
		if err != nil {
			return nil, &connError{op: op, err: err}
		}
	case "coaps":
		var dc *piondtls.Conn
		if dc, err = c.dialDTLS(ctx, op); err != nil {
			return nil, err
		}
		conn = dtls.Client(dc, errs, maxMsg, ticker, handler, options.WithCloseSocket(), options.WithContext(context.WithoutCancel(ctx)),
			options.WithRequestMonitor(c.udpFilter),
			options.WithInactivityMonitor(c.cfg.IdleTimeout, func(cc *udpclient.Conn) { cc.Close() }))
	case "coap+tcp", "coaps+tcp":
		var tcfg *tls.Config
		if c.url.Scheme == "coaps+tcp" {
			tcfg = c.tlsConfig()
		}
		if conn, err = c.dialTCP(ctx, op, tcfg, errs, maxMsg, ticker, handler); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%w: unsupported scheme %q", ErrBadURL, c.url.Scheme)
	}
	// A token is needed where the handshake did not authenticate the
	// device: plain transports, and TLS or DTLS without a certificate.
	if c.usesToken() {
		if err := c.authenticate(ctx, conn); err != nil {
			conn.Close()
			<-conn.Done()
			return nil, err
		}
	}
	return conn, nil
}

// dialDTLS connects and completes the DTLS handshake within ctx, so that a
// wrong key or an unreachable server fails Dial rather than the first
// request.
func (c *Client) dialDTLS(ctx context.Context, op string) (*piondtls.Conn, error) {
	opts, err := c.dtlsOptions()
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "udp", c.url.Host)
	if err != nil {
		return nil, &connError{op: op, err: err}
	}
	dc, err := piondtls.ClientWithOptions(dtlsnet.PacketConnFromConn(nc), nc.RemoteAddr(), opts...)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("transport: dtls: %w", err)
	}
	if err := dc.HandshakeContext(ctx); err != nil {
		dc.Close()
		nc.Close()
		return nil, &connError{op: op, err: fmt.Errorf("dtls handshake: %w", err)}
	}
	return dc, nil
}

func (c *Client) serverName() string {
	if c.cfg.ServerName != "" {
		return c.cfg.ServerName
	}
	return c.url.Hostname()
}

func (c *Client) tlsConfig() *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: c.cfg.ServerRoots, ServerName: c.serverName()}
	if c.cfg.Certificate != nil {
		cfg.Certificates = []tls.Certificate{*c.cfg.Certificate}
	}
	return cfg
}

// dialTCP connects over TCP, completing a TLS handshake within ctx when
// tcfg is set.
func (c *Client) dialTCP(ctx context.Context, op string, tcfg *tls.Config, opts ...tcp.Option) (*tcpclient.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", c.url.Host)
	if err != nil {
		return nil, &connError{op: op, err: err}
	}
	if tcfg != nil {
		tc := tls.Client(nc, tcfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, &connError{op: op, err: fmt.Errorf("tls handshake: %w", err)}
		}
		nc = tc
	}
	opts = append(opts, options.WithContext(context.WithoutCancel(ctx)), options.WithCloseSocket(),
		// Over TCP a message carries its whole body (RFC 8323): no
		// block-wise layer, and none for a hostile server to crash.
		options.WithBlockwise(false, blockwise.SZX1024, 0),
		tcpIdleTimeout(c.cfg.IdleTimeout))
	conn, err := tcp.Client(nc, opts...)
	if err != nil {
		nc.Close()
		return nil, &connError{op: op, err: err}
	}
	return conn, nil
}

func (c *Client) dtlsOptions() ([]piondtls.ClientOption, error) {
	if c.cfg.PSK == nil {
		if c.cfg.Certificate == nil && c.cfg.ServerRoots == nil {
			return nil, errors.New("transport: coaps:// needs ClientConfig.PSK, or ServerRoots (and a Certificate or a Signer)")
		}
		opts := []piondtls.ClientOption{
			piondtls.WithCipherSuites(piondtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, piondtls.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8),
			piondtls.WithRootCAs(c.cfg.ServerRoots),
			piondtls.WithServerName(c.serverName()),
			piondtls.WithConnectionIDGenerator(piondtls.OnlySendCIDGenerator()),
			piondtls.WithExtendedMasterSecret(piondtls.RequireExtendedMasterSecret),
			piondtls.WithLoggerFactory(silentLogs{}),
		}
		if c.cfg.Certificate != nil {
			opts = append(opts, piondtls.WithCertificates(*c.cfg.Certificate))
		}
		return opts, nil
	}
	id := c.cfg.Device
	if id.IsZero() && c.cfg.Signer != nil {
		var err error
		if id, err = identity.IDOf(c.cfg.Signer); err != nil {
			return nil, err
		}
	}
	if id.IsZero() {
		return nil, errors.New("transport: DTLS-PSK needs ClientConfig.Device or Signer")
	}
	key := c.cfg.PSK
	return []piondtls.ClientOption{
		piondtls.WithCipherSuites(piondtls.TLS_PSK_WITH_AES_128_CCM_8),
		piondtls.WithPSK(func([]byte) ([]byte, error) { return key, nil }),
		piondtls.WithPSKIdentityHint([]byte(id.String())),
		piondtls.WithConnectionIDGenerator(piondtls.OnlySendCIDGenerator()),
		piondtls.WithLoggerFactory(silentLogs{}),
	}, nil
}

func (c *Client) authenticate(ctx context.Context, conn mux.Conn) error {
	tok, err := identity.SignToken(c.cfg.Signer, identity.TokenParams{Audience: c.cfg.Audience})
	if err != nil {
		return err
	}
	body, err := codec.Marshal(tok)
	if err != nil {
		return err
	}
	_, err = c.exchange(ctx, conn, POST, AuthPath, CBOR, body, nil)
	return err
}

// Get fetches path and decodes the CBOR response into out (nil to discard).
func (c *Client) Get(ctx context.Context, path string, out any) error {
	return c.Do(ctx, GET, path, nil, out)
}

// Post sends in as CBOR to path and decodes the response into out.
func (c *Client) Post(ctx context.Context, path string, in, out any) error {
	return c.Do(ctx, POST, path, in, out)
}

// Do sends a request with in (nil for no body) encoded as CBOR, and decodes
// a CBOR response into out (nil to discard it). Map keys the response has
// and out does not are skipped, so that a server may add fields.
//
// A 4.xx or 5.xx response is an *Error, matched by the Err sentinels with
// errors.Is; a response that does not decode is a *DecodeError
// (ErrDecode); a 2.xx body in another content-format matches
// ErrUnexpectedFormat; a Reset matches ErrReset; and a failed connection,
// once the retries are spent, matches ErrUnreachable. See RetryPolicy for
// which failures are retried.
func (c *Client) Do(ctx context.Context, m Method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = codec.Marshal(in); err != nil {
			return err
		}
	}
	return c.DoRaw(ctx, m, path, CBOR, body, out)
}

// DoRaw is Do with a body already encoded in format.
func (c *Client) DoRaw(ctx context.Context, m Method, path string, format Format, body []byte, out any) error {
	return c.withRetry(ctx, func(ctx context.Context, conn mux.Conn) error {
		res, err := c.exchange(ctx, conn, m, path, format, body, nil)
		if err != nil || out == nil || len(res.body) == 0 {
			return err
		}
		if !res.hasFormat || res.format != CBOR {
			return formatError(res)
		}
		if err := c.dec.Unmarshal(res.body, out); err != nil {
			return newDecodeError(err)
		}
		return nil
	})
}

// GetIfChanged fetches path unless the copy the caller holds, named by
// etag (the ETag its last answer carried; nil for none), is current: the
// server then answers 2.03 Valid without a body (Response.ETag), and
// GetIfChanged returns changed false and out untouched. Otherwise it
// decodes the answer into out, as Get does, and returns its ETag.
func (c *Client) GetIfChanged(ctx context.Context, path string, etag []byte, out any) (changed bool, newETag []byte, err error) {
	var res result
	err = c.withRetry(ctx, func(ctx context.Context, conn mux.Conn) error {
		var err error
		res, err = c.exchange(ctx, conn, GET, path, 0, nil, func(req *pool.Message) {
			if n := len(etag); n > 0 && n <= 8 {
				req.AddOptionBytes(message.ETag, etag)
			}
		})
		return err
	})
	switch {
	case err != nil:
		return false, nil, err
	case res.code == Valid:
		return false, etag, nil
	case !res.hasFormat || res.format != CBOR:
		return false, nil, formatError(res)
	}
	if err := c.dec.Unmarshal(res.body, out); err != nil {
		return false, nil, newDecodeError(err)
	}
	return true, res.etag, nil
}

// GetRaw fetches path and returns the response's format and body.
func (c *Client) GetRaw(ctx context.Context, path string) (Format, []byte, error) {
	var res result
	err := c.withRetry(ctx, func(ctx context.Context, conn mux.Conn) error {
		var err error
		res, err = c.exchange(ctx, conn, GET, path, 0, nil, nil)
		return err
	})
	if err != nil {
		return 0, nil, err
	}
	return res.format, res.body, nil
}

func formatError(res result) error {
	if !res.hasFormat {
		return fmt.Errorf("%w: none, want CBOR (%d)", ErrUnexpectedFormat, CBOR)
	}
	return fmt.Errorf("%w: %d, want CBOR (%d)", ErrUnexpectedFormat, res.format, CBOR)
}

// A result is a 2.xx response.
type result struct {
	format    Format
	hasFormat bool
	body      []byte
	seq       uint32 // its Observe option
	observed  bool   // it has an Observe option
	code      Code
	etag      []byte // its ETag option, if any
}

// exchange sends one request on conn and returns the 2.xx response. setup,
// when set, adjusts the request before it goes.
func (c *Client) exchange(ctx context.Context, conn mux.Conn, m Method, path string, format Format, body []byte, setup func(*pool.Message)) (result, error) {
	op := func() string { return m.String() + " " + path } // for errors only
	var req *pool.Message
	var err error
	switch m {
	case GET:
		req, err = conn.NewGetRequest(ctx, path)
	case DELETE:
		req, err = conn.NewDeleteRequest(ctx, path)
	case POST:
		req, err = conn.NewPostRequest(ctx, path, message.MediaType(format), bytes.NewReader(body))
	case PUT:
		req, err = conn.NewPutRequest(ctx, path, message.MediaType(format), bytes.NewReader(body))
	default:
		return result{}, fmt.Errorf("transport: unsupported method %v", m)
	}
	if err != nil {
		return result{}, fmt.Errorf("transport: %s: %w", op(), err)
	}
	defer conn.ReleaseMessage(req)
	if (m == GET || m == DELETE) && len(body) > 0 {
		req.SetContentFormat(message.MediaType(format))
		req.SetBody(bytes.NewReader(body))
	}
	if setup != nil {
		setup(req)
	}
	if len(body) > 0 && (c.url.Scheme == "coap" || c.url.Scheme == "coaps") {
		// Only a request with a body may be answered 2.31 Continue (the
		// client's filter, over UDP and DTLS).
		key := string(req.Token())
		c.mu.Lock()
		c.uploads[key] = struct{}{}
		c.mu.Unlock()
		defer func() {
			c.mu.Lock()
			delete(c.uploads, key)
			c.mu.Unlock()
		}()
	}
	resp, err := conn.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = errNoResponse
		}
		return result{}, &connError{op: op(), err: err}
	}
	defer conn.ReleaseMessage(resp)
	b, err := readAll(resp)
	if err != nil {
		return result{}, fmt.Errorf("transport: %s: reading the response: %w", op(), err)
	}
	code := Code(resp.Code())
	switch {
	case code == 0:
		return result{}, fmt.Errorf("%w: %s", ErrReset, op())
	case !code.IsSuccess():
		return result{}, responseError(code, resp, b)
	}
	res := result{body: b, code: code}
	if cf, err := resp.ContentFormat(); err == nil {
		res.format, res.hasFormat = Format(cf), true
	}
	if e, err := resp.Options().GetBytes(message.ETag); err == nil {
		res.etag = bytes.Clone(e)
	}
	if seq, err := resp.Observe(); err == nil {
		res.seq, res.observed = seq, true
	}
	return res, nil
}

// maxDiagnostic caps the diagnostic kept from an error response, in bytes.
const maxDiagnostic = 1024

// responseError returns the *Error of a 4.xx or 5.xx response m with body.
// The diagnostic is UTF-8 text without a content-format (RFC 7252 section
// 5.5.2), or, from servers before that was fixed here, a CBOR text string
// with content-format 60; it is cleaned of control characters and
// capped, for it goes into logs.
func responseError(code Code, m *pool.Message, body []byte) *Error {
	e := &Error{Code: code}
	if code == ServiceUnavailable || code == TooManyRequests {
		if secs, err := m.GetOptionUint32(message.MaxAge); err == nil {
			e.RetryAfter = time.Duration(secs) * time.Second
		}
	}
	if len(body) == 0 {
		return e
	}
	cf, err := m.ContentFormat()
	switch {
	case err != nil || cf == message.TextPlain:
		e.Diagnostic = cleanDiagnostic(string(body))
	case cf == message.AppCBOR:
		var diag string
		if codec.Unmarshal(body, &diag) == nil {
			e.Diagnostic = cleanDiagnostic(diag)
		}
	}
	return e
}

// cleanDiagnostic makes a peer's diagnostic safe to print: valid UTF-8,
// no control characters, at most maxDiagnostic bytes.
func cleanDiagnostic(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '\uFFFD'
		}
		return r
	}, s)
	if len(s) > maxDiagnostic {
		cut := maxDiagnostic
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

// Over UDP and DTLS the client's filter sees every message from the
// server, parsed, before
// go-coap's block-wise layer or a response handler does. A client serves
// no requests, so a request from the server is dropped; and 2.31 Continue,
// or a Block1 option, answers only an upload in flight: go-coap v3.8.0
// takes them, for a request without a body, as a cue to send the next
// block of a body it does not have, and crashes the process.
func (c *Client) udpFilter(_ *udpclient.Conn, m *pool.Message) (bool, error) {
	return c.filter(m), nil
}

// filter reports whether to drop m.
func (c *Client) filter(m *pool.Message) bool {
	code := m.Code()
	switch {
	case code == codes.Empty:
		return false // ping, ACK, RST
	case code < 32:
		return true // a request, or a reserved code
	}
	if code == codes.Continue || m.HasOption(message.Block1) {
		c.mu.Lock()
		_, ok := c.uploads[string(m.Token())]
		c.mu.Unlock()
		return !ok
	}
	return false
}

func readAll(m *pool.Message) ([]byte, error) {
	if m.Body() == nil {
		return nil, nil
	}
	if _, err := m.Body().Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	if n, err := m.BodySize(); err == nil && n >= 0 && n <= math.MaxInt32 {
		b := make([]byte, n) // one allocation of the known size
		_, err := io.ReadFull(m.Body(), b)
		return b, err
	}
	return io.ReadAll(m.Body())
}

// Close ends the client: its observations (their handlers are not called
// again), its keeper, and its connection, waiting until go-coap has let go
// of it and every goroutine of the client has returned. It is idempotent.
// It must not be called from an observation's handler, whose return it
// would wait for.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	conn := c.conn
	c.conn = nil
	obs := make([]*Observation, 0, len(c.observations))
	for o := range c.observations {
		obs = append(obs, o)
		o.on = nil
	}
	clear(c.observations)
	clear(c.byToken)
	c.mu.Unlock()
	c.stop()
	c.clock.stop()
	for _, o := range obs {
		o.halt()
	}
	c.dialMu.Lock() // wait out a reconnect in progress
	var err error
	if conn != nil {
		err = conn.Close()
		<-conn.Done()
	}
	c.dialMu.Unlock()
	c.wg.Wait()
	close(c.tick)
	return err
}
