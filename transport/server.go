package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	piondtls "github.com/pion/dtls/v3"
	"github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	coapnet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/pkg/runner/periodic"
	"github.com/plgd-dev/go-coap/v3/tcp"
	tcpclient "github.com/plgd-dev/go-coap/v3/tcp/client"
	tcpserver "github.com/plgd-dev/go-coap/v3/tcp/server"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"
	udpserver "github.com/plgd-dev/go-coap/v3/udp/server"
	"golang.org/x/sync/semaphore"

	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
)

// Defaults for ServerConfig's zero fields.
const (
	// DefaultIdleTimeout is how long a connection may stay silent before
	// the server drops it: minutes, for sleepy devices (go-coap's own
	// default is 16 s).
	DefaultIdleTimeout = 5 * time.Minute
	// DefaultMaxMessageSize caps one CoAP message: 1 MiB. Over UDP and DTLS
	// large bodies travel block-wise (RFC 7959) in 1 KiB blocks; over TCP
	// and TLS a message carries its whole body, since go-coap peers do not
	// negotiate block-wise transfer there, so this also caps a body.
	DefaultMaxMessageSize = 1 << 20
	// DefaultRequestTimeout bounds one handler call.
	DefaultRequestTimeout = 30 * time.Second
	// DefaultMaxConnections caps a server's concurrent connections (it is
	// lowered to fit the process's file-descriptor limit).
	DefaultMaxConnections = 50000
	// DefaultMaxConnectionsPerPrefix caps connections from one IPv4 /24
	// or IPv6 /56.
	DefaultMaxConnectionsPerPrefix = 1024
	// DefaultMaxHandshakes caps DTLS and TLS handshakes in progress.
	DefaultMaxHandshakes = 256
	// DefaultMaxCookieWaits caps DTLS handshakes waiting for their
	// cookie: about 70 MB when all wait.
	DefaultMaxCookieWaits = 2048
	// DefaultHandshakeTimeout bounds one handshake.
	DefaultHandshakeTimeout = 5 * time.Second
	// DefaultMaxInFlightBytes bounds request bytes held at once: 64 MiB.
	DefaultMaxInFlightBytes = 64 << 20
	// DefaultMaxUnauthenticated caps unauthenticated plain-UDP peers.
	DefaultMaxUnauthenticated = 4096
	// DefaultUnauthenticatedIdle is how long an unauthenticated UDP peer
	// is kept after its last datagram.
	DefaultUnauthenticatedIdle = 10 * time.Second
	// DefaultMaxObservations caps Observe registrations per connection.
	DefaultMaxObservations = 16
)

// DefaultHandshakeRate returns the handshake rate a server allows by
// default: 500 per second, in bursts of up to 1000.
func DefaultHandshakeRate() RateLimit { return RateLimit{PerSecond: 500, Burst: 1000} }

// DefaultRateLimit returns the request rate a server allows each peer by
// default: 50 per second, in bursts of up to 200.
func DefaultRateLimit() RateLimit { return RateLimit{PerSecond: 50, Burst: 200} }

// AuthPath is the resource where a device presents its token, once per
// session, on a transport without client authentication.
const AuthPath = "/v1/auth"

// ServerConfig configures a Server. The zero value serves plain coap:// and
// coap+tcp:// with defaults, and accepts no device authentication, so only
// Public resources can be used.
type ServerConfig struct {
	// Tokens verifies device tokens posted to AuthPath; nil disables token
	// authentication (and the resource).
	Tokens *identity.TokenVerifier
	// IdleTimeout closes a connection silent this long; zero means
	// DefaultIdleTimeout.
	IdleTimeout time.Duration
	// MaxMessageSize caps one message; zero means DefaultMaxMessageSize.
	MaxMessageSize int
	// RequestTimeout bounds each handler call through its context; zero
	// means DefaultRequestTimeout.
	RequestTimeout time.Duration
	// MaxConnections caps concurrent connections (DTLS sessions, TCP and
	// TLS connections, UDP peers) across all listeners; past it new ones
	// are refused. Zero means DefaultMaxConnections.
	MaxConnections int
	// HandshakeRate bounds new DTLS and TLS handshakes across all
	// listeners, the expensive part of a connection storm after an
	// outage; the zero value means DefaultHandshakeRate().
	HandshakeRate RateLimit
	// RateLimit bounds requests per peer (per device once authenticated,
	// per source IP address before). A peer over it is answered 4.29 at most once a
	// second; its other requests are dropped unanswered, so that a flood
	// costs the server as little as possible. The zero value means
	// DefaultRateLimit(); a negative PerSecond means no limit.
	RateLimit RateLimit
	// PSK returns a device's pre-shared key for DTLS-PSK
	// (TLS_PSK_WITH_AES_128_CCM_8), the PSK identity being the device ID;
	// nil disables PSK. See DerivePSK for per-device keys from a fleet
	// secret.
	PSK func(ctx context.Context, id identity.ID) ([]byte, error)
	// Certificate is the server's certificate chain and key for
	// coaps+tcp:// (TLS) and for coaps:// with certificates (listen URL
	// query auth=cert, or no PSK configured).
	Certificate *tls.Certificate
	// DeviceRoots are the manufacturer roots that device certificate
	// chains must lead to (identity.VerifyChain). With DeviceRoots set,
	// a device presenting its certificate is authenticated by it; a
	// client presenting none may still post a token when Tokens is set.
	DeviceRoots *x509.CertPool
	// MaxConnectionsPerPrefix caps live connections from one source
	// prefix (an IPv4 /24 or an IPv6 /56), so that one network cannot take
	// every slot; zero means DefaultMaxConnectionsPerPrefix.
	MaxConnectionsPerPrefix int
	// MaxHandshakes caps DTLS and TLS handshakes in progress at once,
	// across listeners; past it new ones are dropped before any
	// cryptography. Zero means DefaultMaxHandshakes.
	MaxHandshakes int
	// MaxCookieWaits caps the DTLS handshakes on each coaps:// listener
	// that wait for the client to echo its cookie: a first ClientHello,
	// which anyone can send from a spoofed address, costs one of them
	// (about 35 KB and four goroutines) and nothing else. One source
	// prefix may hold an eighth of them. When they are all taken a new one
	// drops the oldest; see Caveats in the package documentation. Zero
	// means DefaultMaxCookieWaits.
	MaxCookieWaits int
	// HandshakeTimeout bounds one DTLS or TLS handshake, from its first
	// message to the last; on coap+tcp:// and coaps+tcp:// it is also the
	// time a new connection has to send its first CoAP message (the CSM).
	// Zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// MaxInFlightBytes bounds the request bytes the server holds at once
	// across all connections: block-wise uploads being reassembled and
	// TCP or TLS messages being read. A request that would pass it waits
	// (TCP) or gets 5.03 with Max-Age (UDP, DTLS). Zero means
	// DefaultMaxInFlightBytes.
	MaxInFlightBytes int64
	// MaxUnauthenticated caps the plain-UDP peers (coap://) that have not
	// authenticated; when it is full the peer silent longest is
	// forgotten. They live UnauthenticatedIdle after their last request.
	// Zero means DefaultMaxUnauthenticated.
	MaxUnauthenticated int
	// UnauthenticatedIdle is how long an unauthenticated UDP peer is kept
	// after its last datagram; zero means DefaultUnauthenticatedIdle.
	UnauthenticatedIdle time.Duration
	// MaxObservations caps Observe registrations per connection; zero
	// means DefaultMaxObservations.
	MaxObservations int
	// TokensOverUDP lets a device authenticate with a token over plain
	// coap://. It is off by default: over UDP a session is only a source
	// address and port, which anyone on the path, and off-path anyone who
	// can spoof that address, can send from. Over coap+tcp:// the token
	// binds to the TCP connection; over DTLS and TLS to the secure session.
	TokensOverUDP bool
	// Authorize, when set, is called whenever a device authenticates (a
	// DTLS-PSK or certificate handshake, a device token) and may refuse
	// it: a decommissioned device, a leaked key. A refused handshake
	// fails; a refused token gets 4.01. Server.Revoke closes the
	// sessions a device already has.
	Authorize func(ctx context.Context, p Peer) error
	// Logger receives what the server and go-coap would otherwise print;
	// nil discards it.
	Logger *slog.Logger
}

// A Peer is a device as it authenticates, for ServerConfig.Authorize.
type Peer struct {
	// Device is the authenticated device.
	Device identity.ID
	// Method says how it authenticated: "psk", "cert" or "token"; or
	// "revoked" when a session of a device that Revoke named a moment
	// ago is asked about again (its handshake was authorized before the
	// revocation). For "psk" the device is only claimed: the hook runs
	// before the handshake proves the key.
	Method string
	// Scheme is the transport: "coap", "coaps", "coap+tcp" or "coaps+tcp".
	Scheme string
	// Addr is the peer's network address, when known: handshakes are
	// authorized before the connection exists (nil then), tokens after.
	Addr net.Addr
	// Chain is the verified certificate chain, device first, when Method
	// is "cert".
	Chain []*x509.Certificate
}

// A Server serves resources over any of the four CoAP transports, one
// handler API for all. It is safe for concurrent use.
type Server struct {
	cfg     ServerConfig
	log     *slog.Logger
	limiter *limiter
	obs     observers
	hs      *limiter     // handshakes, one bucket for the server
	unauth  *unauthPeers // plain-UDP peers not (yet) authenticated
	// revoked holds when Revoke last named each device, for a while.
	revokedMu sync.Mutex
	revoked   map[identity.ID]time.Time
	notices   *limiter // 4.29 answers to peers over the rate limit
	devs      devices  // the live sessions of each device
	// admit counts live connections, in all and per source prefix.
	adm *admission
	// slots caps DTLS and TLS handshakes in progress.
	slots *handshakeSlots
	// inflight bounds request bytes held across all connections.
	inflight *semaphore.Weighted

	mu     sync.RWMutex
	routes map[string]*route
	closed bool
	stops  []func()
	wg     sync.WaitGroup
	tick   chan struct{}   // closed by Close: ends go-coap's periodic runners
	stop   chan struct{}   // closed by Close: ends the sweeper
	ctx    context.Context // canceled by Close
	// ackTimeout, when set (by tests), shortens CoAP's ACK_TIMEOUT on
	// the UDP and DTLS listeners opened after.
	ackTimeout time.Duration
	cancel     context.CancelFunc
	live       map[*session]struct{}
	linkBody   []byte
}

// NewServer returns a Server with no resources and no listeners.
func NewServer(cfg ServerConfig) *Server {
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = DefaultMaxMessageSize
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.HandshakeRate.PerSecond <= 0 {
		cfg.HandshakeRate = DefaultHandshakeRate()
	}
	switch {
	case cfg.RateLimit.PerSecond == 0:
		cfg.RateLimit = DefaultRateLimit()
	case cfg.RateLimit.PerSecond < 0:
		cfg.RateLimit = RateLimit{} // no limit
	}
	if cfg.MaxConnectionsPerPrefix <= 0 {
		cfg.MaxConnectionsPerPrefix = DefaultMaxConnectionsPerPrefix
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = DefaultMaxHandshakes
	}
	if cfg.MaxCookieWaits <= 0 {
		cfg.MaxCookieWaits = DefaultMaxCookieWaits
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.MaxInFlightBytes <= 0 {
		cfg.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	if cfg.MaxUnauthenticated <= 0 {
		cfg.MaxUnauthenticated = DefaultMaxUnauthenticated
	}
	if cfg.UnauthenticatedIdle <= 0 {
		cfg.UnauthenticatedIdle = DefaultUnauthenticatedIdle
	}
	if cfg.MaxObservations <= 0 {
		cfg.MaxObservations = DefaultMaxObservations
	}
	cfg.MaxConnections = clampToFileLimit(cfg.MaxConnections)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, routes: make(map[string]*route), limiter: newLimiter(cfg.RateLimit),
		hs: newLimiter(cfg.HandshakeRate), tick: make(chan struct{}),
		adm: newAdmission(cfg.MaxConnections, cfg.MaxConnectionsPerPrefix), inflight: semaphore.NewWeighted(cfg.MaxInFlightBytes),
		unauth: newUnauthPeers(cfg.MaxUnauthenticated, cfg.MaxConnectionsPerPrefix, cfg.UnauthenticatedIdle),
		stop:   make(chan struct{}), live: make(map[*session]struct{}),
		notices: newLimiter(RateLimit{PerSecond: 1, Burst: noticeBurst}),
		slots:   newHandshakeSlots(cfg.MaxHandshakes)}
	if cfg.Tokens != nil {
		dec := mustDecoder(codec.Limits{MaxBody: identity.DefaultMaxTokenSize + 16})
		s.routes[AuthPath] = &route{Resource: Resource{
			Path: AuthPath, Methods: []Method{POST}, Public: true, Formats: []Format{CBOR},
			MaxBody: dec.Limits().MaxBody, Attributes: []string{`rt="sensible.auth"`},
		}, dec: dec}
	}
	s.relink()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.unauth.keep = func(ss *session) bool { return s.obs.has(ss.conn) }
	s.wg.Add(1)
	go s.sweep()
	return s
}

func mustDecoder(l codec.Limits) *codec.Decoder {
	d, err := codec.NewDecoder(l)
	if err != nil {
		panic(err) // fixed limits above
	}
	return d
}

// Handle adds a resource. It fails for an invalid resource, a path already
// served, or a closed server.
func (s *Server) Handle(r Resource) error {
	rt, err := newRoute(r)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if _, dup := s.routes[r.Path]; dup {
		return fmt.Errorf("transport: %s is already served", r.Path)
	}
	s.routes[r.Path] = rt
	s.relink()
	return nil
}

// relink renders /.well-known/core; s.mu is held.
func (s *Server) relink() {
	rs := make([]*route, 0, len(s.routes))
	for _, r := range s.routes {
		rs = append(rs, r)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].Path < rs[j].Path })
	s.linkBody = []byte(linkFormat(rs))
}

// Listen starts serving on address, a URL whose scheme picks the
// transport: coap:// (UDP), coaps:// (DTLS 1.2), coap+tcp:// (TCP) or
// coaps+tcp:// (TLS 1.2 or later). coaps:// uses PSK when ServerConfig.PSK
// is set, certificates otherwise; the query auth=cert or auth=psk chooses
// when both are configured (one DTLS listener does one or the other).
// Port 0 picks a free port.
// It returns the URL actually listened on. Serving goes on until Close.
//
// A URL that cannot be used fails with an error matching ErrBadURL; an
// address and port already taken, with one matching ErrAddressInUse.
func (s *Server) Listen(address string) (string, error) {
	u, err := url.Parse(address)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadURL, err)
	}
	switch u.Scheme {
	case "coap", "coaps", "coap+tcp", "coaps+tcp":
	default:
		return "", fmt.Errorf("%w: unsupported scheme %q (want coap, coaps, coap+tcp or coaps+tcp)", ErrBadURL, u.Scheme)
	}
	if auth := u.Query().Get("auth"); u.Scheme == "coaps" && auth != "" && auth != "psk" && auth != "cert" {
		return "", fmt.Errorf("%w: unknown auth %q (want psk or cert)", ErrBadURL, auth)
	}
	got, err := s.listen(u)
	if err != nil && errors.Is(err, syscall.EADDRINUSE) && !errors.Is(err, ErrAddressInUse) {
		err = fmt.Errorf("%w: %w", ErrAddressInUse, err)
	}
	return got, err
}

func (s *Server) listen(u *url.URL) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return "", ErrClosed
	}
	m := mux.HandlerFunc(s.serveCOAP)
	errs := options.WithErrors(func(err error) { s.log.Debug("coap", "err", err) })
	maxMsg := options.WithMaxMessageSize(uint32(s.cfg.MaxMessageSize))
	// go-coap's default runner sleeps in 4 s steps and outlives Stop.
	ticker := options.WithPeriodicRunner(periodic.New(s.tick, time.Second))
	switch u.Scheme {
	case "coap":
		l, err := listenUDP(u.Host)
		if err != nil {
			return "", err
		}
		opts := []udpserver.Option{options.WithMux(m), errs, maxMsg, ticker,
			options.WithInactivityMonitor(s.cfg.IdleTimeout, func(cc *udpclient.Conn) { cc.Close() }),
			options.WithRequestMonitor(s.udpFilter),
			options.WithOnNewConn(func(cc *udpclient.Conn) { s.admitUDP(cc) }),
		}
		if s.ackTimeout > 0 {
			opts = append(opts, options.WithTransmission(1, s.ackTimeout, 2))
		}
		srv := udp.NewServer(opts...)
		s.serve(func() error { return srv.Serve(l) }, func() { srv.Stop() })
		return "coap://" + l.LocalAddr().String(), nil
	case "coaps":
		opts, err := s.dtlsOptions(u.Query().Get("auth"))
		if err != nil {
			return "", err
		}
		l, err := listenDTLS(u.Host, dtlsListenConfig{opts: opts, timeout: s.cfg.HandshakeTimeout,
			maxFresh: s.cfg.MaxCookieWaits, slots: s.slots, adm: s.adm, rate: s.hs, log: s.log})
		if err != nil {
			return "", err
		}
		// The listener returns established sessions only (dtlslisten.go).
		srv := dtls.NewServer(options.WithMux(m), errs, maxMsg, ticker,
			options.WithInactivityMonitor(s.cfg.IdleTimeout, func(cc *udpclient.Conn) { cc.Close() }),
			options.WithRequestMonitor(s.udpFilter),
			// The listener has admitted the session already.
			options.WithOnNewConn(func(cc *udpclient.Conn) { s.dtlsSession(cc, s.attach(cc, "coaps")) }),
		)
		s.serve(func() error {
			defer l.shutdown() // after go-coap has closed its sessions
			return srv.Serve(l)
		}, func() { srv.Stop() })
		return "coaps://" + l.Addr().String(), nil
	case "coaps+tcp":
		if s.cfg.Certificate == nil {
			return "", errors.New("transport: coaps+tcp:// needs ServerConfig.Certificate")
		}
		// The listener admits each connection and completes its
		// handshake before go-coap sees it (tcplisten.go).
		l, err := s.listenTCP(u.Host, s.tlsConfig())
		if err != nil {
			return "", err
		}
		s.serveTCP(l, "coaps+tcp", s.tlsSession, options.WithMux(m), errs, maxMsg, ticker)
		return "coaps+tcp://" + l.Addr().String(), nil
	case "coap+tcp":
		l, err := s.listenTCP(u.Host, nil)
		if err != nil {
			return "", err
		}
		s.serveTCP(l, "coap+tcp", func(*tcpclient.Conn, *session) {}, options.WithMux(m), errs, maxMsg, ticker)
		return "coap+tcp://" + l.Addr().String(), nil
	}
	return "", fmt.Errorf("transport: unsupported scheme %q", u.Scheme)
}

// dtlsOptions configures a DTLS listener for PSK, with the suite RFC 7252
// makes mandatory, or for certificates. The listener adds connection IDs
// (RFC 9146), so a device whose address or port changes keeps its
// session, and does the handshake accounting: caps and rate are charged
// when the client echoes the cookie (dtlslisten.go).
func (s *Server) dtlsOptions(auth string) ([]piondtls.ServerOption, error) {
	if auth == "" {
		auth = "psk"
		if s.cfg.PSK == nil {
			auth = "cert"
		}
	}
	opts := []piondtls.ServerOption{
		piondtls.WithLoggerFactory(quietPion{}),
		piondtls.WithExtendedMasterSecret(piondtls.RequireExtendedMasterSecret),
	}
	switch auth {
	case "psk":
		if s.cfg.PSK == nil {
			return nil, errors.New("transport: coaps:// with PSK needs ServerConfig.PSK")
		}
		return append(opts,
			piondtls.WithCipherSuites(piondtls.TLS_PSK_WITH_AES_128_CCM_8),
			piondtls.WithPSK(func(hint []byte) ([]byte, error) {
				id, err := identity.ParseID(string(hint))
				if err != nil {
					return nil, err
				}
				// One device, one name: ParseID forgives case, dashes
				// and spaces, which would give a device several
				// spellings in logs and key lookups.
				if id.String() != string(hint) {
					return nil, errPSKIdentity
				}
				ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HandshakeTimeout)
				defer cancel()
				if err := s.authorize(ctx, Peer{Device: id, Method: "psk", Scheme: "coaps"}); err != nil {
					return nil, err
				}
				return s.cfg.PSK(ctx, id)
			})), nil
	case "cert":
		if s.cfg.Certificate == nil {
			return nil, errors.New("transport: coaps:// with certificates needs ServerConfig.Certificate")
		}
		return append(opts,
			piondtls.WithCipherSuites(piondtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, piondtls.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8),
			piondtls.WithCertificates(*s.cfg.Certificate),
			piondtls.WithClientAuth(pionClientAuth(s.clientAuth())),
			piondtls.WithVerifyPeerCertificate(s.verifyDevice("coaps"))), nil
	}
	return nil, fmt.Errorf("transport: unknown auth %q (want psk or cert)", auth)
}

// clientAuth asks for a device certificate, and requires one unless a
// device may authenticate with a token instead.
func (s *Server) clientAuth() tls.ClientAuthType {
	if s.cfg.Tokens != nil || s.cfg.DeviceRoots == nil {
		return tls.RequestClientCert
	}
	return tls.RequireAnyClientCert
}

func pionClientAuth(a tls.ClientAuthType) piondtls.ClientAuthType {
	if a == tls.RequireAnyClientCert {
		return piondtls.RequireAnyClientCert
	}
	return piondtls.RequestClientCert
}

// verifyDevice checks a device certificate chain during the handshake,
// and asks Authorize about the device, so that a bad chain or a refused
// device fails the handshake and never reaches a handler.
func (s *Server) verifyDevice(scheme string) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return nil // no certificate: the device may still post a token
		}
		id, err := s.deviceFromChain(raw)
		if err != nil || s.cfg.Authorize == nil {
			return err
		}
		chain := make([]*x509.Certificate, 0, len(raw))
		for _, r := range raw {
			c, err := x509.ParseCertificate(r)
			if err != nil {
				return err
			}
			chain = append(chain, c)
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
		defer cancel()
		return s.authorize(ctx, Peer{Device: id, Method: "cert", Scheme: scheme, Chain: chain})
	}
}

func (s *Server) deviceFromChain(raw [][]byte) (identity.ID, error) {
	if s.cfg.DeviceRoots == nil {
		return identity.ID{}, errors.New("transport: device certificates are not accepted (no DeviceRoots)")
	}
	chain := make([]*x509.Certificate, 0, len(raw))
	for _, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return identity.ID{}, err
		}
		chain = append(chain, c)
	}
	return identity.VerifyChain(chain, s.cfg.DeviceRoots, time.Now())
}

func (s *Server) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion:            tls.VersionTLS12,
		Certificates:          []tls.Certificate{*s.cfg.Certificate},
		ClientAuth:            s.clientAuth(),
		VerifyPeerCertificate: s.verifyDevice("coaps+tcp"),
	}
}

// dtlsSession returns the session of a new DTLS connection, whose device
// is the PSK identity or the certificate chain the handshake proved.
func (s *Server) dtlsSession(cc *udpclient.Conn, ss *session) {
	if dc, ok := cc.NetConn().(*piondtls.Conn); ok {
		if st, ok := dc.ConnectionState(); ok {
			if len(st.PeerCertificates) > 0 {
				if id, err := s.deviceFromChain(st.PeerCertificates); err == nil {
					s.bind(ss, id)
				}
			} else if id, err := identity.ParseID(string(st.IdentityHint)); err == nil {
				s.bind(ss, id)
			}
		}
	}
}

// conn is what admit needs of a go-coap connection.
type conn interface {
	SetContextValue(key, val any)
	AddOnClose(func())
	Close() error
	RemoteAddr() net.Addr
	Context() context.Context
}

// admitUDP takes a new plain-UDP peer into the unauthenticated quota,
// forgetting the peers it evicts.
func (s *Server) admitUDP(cc conn) {
	ss := s.attach(cc, "coap")
	for _, old := range s.unauth.add(ss) {
		old.conn.Close()
	}
}

// attach makes the session of a new connection and the one hook that
// cleans up after it.
func (s *Server) attach(cc conn, scheme string) *session {
	ss := &session{scheme: scheme, conn: cc}
	ss.touch(time.Now())
	cc.SetContextValue(sessionKey{}, ss)
	s.mu.Lock()
	s.live[ss] = struct{}{}
	s.mu.Unlock()
	cc.AddOnClose(func() { s.detach(ss) })
	return ss
}

// detach releases everything a closed connection held.
func (s *Server) detach(ss *session) {
	s.mu.Lock()
	delete(s.live, ss)
	s.mu.Unlock()
	s.unauth.remove(ss)
	s.expireTransfers(ss, time.Time{}, true)
	s.obs.dropConn(ss.conn)
	ss.mu.Lock()
	ss.closed = true
	dev, leave := ss.device, ss.leave
	ss.leave = nil
	ss.mu.Unlock()
	if !dev.IsZero() {
		s.devs.remove(dev, ss)
	}
	if leave != nil {
		leave()
	}
}

// bind records that ss is authenticated as device id.
// A device revoked while its handshake was under way was authorized
// before the revocation and bound after it; so a session bound within
// revokeWindow of a Revoke is authorized again.
func (s *Server) bind(ss *session, id identity.ID) {
	if s.recentlyRevoked(id) {
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RequestTimeout)
		err := s.authorize(ctx, Peer{Device: id, Method: "revoked", Scheme: ss.scheme, Addr: ss.conn.RemoteAddr()})
		cancel()
		if err != nil {
			s.log.Debug("transport: revoked device refused", "device", id, "err", err)
			ss.conn.Close()
			return
		}
	}
	// Under ss.mu, so that detach either sees the device or is seen to
	// have closed the session.
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closed {
		return
	}
	old := ss.device
	ss.device = id
	ss.key = "" // from now on the device's
	if !old.IsZero() && old != id {
		s.devs.remove(old, ss)
	}
	s.devs.add(id, ss)
}

// recentlyRevoked reports whether Revoke named id within revokeWindow.
func (s *Server) recentlyRevoked(id identity.ID) bool {
	s.revokedMu.Lock()
	defer s.revokedMu.Unlock()
	at, ok := s.revoked[id]
	return ok && time.Since(at) < s.revokeWindow()
}

// revokeWindow is how long a handshake authorized before a Revoke may
// still be completing.
func (s *Server) revokeWindow() time.Duration { return s.cfg.HandshakeTimeout + 2*time.Second }

// authorize asks ServerConfig.Authorize about a device.
func (s *Server) authorize(ctx context.Context, p Peer) error {
	if s.cfg.Authorize == nil {
		return nil
	}
	return s.cfg.Authorize(ctx, p)
}

// Revoke closes every session device id has, on every transport, at
// once, and returns how many it closed. Pair it with an Authorize hook
// that refuses the device, or it may come back.
func (s *Server) Revoke(id identity.ID) int {
	s.revokedMu.Lock()
	if s.revoked == nil {
		s.revoked = make(map[identity.ID]time.Time)
	}
	s.revoked[id] = time.Now()
	s.revokedMu.Unlock()
	ss := s.devs.sessions(id)
	for _, x := range ss {
		s.devs.remove(id, x)
		x.conn.Close()
	}
	return len(ss)
}

// sweep forgets, once a second, the unauthenticated UDP peers that went
// quiet and the block-wise uploads that stalled.
func (s *Server) sweep() {
	defer s.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			for _, ss := range s.unauth.expired(now) {
				ss.conn.Close()
			}
			if now.Unix()%10 == 0 {
				s.limiter.sweep(now)
				s.notices.sweep(now)
			}
			s.revokedMu.Lock()
			for id, at := range s.revoked {
				if now.Sub(at) >= s.revokeWindow() {
					delete(s.revoked, id)
				}
			}
			s.revokedMu.Unlock()
			s.mu.RLock()
			live := make([]*session, 0, len(s.live))
			for ss := range s.live {
				live = append(live, ss)
			}
			s.mu.RUnlock()
			for _, ss := range live {
				s.expireTransfers(ss, now, false)
			}
		}
	}
}

// tlsSession authenticates a new TLS connection, whose handshake the
// listener has completed, if the device presented its certificate.
func (s *Server) tlsSession(cc *tcpclient.Conn, ss *session) {
	if c, ok := cc.NetConn().(*tcpConn); ok && !c.device.IsZero() {
		s.bind(ss, c.device)
	}
}

// udpReadBuffer is the socket receive buffer a UDP listener asks for (the
// kernel caps it at net.core.rmem_max): the default of about 200 KiB
// overflows when hundreds of devices send at once.
const udpReadBuffer = 4 << 20

func listenUDP(host string) (*coapnet.UDPConn, error) {
	addr, err := net.ResolveUDPAddr("udp", host)
	if err != nil {
		return nil, err
	}
	c, err := net.ListenUDP("udp", addr)
	if err != nil {
		return nil, err
	}
	_ = c.SetReadBuffer(udpReadBuffer) // best effort: the kernel may cap it
	return coapnet.NewUDPConn("udp", c), nil
}

// serveTCP serves a TCP or TLS listener, which has admitted each
// connection already (so it is not counted again); authenticate binds the
// device its handshake proved.
func (s *Server) serveTCP(l tcpserver.Listener, scheme string, authenticate func(*tcpclient.Conn, *session), opts ...tcpserver.Option) {
	opts = append(opts,
		options.WithRequestMonitor(s.tcpFilter),
		tcpIdleTimeout(s.cfg.IdleTimeout),
		options.WithOnNewConn(func(cc *tcpclient.Conn) { authenticate(cc, s.attach(cc, scheme)) }),
		// No queue between a connection's reader and its handler: go-coap
		// reads the next message only once the handler has taken the last
		// one, which is what the in-flight budget of tcpConn counts on.
		options.WithReceivedMessageQueueSize(0))
	srv := tcp.NewServer(opts...)
	s.serve(func() error { return srv.Serve(l) }, func() { srv.Stop() })
}

// serve runs fn until stop is called by Close; s.mu is held.
func (s *Server) serve(fn func() error, stop func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := fn(); err != nil {
			s.log.Warn("transport: listener stopped", "err", err)
		}
	}()
	s.stops = append(s.stops, stop)
}

// Close stops every listener, closes every connection and waits for the
// server's goroutines. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	stops := s.stops
	s.stops = nil
	close(s.stop)
	s.cancel()
	s.mu.Unlock()
	for _, stop := range stops {
		stop()
	}
	s.wg.Wait()
	close(s.tick)
	return nil
}

func (s *Server) serveCOAP(w mux.ResponseWriter, r *mux.Message) {
	p := preOf(r.Context())
	var rep reply
	switch {
	case p != nil && p.reply != nil:
		rep = errorReply(p.reply)
	case p != nil && p.code != 0:
		rep.code = p.code
	default:
		rep = s.dispatch(w.Conn(), r)
		if seq, ok := s.observe(w.Conn(), r, rep.code); ok {
			rep.opts = append(rep.opts, observeOption(seq))
		}
	}
	if p != nil {
		if p.release != nil {
			p.release()
		}
		rep.opts = append(rep.opts, p.opts...)
	}
	if err := rep.write(w); err != nil {
		s.log.Debug("transport: writing response", "err", err)
	}
}

// A reply is a response to send: a code, a body in a content-format, and
// options. A diagnostic (RFC 7252 section 5.5.2) is UTF-8 text without a
// content-format.
type reply struct {
	code   Code
	format Format
	body   []byte
	diag   bool // body is a diagnostic: no content-format
	opts   []message.Option
}

func (rep reply) write(w mux.ResponseWriter) error {
	if rep.body == nil || rep.diag {
		if err := w.SetResponse(codes.Code(rep.code), 0, nil, rep.opts...); err != nil {
			return err
		}
		if rep.body != nil {
			w.Message().SetBody(bytes.NewReader(rep.body))
		}
		return nil
	}
	return w.SetResponse(codes.Code(rep.code), message.MediaType(rep.format), bytes.NewReader(rep.body), rep.opts...)
}

// dispatch answers one request: a code, the body's format and the body.
func (s *Server) dispatch(conn mux.Conn, r *mux.Message) reply {
	method := Method(r.Code())
	path, err := r.Path()
	if err != nil {
		return errorReply(Errorf(BadOption, "bad path"))
	}
	if path == "" {
		path = "/"
	}
	if path[0] != '/' {
		path = "/" + path
	}
	ss := sessionOf(conn)
	dev := ss.get()
	if path == wellKnownCore {
		if method != GET {
			return errorReply(Errorf(MethodNotAllowed, "GET only"))
		}
		s.mu.RLock()
		b := s.linkBody
		s.mu.RUnlock()
		return reply{code: Content, format: LinkFormat, body: b}
	}
	s.mu.RLock()
	rt := s.routes[path]
	s.mu.RUnlock()
	if rt == nil {
		return errorReply(Errorf(NotFound, "no resource %s", path))
	}
	if !rt.allows(method) {
		return errorReply(Errorf(MethodNotAllowed, "%s not allowed", method))
	}
	if !rt.Public && dev.IsZero() {
		return errorReply(Errorf(Unauthorized, "authenticate first"))
	}
	body, berr := readBody(r, rt.MaxBody)
	if berr != nil {
		return errorReply(berr)
	}
	var format Format
	if len(body) > 0 {
		cf, err := r.ContentFormat()
		if err != nil {
			return errorReply(Errorf(UnsupportedFormat, "content-format required"))
		}
		format = Format(cf)
		if !rt.accepts(format) {
			return errorReply(Errorf(UnsupportedFormat, "content-format %d not accepted", format))
		}
	}
	var queries []string
	if r.HasOption(message.URIQuery) {
		queries, _ = r.Queries()
	}
	call := &handlerCall{req: Request{Method: method, Path: path, Query: queries, Format: format, Body: body, Device: dev, dec: rt.dec}}
	call.ctx.init(r.Context(), time.Now(), s.cfg.RequestTimeout, dev)
	defer call.ctx.end()
	h := rt.Handler
	if path == AuthPath && s.cfg.Tokens != nil {
		h = s.authHandler(ss)
	}
	out, herr := h(&call.ctx, &call.req)
	if herr != nil {
		var e *Error
		if errors.As(herr, &e) {
			return errorReply(e)
		}
		var c codeError
		if errors.As(herr, &c) {
			return errorReply(&Error{Code: Code(c)})
		}
		s.log.Error("transport: handler failed", "path", path, "device", dev, "err", herr)
		return errorReply(Errorf(InternalServerError, "internal error"))
	}
	code := defaultCode(method)
	var opts []message.Option
	if resp, ok := out.(*Response); ok {
		if resp.Code.IsSuccess() {
			code = resp.Code
		}
		out = resp.Body
		if n := len(resp.ETag); n > 0 && n <= 8 {
			opts = []message.Option{{ID: message.ETag, Value: resp.ETag}}
			if method == GET && hasETag(r, resp.ETag) {
				return reply{code: Valid, opts: opts}
			}
		}
	}
	if out == nil {
		return reply{code: code, opts: opts}
	}
	b, err := codec.Marshal(out)
	if err != nil {
		s.log.Error("transport: encoding response", "path", path, "err", err)
		return errorReply(Errorf(InternalServerError, "internal error"))
	}
	return reply{code: code, format: CBOR, body: b, opts: opts}
}

// hasETag reports whether a request names etag in one of its ETag options.
func hasETag(r *mux.Message, etag []byte) bool {
	for _, o := range r.Options() {
		if o.ID == message.ETag && bytes.Equal(o.Value, etag) {
			return true
		}
	}
	return false
}

// authHandler verifies a device token and binds its device to the session.
func (s *Server) authHandler(ss *session) Handler {
	return func(ctx context.Context, r *Request) (any, error) {
		if ss.scheme == "coap" && !s.cfg.TokensOverUDP {
			return nil, Errorf(Unauthorized, "tokens are not accepted over coap://: use coaps://, coap+tcp:// or coaps+tcp://")
		}
		var tok string
		if err := r.Decode(&tok); err != nil {
			return nil, err
		}
		c, err := s.cfg.Tokens.Verify(ctx, tok)
		if err != nil {
			s.log.Debug("transport: token refused", "err", err)
			return nil, Errorf(Unauthorized, "token refused")
		}
		if err := s.authorize(ctx, Peer{Device: c.Device, Method: "token", Scheme: ss.scheme, Addr: ss.conn.RemoteAddr()}); err != nil {
			s.log.Debug("transport: device refused", "device", c.Device, "err", err)
			return nil, Errorf(Unauthorized, "device refused")
		}
		if ss.scheme == "coap" {
			// An authenticated UDP peer leaves the small unauthenticated
			// quota for a connection slot.
			ss.mu.Lock()
			has := ss.leave != nil
			ss.mu.Unlock()
			if !has {
				leave, err := s.adm.enter(ss.conn.RemoteAddr())
				if err != nil {
					return nil, Errorf(ServiceUnavailable, "server full")
				}
				ss.mu.Lock()
				closed := ss.closed
				if !closed {
					ss.leave = leave
				}
				ss.mu.Unlock()
				if closed {
					leave()
					return nil, Errorf(Unauthorized, "connection closed")
				}
				s.unauth.remove(ss)
			}
		}
		s.bind(ss, c.Device)
		return &Response{Code: Changed}, nil
	}
}

func defaultCode(m Method) Code {
	switch m {
	case GET:
		return Content
	case DELETE:
		return Deleted
	}
	return Changed
}

// errorReply answers with e: its code, its diagnostic as UTF-8 text
// without a content-format (RFC 7252 section 5.5.2), and Max-Age when it
// says when to retry.
func errorReply(e *Error) reply {
	rep := reply{code: e.Code}
	if e.Code.IsSuccess() || e.Code>>5 < 4 {
		rep.code = InternalServerError // a handler's mistake: never a success
	}
	if e.Diagnostic != "" {
		rep.body, rep.diag = []byte(strings.ToValidUTF8(e.Diagnostic, "\uFFFD")), true
	}
	if e.RetryAfter > 0 {
		secs := (e.RetryAfter + time.Second - 1) / time.Second
		rep.opts = append(rep.opts, uintOption(message.MaxAge, uint32(min(secs, math.MaxUint32))))
	}
	return rep
}

func readBody(r *mux.Message, max int) ([]byte, *Error) {
	body := r.Body()
	if body == nil {
		return nil, nil
	}
	size, err := r.BodySize()
	if err != nil {
		return nil, Errorf(BadRequest, "unreadable body")
	}
	if size > int64(max) {
		return nil, Errorf(RequestEntityTooLarge, "body of %d bytes, limit %d", size, max)
	}
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return nil, Errorf(BadRequest, "unreadable body")
	}
	// The size is known and within max: one allocation of exactly it.
	b := make([]byte, size)
	if _, err := io.ReadFull(body, b); err != nil {
		return nil, Errorf(BadRequest, "unreadable body")
	}
	return b, nil
}
