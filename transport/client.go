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
	"math/rand/v2"
	"net"
	"net/url"
	"sync"
	"time"

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
	// zero means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// MaxMessageSize caps one message; zero means DefaultMaxMessageSize.
	MaxMessageSize int
	// MaxResponseBody caps a response body decoded by the client; zero
	// means codec.DefaultMaxBody.
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
	// Logger receives go-coap's diagnostics; nil discards them.
	Logger *slog.Logger
}

// RetryPolicy governs retries. A request is retried when it may not have
// reached the server (the connection failed or timed out: the client
// reconnects first, authenticating again) or when the server answered 5.03
// or 4.29; never for another error response, and never past the caller's
// context. Waits grow exponentially from Base to Max with full jitter. v1
// requests are safe to repeat: telemetry carries an idempotency key.
type RetryPolicy struct {
	// Attempts is how many times a request is tried in all; zero means
	// DefaultRetryAttempts, 1 disables retries.
	Attempts int
	// Base is the first wait; zero means 100 ms.
	Base time.Duration
	// Max caps one wait; zero means 5 s.
	Max time.Duration
}

// DefaultRetryAttempts is how many times a request is tried by default.
const DefaultRetryAttempts = 4

func (p RetryPolicy) attempts() int {
	if p.Attempts <= 0 {
		return DefaultRetryAttempts
	}
	return p.Attempts
}

// wait returns the pause before retry number n (0 for the first retry):
// a random duration up to min(Max, Base*2^n).
func (p RetryPolicy) wait(n int) time.Duration {
	base, max := p.Base, p.Max
	if base <= 0 {
		base = 100 * time.Millisecond
	}
	if max <= 0 {
		max = 5 * time.Second
	}
	d := base << min(n, 20)
	if d <= 0 || d > max {
		d = max
	}
	return time.Duration(rand.Int64N(int64(d)) + 1)
}

// A Client talks to one server over one of the four transports. It is safe
// for concurrent use.
type Client struct {
	cfg ClientConfig
	url *url.URL
	log *slog.Logger
	dec *codec.Decoder

	tick chan struct{} // closed by Close: ends go-coap's periodic runner

	dialMu sync.Mutex // held while reconnecting

	mu           sync.Mutex
	conn         mux.Conn // nil after a failure, until the next request redials
	closed       bool
	observations map[*Observation]struct{}
	uploads      map[string]struct{} // tokens of requests with a body in flight
}

// Dial connects to rawURL (coap://, coaps://, coap+tcp:// or coaps+tcp://),
// completing any DTLS or TLS handshake within ctx, and, if cfg.Signer is
// set, authenticates with a device token.
func Dial(ctx context.Context, rawURL string, cfg ClientConfig) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("transport: dial address: %w", err)
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = DefaultMaxMessageSize
	}
	if cfg.Audience == "" {
		cfg.Audience = u.Scheme + "://" + u.Host
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dec, err := codec.NewDecoder(codec.Limits{MaxBody: cfg.MaxResponseBody})
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, url: u, log: log, dec: dec, tick: make(chan struct{}), observations: make(map[*Observation]struct{}),
		uploads: make(map[string]struct{})}
	conn, err := c.connect(ctx)
	if err != nil {
		close(c.tick)
		return nil, err
	}
	c.conn = conn
	return c, nil
}

// live returns the current connection, or dials a new one (authenticating
// and re-registering observations) if the last one failed.
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
			c.drop(conn)
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
	c.reobserve(ctx, conn)
	return conn, nil
}

// reobserve registers every observation again on conn, after a reconnect
// or after the server lost the session.
func (c *Client) reobserve(ctx context.Context, conn mux.Conn) {
	c.mu.Lock()
	obs := make([]*Observation, 0, len(c.observations))
	for o := range c.observations {
		obs = append(obs, o)
	}
	c.mu.Unlock()
	for _, o := range obs {
		if err := o.register(ctx, conn); err != nil {
			c.log.Warn("transport: re-registering observation", "path", o.path, "err", err)
		}
	}
}

// drop forgets conn after a failure and closes it.
func (c *Client) drop(conn mux.Conn) {
	c.mu.Lock()
	if c.conn == conn {
		c.conn = nil
	}
	c.mu.Unlock()
	conn.Close()
	<-conn.Done()
}

// withRetry runs fn on a live connection, retrying per the RetryPolicy.
func (c *Client) withRetry(ctx context.Context, fn func(mux.Conn) error) error {
	attempts := c.cfg.Retry.attempts()
	for n := 0; ; n++ {
		conn, err := c.live(ctx)
		if err == nil {
			err = fn(conn)
			switch {
			case err == nil:
			case errors.Is(err, ErrUnauthorized) && c.usesToken():
				// The server lost the session (it restarted, or a
				// device's UDP source address changed): authenticate
				// again on this connection.
				if aerr := c.authenticate(ctx, conn); aerr == nil {
					c.reobserve(ctx, conn)
					err = fn(conn)
				}
			case connFailed(err):
				c.drop(conn)
			}
		}
		if err == nil || !retryable(err) || n+1 >= attempts || ctx.Err() != nil {
			return err
		}
		t := time.NewTimer(c.cfg.Retry.wait(n))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
	}
}

// connFailed reports whether err came from the connection rather than from
// a response. (go-coap reports a closed connection with a context error of
// its own; the caller's context is checked separately.)
func connFailed(err error) bool {
	var e *Error
	return !errors.As(err, &e) && !errors.Is(err, ErrClosed)
}

func retryable(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return e.Code == ServiceUnavailable || e.Code == TooManyRequests
	}
	return !errors.Is(err, ErrClosed)
}

// usesToken reports whether sessions are authenticated by a device token.
func (c *Client) usesToken() bool {
	return c.cfg.Signer != nil && c.cfg.PSK == nil && c.cfg.Certificate == nil
}

func (c *Client) connect(ctx context.Context) (mux.Conn, error) {
	errs := options.WithErrors(func(err error) { c.log.Debug("coap", "err", err) })
	maxMsg := options.WithMaxMessageSize(uint32(c.cfg.MaxMessageSize))
	ticker := options.WithPeriodicRunner(periodic.New(c.tick, time.Second))
	var conn mux.Conn
	var err error
	switch c.url.Scheme {
	case "coap":
		conn, err = udp.Dial(c.url.Host, errs, maxMsg, ticker, options.WithContext(context.WithoutCancel(ctx)),
			options.WithRequestMonitor(c.udpFilter),
			options.WithInactivityMonitor(c.cfg.IdleTimeout, func(cc *udpclient.Conn) { cc.Close() }))
	case "coaps":
		var dc *piondtls.Conn
		if dc, err = c.dialDTLS(ctx); err != nil {
			return nil, err
		}
		conn = dtls.Client(dc, errs, maxMsg, ticker, options.WithCloseSocket(), options.WithContext(context.WithoutCancel(ctx)),
			options.WithRequestMonitor(c.udpFilter),
			options.WithInactivityMonitor(c.cfg.IdleTimeout, func(cc *udpclient.Conn) { cc.Close() }))
	case "coap+tcp", "coaps+tcp":
		var tcfg *tls.Config
		if c.url.Scheme == "coaps+tcp" {
			tcfg = c.tlsConfig()
		}
		conn, err = c.dialTCP(ctx, tcfg, errs, maxMsg, ticker)
	default:
		return nil, fmt.Errorf("transport: unsupported scheme %q", c.url.Scheme)
	}
	if err != nil {
		return nil, fmt.Errorf("transport: dial %s: %w", c.url.Redacted(), err)
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
func (c *Client) dialDTLS(ctx context.Context) (*piondtls.Conn, error) {
	opts, err := c.dtlsOptions()
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "udp", c.url.Host)
	if err != nil {
		return nil, fmt.Errorf("transport: dial %s: %w", c.url.Redacted(), err)
	}
	dc, err := piondtls.ClientWithOptions(dtlsnet.PacketConnFromConn(nc), nc.RemoteAddr(), opts...)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("transport: dtls: %w", err)
	}
	if err := dc.HandshakeContext(ctx); err != nil {
		dc.Close()
		nc.Close()
		return nil, fmt.Errorf("transport: dtls handshake with %s: %w", c.url.Host, err)
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
func (c *Client) dialTCP(ctx context.Context, tcfg *tls.Config, opts ...tcp.Option) (*tcpclient.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", c.url.Host)
	if err != nil {
		return nil, err
	}
	if tcfg != nil {
		tc := tls.Client(nc, tcfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("transport: tls handshake with %s: %w", c.url.Host, err)
		}
		nc = tc
	}
	opts = append(opts, options.WithContext(context.WithoutCancel(ctx)), options.WithCloseSocket(),
		// Over TCP a message carries its whole body (RFC 8323): no
		// block-wise layer, and none for a hostile server to crash.
		options.WithBlockwise(false, blockwise.SZX1024, 0),
		options.WithInactivityMonitor(c.cfg.IdleTimeout, func(cc *tcpclient.Conn) { cc.Close() }))
	conn, err := tcp.Client(nc, opts...)
	if err != nil {
		nc.Close()
		return nil, err
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
	return c.roundTrip(ctx, conn, POST, AuthPath, CBOR, body, nil)
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
// a CBOR response into out (nil to discard it). A 4.xx or 5.xx response is
// an *Error, matched by the Err sentinels with errors.Is.
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
	return c.withRetry(ctx, func(conn mux.Conn) error {
		return c.roundTrip(ctx, conn, m, path, format, body, out)
	})
}

// GetRaw fetches path and returns the response's format and body.
func (c *Client) GetRaw(ctx context.Context, path string) (Format, []byte, error) {
	var format Format
	var body []byte
	err := c.withRetry(ctx, func(conn mux.Conn) error {
		resp, err := conn.Get(ctx, path)
		if err != nil {
			return err
		}
		defer conn.ReleaseMessage(resp)
		cf, _ := resp.ContentFormat()
		b, err := readAll(resp)
		if err != nil {
			return err
		}
		if code := Code(resp.Code()); !code.IsSuccess() {
			return c.responseError(code, Format(cf), b)
		}
		format, body = Format(cf), b
		return nil
	})
	return format, body, err
}

func (c *Client) roundTrip(ctx context.Context, conn mux.Conn, m Method, path string, format Format, body []byte, out any) error {
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
		return fmt.Errorf("transport: unsupported method %v", m)
	}
	if err != nil {
		return err
	}
	defer conn.ReleaseMessage(req)
	if len(body) > 0 {
		// Only a request with a body may be answered 2.31 Continue.
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
	if m == GET || m == DELETE {
		if len(body) > 0 {
			req.SetContentFormat(message.MediaType(format))
			req.SetBody(bytes.NewReader(body))
		}
	}
	resp, err := conn.Do(req)
	if err != nil {
		return fmt.Errorf("transport: %s %s: %w", m, path, err)
	}
	defer conn.ReleaseMessage(resp)
	code := Code(resp.Code())
	cf, _ := resp.ContentFormat()
	b, err := readAll(resp)
	if err != nil {
		return err
	}
	if !code.IsSuccess() {
		return c.responseError(code, Format(cf), b)
	}
	if out == nil || len(b) == 0 {
		return nil
	}
	if Format(cf) != CBOR {
		return fmt.Errorf("transport: response content-format %d, want CBOR", cf)
	}
	return c.dec.Unmarshal(b, out)
}

func (c *Client) responseError(code Code, cf Format, body []byte) *Error {
	e := &Error{Code: code}
	if cf == CBOR && len(body) > 0 {
		var diag string
		if c.dec.Unmarshal(body, &diag) == nil {
			e.Diagnostic = diag
		}
	}
	return e
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
	return io.ReadAll(m.Body())
}

// Close closes the connection and waits until go-coap has let go of it.
// It is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	conn := c.conn
	c.conn = nil
	c.mu.Unlock()
	c.dialMu.Lock() // wait out a reconnect in progress
	defer c.dialMu.Unlock()
	var err error
	if conn != nil {
		err = conn.Close()
		<-conn.Done()
	}
	close(c.tick)
	return err
}
