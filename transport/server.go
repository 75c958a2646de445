package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"sort"
	"sync"
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
	"github.com/plgd-dev/go-coap/v3/udp"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
)

// Defaults for ServerConfig's zero fields.
const (
	// DefaultIdleTimeout is how long a connection may stay silent before
	// the server drops it: minutes, for sleepy devices (go-coap's own
	// default is 16 s).
	DefaultIdleTimeout = 5 * time.Minute
	// DefaultMaxMessageSize caps one CoAP message on the wire.
	DefaultMaxMessageSize = 64 << 10
	// DefaultRequestTimeout bounds one handler call.
	DefaultRequestTimeout = 30 * time.Second
)

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
	// RateLimit bounds requests per peer (per device once authenticated,
	// per address before); excess requests get 4.29. The zero value means
	// no limit.
	RateLimit RateLimit
	// PSK returns a device's pre-shared key for DTLS-PSK
	// (TLS_PSK_WITH_AES_128_CCM_8), the PSK identity being the device ID;
	// nil disables PSK. See DerivePSK for per-device keys from a fleet
	// secret.
	PSK func(ctx context.Context, id identity.ID) ([]byte, error)
	// Logger receives what the server and go-coap would otherwise print;
	// nil discards it.
	Logger *slog.Logger
}

// A Server serves resources over any of the four CoAP transports, one
// handler API for all. It is safe for concurrent use.
type Server struct {
	cfg     ServerConfig
	log     *slog.Logger
	limiter *limiter

	mu       sync.RWMutex
	routes   map[string]*route
	closed   bool
	stops    []func()
	wg       sync.WaitGroup
	tick     chan struct{} // closed by Close: ends go-coap's periodic runners
	linkBody []byte
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
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, routes: make(map[string]*route), limiter: newLimiter(cfg.RateLimit), tick: make(chan struct{})}
	if cfg.Tokens != nil {
		dec := mustDecoder(codec.Limits{MaxBody: identity.DefaultMaxTokenSize + 16})
		s.routes[AuthPath] = &route{Resource: Resource{
			Path: AuthPath, Methods: []Method{POST}, Public: true, Formats: []Format{CBOR},
			MaxBody: dec.Limits().MaxBody, Attributes: []string{`rt="sensible.auth"`},
		}, dec: dec}
	}
	s.relink()
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
// transport: coap:// (UDP), coaps:// (DTLS 1.2) or coap+tcp:// (TCP).
// Port 0 picks a free port.
// It returns the URL actually listened on. Serving goes on until Close.
func (s *Server) Listen(address string) (string, error) {
	u, err := url.Parse(address)
	if err != nil {
		return "", fmt.Errorf("transport: listen address: %w", err)
	}
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
		l, err := coapnet.NewListenUDP("udp", u.Host)
		if err != nil {
			return "", err
		}
		srv := udp.NewServer(options.WithMux(m), errs, maxMsg, ticker,
			options.WithInactivityMonitor(s.cfg.IdleTimeout, func(cc *udpclient.Conn) { cc.Close() }),
			options.WithOnNewConn(func(cc *udpclient.Conn) { cc.SetContextValue(sessionKey{}, &session{}) }),
		)
		s.serve(func() error { return srv.Serve(l) }, func() { srv.Stop() })
		return "coap://" + l.LocalAddr().String(), nil
	case "coaps":
		if s.cfg.PSK == nil {
			return "", errors.New("transport: coaps:// needs ServerConfig.PSK")
		}
		l, err := coapnet.NewDTLSListener("udp", u.Host, coapnet.NewDTLSServerOptions(s.dtlsOptions()...))
		if err != nil {
			return "", err
		}
		srv := dtls.NewServer(options.WithMux(m), errs, maxMsg, ticker,
			options.WithInactivityMonitor(s.cfg.IdleTimeout, func(cc *udpclient.Conn) { cc.Close() }),
			options.WithOnNewConn(func(cc *udpclient.Conn) { cc.SetContextValue(sessionKey{}, s.dtlsSession(cc)) }),
		)
		s.serve(func() error { return srv.Serve(l) }, func() { srv.Stop() })
		return "coaps://" + l.Addr().String(), nil
	case "coap+tcp":
		l, err := coapnet.NewTCPListener("tcp", u.Host)
		if err != nil {
			return "", err
		}
		srv := tcp.NewServer(options.WithMux(m), errs, maxMsg, ticker,
			options.WithInactivityMonitor(s.cfg.IdleTimeout, func(cc *tcpclient.Conn) { cc.Close() }),
			options.WithOnNewConn(func(cc *tcpclient.Conn) { cc.SetContextValue(sessionKey{}, &session{}) }),
		)
		s.serve(func() error { return srv.Serve(l) }, func() { srv.Stop() })
		return "coap+tcp://" + l.Addr().String(), nil
	}
	return "", fmt.Errorf("transport: unsupported scheme %q", u.Scheme)
}

// dtlsOptions configures DTLS-PSK with the suite RFC 7252 makes mandatory
// and connection IDs (RFC 9146), so a device whose address or port changes
// keeps its session.
func (s *Server) dtlsOptions() []piondtls.ServerOption {
	return []piondtls.ServerOption{
		piondtls.WithCipherSuites(piondtls.TLS_PSK_WITH_AES_128_CCM_8),
		piondtls.WithPSK(func(hint []byte) ([]byte, error) {
			id, err := identity.ParseID(string(hint))
			if err != nil {
				return nil, err
			}
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
			defer cancel()
			return s.cfg.PSK(ctx, id)
		}),
		piondtls.WithConnectionIDGenerator(piondtls.RandomCIDGenerator(8)),
		piondtls.WithLoggerFactory(silentLogs{}),
	}
}

// dtlsSession returns the session of a new DTLS connection, whose device
// is the PSK identity the handshake proved.
func (s *Server) dtlsSession(cc *udpclient.Conn) *session {
	ss := &session{}
	if dc, ok := cc.NetConn().(*piondtls.Conn); ok {
		if st, ok := dc.ConnectionState(); ok {
			if id, err := identity.ParseID(string(st.IdentityHint)); err == nil {
				ss.device = id
			}
		}
	}
	return ss
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
	s.mu.Unlock()
	for _, stop := range stops {
		stop()
	}
	s.wg.Wait()
	close(s.tick)
	return nil
}

// session is the per-connection state: who authenticated on it.
type session struct {
	mu     sync.Mutex
	device identity.ID
}

type sessionKey struct{}

func sessionOf(c mux.Conn) *session {
	if s, ok := c.Context().Value(sessionKey{}).(*session); ok {
		return s
	}
	return &session{}
}

func (ss *session) get() identity.ID {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.device
}

func (ss *session) set(id identity.ID) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.device = id
}

func (s *Server) serveCOAP(w mux.ResponseWriter, r *mux.Message) {
	code, format, body := s.dispatch(w.Conn(), r)
	var rd io.ReadSeeker
	if body != nil {
		rd = bytes.NewReader(body)
	}
	if err := w.SetResponse(codes.Code(code), message.MediaType(format), rd); err != nil {
		s.log.Debug("transport: writing response", "err", err)
	}
}

// dispatch answers one request: a code, the body's format and the body.
func (s *Server) dispatch(conn mux.Conn, r *mux.Message) (Code, Format, []byte) {
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
	key := dev.String()
	if dev.IsZero() {
		key = conn.RemoteAddr().String()
	}
	if !s.limiter.allow(key, time.Now()) {
		return errorReply(Errorf(TooManyRequests, "rate limit"))
	}
	if path == wellKnownCore {
		if method != GET {
			return errorReply(Errorf(MethodNotAllowed, "GET only"))
		}
		s.mu.RLock()
		b := s.linkBody
		s.mu.RUnlock()
		return Content, LinkFormat, b
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
	queries, _ := r.Queries()
	req := &Request{Method: method, Path: path, Query: queries, Format: format, Body: body, Device: dev, dec: rt.dec}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
	defer cancel()
	if !dev.IsZero() {
		ctx = context.WithValue(ctx, deviceKey{}, dev)
	}
	h := rt.Handler
	if path == AuthPath && s.cfg.Tokens != nil {
		h = s.authHandler(ss)
	}
	out, herr := h(ctx, req)
	if herr != nil {
		var e *Error
		if errors.As(herr, &e) {
			return errorReply(e)
		}
		s.log.Error("transport: handler failed", "path", path, "device", dev, "err", herr)
		return errorReply(Errorf(InternalServerError, "internal error"))
	}
	code := defaultCode(method)
	if resp, ok := out.(*Response); ok {
		if resp.Code.IsSuccess() {
			code = resp.Code
		}
		out = resp.Body
	}
	if out == nil {
		return code, 0, nil
	}
	b, err := codec.Marshal(out)
	if err != nil {
		s.log.Error("transport: encoding response", "path", path, "err", err)
		return errorReply(Errorf(InternalServerError, "internal error"))
	}
	return code, CBOR, b
}

// authHandler verifies a device token and binds its device to the session.
func (s *Server) authHandler(ss *session) Handler {
	return func(ctx context.Context, r *Request) (any, error) {
		var tok string
		if err := r.Decode(&tok); err != nil {
			return nil, err
		}
		c, err := s.cfg.Tokens.Verify(ctx, tok)
		if err != nil {
			s.log.Info("transport: token refused", "err", err)
			return nil, Errorf(Unauthorized, "token refused")
		}
		ss.set(c.Device)
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

func errorReply(e *Error) (Code, Format, []byte) {
	if e.Diagnostic == "" {
		return e.Code, 0, nil
	}
	b, _ := codec.Marshal(e.Diagnostic)
	return e.Code, CBOR, b
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
	b, err := io.ReadAll(io.LimitReader(body, int64(max)+1))
	if err != nil {
		return nil, Errorf(BadRequest, "unreadable body")
	}
	if len(b) > max {
		return nil, Errorf(RequestEntityTooLarge, "body over %d bytes", max)
	}
	return b, nil
}
