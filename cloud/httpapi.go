package cloud

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// Defaults of HTTPConfig.
const (
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultHTTPReadTimeout   = 30 * time.Second
	DefaultHTTPWriteTimeout  = 30 * time.Second
	DefaultHTTPIdleTimeout   = 2 * time.Minute
	DefaultMaxHeaderBytes    = 16 << 10
	DefaultMaxBody           = 64 << 10
	DefaultAuthFailureRate   = 1.0
	DefaultAuthFailureBurst  = 10
)

// maxManifestBody bounds the body that adds a manifest: a signed manifest
// of up to policy.MaxManifestSize bytes, in base64, in a JSON object.
const maxManifestBody = policy.MaxManifestSize/3*4 + 4<<10

// Pages of the operator API's lists.
const (
	defaultPage = 100
	maxPage     = store.MaxList - 1 // one more is asked for, to know whether there is a next page
)

// HTTPConfig bounds the operator API's HTTP server, which faces the
// internet. Every zero field means its default.
type HTTPConfig struct {
	// ReadHeaderTimeout bounds reading a request's headers, so that a
	// client that dribbles them (slowloris) is cut off; zero means
	// DefaultReadHeaderTimeout.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request; zero means
	// DefaultHTTPReadTimeout.
	ReadTimeout time.Duration
	// WriteTimeout bounds a request from the end of its headers to the
	// end of its response; a handler's context ends with it. Zero means
	// DefaultHTTPWriteTimeout.
	WriteTimeout time.Duration
	// IdleTimeout is how long a keep-alive connection may wait for its
	// next request; zero means DefaultHTTPIdleTimeout.
	IdleTimeout time.Duration
	// MaxHeaderBytes caps a request's headers; zero means
	// DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// MaxBody caps a request body (413 beyond it), except a signed
	// manifest's, which may be as large as policy.MaxManifestSize; zero
	// means DefaultMaxBody.
	MaxBody int64
	// AuthFailureRate is how many failed authentications a second one
	// client address (IPv4, or IPv6 /64) may make on average before its
	// requests are refused with 429; zero means DefaultAuthFailureRate,
	// negative no limit.
	AuthFailureRate float64
	// AuthFailureBurst is how many failures a client may make at once;
	// zero means DefaultAuthFailureBurst.
	AuthFailureBurst int
}

// withDefaults returns c with its zero fields set to their defaults.
func (c HTTPConfig) withDefaults() HTTPConfig {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	def(&c.ReadTimeout, DefaultHTTPReadTimeout)
	def(&c.WriteTimeout, DefaultHTTPWriteTimeout)
	def(&c.IdleTimeout, DefaultHTTPIdleTimeout)
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.MaxBody <= 0 {
		c.MaxBody = DefaultMaxBody
	}
	if c.AuthFailureRate == 0 {
		c.AuthFailureRate = DefaultAuthFailureRate
	}
	if c.AuthFailureBurst <= 0 {
		c.AuthFailureBurst = DefaultAuthFailureBurst
	}
	return c
}

// httpAPI is the operator API: one http.Server on every http:// and
// https:// listener of the node.
type httpAPI struct {
	n       *Node
	cfg     HTTPConfig
	auth    *operatorAuth
	app     *appAuth // app tokens (apptoken.go)
	limiter *authLimiter
	mux     *http.ServeMux
	srv     *http.Server
	ctx     context.Context // the handlers' base context; close cancels it
	cancel  context.CancelFunc

	mu       sync.Mutex
	closed   bool
	serving  sync.WaitGroup // one per listener
	conns    sync.WaitGroup // one per connection, from StateNew to StateClosed or StateHijacked
	handlers sync.WaitGroup // one per request in progress
}

func newHTTPAPI(n *Node) (*httpAPI, error) {
	aud, iss := n.cfg.OperatorAudience, n.cfg.OperatorIssuer
	if aud == "" {
		aud = DefaultOperatorAudience
	}
	if iss == "" {
		iss = DefaultOperatorIssuer
	}
	auth, err := newOperatorAuth(n.cfg.OperatorKeys, aud, iss, n.now)
	if err != nil {
		return nil, err
	}
	cfg := n.cfg.HTTP.withDefaults()
	appAud := n.cfg.AppAudience
	if appAud == "" {
		appAud = DefaultAppAudience
	}
	a := &httpAPI{
		n:       n,
		cfg:     cfg,
		auth:    auth,
		app:     newAppAuth(n.store, n.store.ReplayCache(store.ReplayConfig{Now: n.now}), appAud, n.now),
		limiter: newAuthLimiter(cfg.AuthFailureRate, cfg.AuthFailureBurst),
		mux:     http.NewServeMux(),
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	for _, rt := range a.routes() {
		a.mux.Handle(rt.pattern, a.route(rt))
	}
	a.srv = &http.Server{
		Handler:           http.HandlerFunc(a.serveHTTP),
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return a.ctx },
		ConnState:         a.connState,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
		TLSConfig: &tls.Config{
			MinVersion: tls.VersionTLS12,
			// Naming h2 here makes Serve (plain http://) set up HTTP/2
			// too, which ServeTLS, if it came later, would otherwise
			// offer without being able to serve it.
			NextProtos: []string{"h2", "http/1.1"},
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				return n.cert, nil
			},
		},
	}
	return a, nil
}

// listen serves the API on an http:// or https:// URL.
func (a *httpAPI) listen(u *url.URL) (string, error) {
	if u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%w: %s: want %s://host:port", transport.ErrBadURL, u.Redacted(), u.Scheme)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return "", errors.New("cloud: node closed")
	}
	l, err := net.Listen("tcp", u.Host)
	if errors.Is(err, syscall.EADDRINUSE) {
		return "", fmt.Errorf("%w: %w", transport.ErrAddressInUse, err)
	}
	if err != nil {
		return "", err
	}
	a.serving.Add(1)
	go func() {
		defer a.serving.Done()
		var err error
		if u.Scheme == "https" {
			err = a.srv.ServeTLS(l, "", "")
		} else {
			err = a.srv.Serve(l)
		}
		if !errors.Is(err, http.ErrServerClosed) {
			a.n.log.Error("operator API listener failed", "address", l.Addr().String(), "err", err)
		}
	}()
	return u.Scheme + "://" + l.Addr().String(), nil
}

// close stops the listeners, cancels and closes every connection, and
// waits for the goroutines of the listeners, of the connections and of
// the handlers in progress.
func (a *httpAPI) close() {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.closed = true
	a.mu.Unlock()
	a.cancel()
	a.srv.Close()
	a.serving.Wait() // no connection is accepted after this
	a.conns.Wait()
	a.handlers.Wait()
}

// connState counts connections, so that close can wait for their
// goroutines: net/http reports StateNew once for each (HTTP/2 too), just
// before it starts the connection's goroutine, and then StateHijacked or,
// as that goroutine ends, StateClosed.
func (a *httpAPI) connState(_ net.Conn, s http.ConnState) {
	switch s {
	case http.StateNew:
		a.conns.Add(1)
	case http.StateHijacked, http.StateClosed:
		a.conns.Done()
	}
}

// enter counts a request in progress, unless the API is closed.
func (a *httpAPI) enter() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return false
	}
	a.handlers.Add(1)
	return true
}

// requestInfo is what the request log learns from inside a route.
type requestInfo struct {
	operator string
	subject  string // the caller of an app route
}

type requestInfoKey struct{}

// statusWriter records the status of a response.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// serveHTTP is the server's handler: it bounds the request's time, routes
// it, and logs and counts it.
func (a *httpAPI) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if !a.enter() {
		writeError(w, &apiError{http.StatusServiceUnavailable, "unavailable", "the node is shutting down"})
		return
	}
	defer a.handlers.Done()
	start := time.Now()
	info := &requestInfo{}
	ctx, cancel := context.WithTimeout(context.WithValue(r.Context(), requestInfoKey{}, info), a.cfg.WriteTimeout)
	defer cancel()
	r = r.WithContext(ctx)
	sw := &statusWriter{ResponseWriter: w}
	h, pattern := a.mux.Handler(r)
	if pattern == "" {
		pattern = "unmatched"
		noRoute(sw, r, h)
	} else {
		a.mux.ServeHTTP(sw, r)
	}
	if sw.status == 0 {
		sw.status = http.StatusOK
	}
	d := time.Since(start)
	a.n.metrics.request(pattern, sw.status, d)
	attrs := []slog.Attr{slog.String("method", r.Method), slog.String("route", pattern), slog.Int("status", sw.status),
		slog.Duration("duration", d), slog.String("operator", info.operator)}
	if info.subject != "" {
		attrs = append(attrs, slog.String("subject", info.subject))
	}
	a.n.log.LogAttrs(ctx, slog.LevelInfo, "operator request", attrs...)
}

// noRoute answers a request that no route matches in JSON: 405 with
// Allow when the path has routes for other methods, else 404. h is the
// ServeMux's own answer, which decides which.
func noRoute(w http.ResponseWriter, r *http.Request, h http.Handler) {
	probe := &headerProbe{header: http.Header{}}
	h.ServeHTTP(probe, r)
	if probe.status == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", probe.header.Get("Allow"))
		writeError(w, &apiError{http.StatusMethodNotAllowed, "method_not_allowed", fmt.Sprintf("%s is not allowed here; allowed: %s", r.Method, probe.header.Get("Allow"))})
		return
	}
	writeError(w, &apiError{http.StatusNotFound, "not_found", "no such route"})
}

// headerProbe is a ResponseWriter that keeps the status and headers and
// drops the body.
type headerProbe struct {
	header http.Header
	status int
}

func (p *headerProbe) Header() http.Header         { return p.header }
func (p *headerProbe) Write(b []byte) (int, error) { return len(b), nil }
func (p *headerProbe) WriteHeader(code int)        { p.status = code }

// A route is one method and path of the API, the scope it needs, and its
// handler.
type route struct {
	pattern string
	scope   string // "" for none
	app     bool   // authenticated by an app token, not an operator token (appapi.go)
	maxBody int64  // 0 means HTTPConfig.MaxBody
	handle  func(w http.ResponseWriter, r *http.Request) error
}

// routes lists the API (docs/operator-api.md, docs/app-api.md).
func (a *httpAPI) routes() []route {
	metricsScope := ScopeMetricsRead
	if a.n.cfg.PublicMetrics {
		metricsScope = ""
	}
	metricsHandler := a.n.metrics.handler()
	return []route{
		{pattern: "GET /v1/devices", scope: ScopeDevicesRead, handle: a.listDevices},
		{pattern: "POST /v1/devices", scope: ScopeDevicesWrite, handle: a.importDevice},
		{pattern: "GET /v1/devices/{id}", scope: ScopeDevicesRead, handle: a.getDevice},
		{pattern: "PUT /v1/devices/{id}/standing", scope: ScopeDevicesWrite, handle: a.setStanding},
		{pattern: "POST /v1/devices/{id}/release", scope: ScopeDevicesWrite, handle: a.releaseDevice},
		{pattern: "POST /v1/devices/{id}/claim", scope: ScopeClaimsWrite, handle: a.createClaim},
		{pattern: "GET /v1/devices/{id}/claim", scope: ScopeClaimsRead, handle: a.getClaim},
		{pattern: "DELETE /v1/devices/{id}/claim", scope: ScopeClaimsWrite, handle: a.deleteClaim},
		{pattern: "GET /v1/devices/{id}/state", scope: ScopeStateRead, handle: a.getState},
		{pattern: "PUT /v1/devices/{id}/state/desired", scope: ScopeStateWrite, handle: a.setDesired},
		{pattern: "POST /v1/devices/{id}/commands", scope: ScopeCommandsWrite, handle: a.enqueueCommand},
		{pattern: "GET /v1/devices/{id}/commands", scope: ScopeCommandsRead, handle: a.listCommands},
		{pattern: "GET /v1/devices/{id}/commands/{command}", scope: ScopeCommandsRead, handle: a.getCommand},
		{pattern: "GET /v1/devices/{id}/incidents", scope: ScopeIncidentsRead, handle: a.listIncidents},
		{pattern: "GET /v1/models", scope: ScopeModelsRead, handle: a.listModels},
		{pattern: "POST /v1/models", scope: ScopeModelsWrite, handle: a.addModel},
		{pattern: "GET /v1/models/{model}", scope: ScopeModelsRead, handle: a.getModel},
		{pattern: "GET /v1/models/{model}/manifests", scope: ScopeModelsRead, handle: a.listManifests},
		{pattern: "POST /v1/models/{model}/manifests", scope: ScopeModelsWrite, maxBody: maxManifestBody, handle: a.addManifest},
		{pattern: "GET /v1/manifests/{hash}", scope: ScopeModelsRead, handle: a.getManifest},
		{pattern: "POST /v1/app/claims", app: true, handle: a.appClaim},
		{pattern: "POST /v1/app/devices/{id}/transfer", app: true, handle: a.appTransfer},
		{pattern: "GET /metrics", scope: metricsScope, handle: func(w http.ResponseWriter, r *http.Request) error {
			metricsHandler.ServeHTTP(w, r)
			return nil
		}},
	}
}

// route wraps a route's handler: authentication and scope, the body cap,
// and errors in JSON.
func (a *httpAPI) route(rt route) http.Handler {
	limit := rt.maxBody
	if limit == 0 {
		limit = a.cfg.MaxBody
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case rt.app:
			if !a.authenticateApp(w, r) {
				return
			}
		case rt.scope != "":
			if !a.authenticate(w, r, rt.scope) {
				return
			}
		}
		if r.ContentLength > limit {
			writeError(w, errTooLarge(limit))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		w.Header().Set("Cache-Control", "no-store")
		if err := rt.handle(w, r); err != nil {
			a.fail(w, r, err)
		}
	})
}

// authenticate checks the request's operator token and its scope, and
// answers 401, 403 or 429 when they do not pass.
func (a *httpAPI) authenticate(w http.ResponseWriter, r *http.Request, scope string) bool {
	var claims *OperatorClaims
	if !a.checkToken(w, r, "an operator token", func(token string) (refusal, failure error) {
		claims, refusal = a.auth.verify(token)
		return refusal, nil
	}) {
		return false
	}
	if info, ok := r.Context().Value(requestInfoKey{}).(*requestInfo); ok {
		info.operator = claims.Subject
	}
	if !claims.Allows(scope) {
		a.n.metrics.authFailed("scope")
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="sensible", error="insufficient_scope", scope=%q`, scope))
		writeError(w, &apiError{http.StatusForbidden, "insufficient_scope", "the token lacks the scope " + scope})
		return false
	}
	return true
}

// checkToken is what every kind of token shares: the limit on failed
// authentications per client address, the bearer token, and its
// verification, which returns why the token is refused, or a failure of
// the node (answered 500 or 503, and not counted against the client). It
// answers 401, 429 or the failure itself, and reports whether the token
// passed.
func (a *httpAPI) checkToken(w http.ResponseWriter, r *http.Request, what string, verify func(token string) (refusal, failure error)) bool {
	now := time.Now() // the limiter runs on the real clock, whatever Config.Now says
	client, known := clientOf(r.RemoteAddr)
	if wait, limited := a.limiter.limited(client, now); known && limited {
		a.n.metrics.authFailed("limited")
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter(wait)))
		writeError(w, &apiError{http.StatusTooManyRequests, "too_many_requests", "too many failed authentications from this address; retry later"})
		return false
	}
	token, ok := bearerToken(r)
	if !ok {
		a.n.metrics.authFailed("missing")
		w.Header().Set("WWW-Authenticate", `Bearer realm="sensible"`)
		writeError(w, &apiError{http.StatusUnauthorized, "unauthorized", what + " is required: Authorization: Bearer <token>"})
		return false
	}
	refusal, failure := verify(token)
	if failure != nil {
		a.fail(w, r, failure)
		return false
	}
	if refusal != nil {
		if known {
			a.limiter.failed(client, now)
		}
		a.n.metrics.authFailed("invalid")
		w.Header().Set("WWW-Authenticate", `Bearer realm="sensible", error="invalid_token"`)
		writeError(w, &apiError{http.StatusUnauthorized, "invalid_token", refusal.Error()})
		return false
	}
	return true
}

// bearerToken returns the token of the request's one Authorization
// header, if it is a bearer token.
func bearerToken(r *http.Request) (string, bool) {
	h := r.Header.Values("Authorization")
	if len(h) != 1 {
		return "", false
	}
	scheme, token, ok := strings.Cut(h[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// An apiError is an error answer: its status, a code for programs and a
// message for people.
type apiError struct {
	status int
	code   string
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) *apiError {
	return &apiError{http.StatusBadRequest, "bad_request", fmt.Sprintf(format, args...)}
}

func errTooLarge(limit int64) *apiError {
	return &apiError{http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("the body is over %d bytes", limit)}
}

// fail answers err: an *apiError as it says, a store refusal with its
// status, anything else 500 (logged, not told).
func (a *httpAPI) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	var stale *store.StaleError
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &stale):
		if stale.Current > 0 {
			w.Header().Set("ETag", etag(stale.Current))
		}
		ae = &apiError{http.StatusPreconditionFailed, "stale", err.Error()}
	case errors.Is(err, store.ErrNotFound):
		ae = &apiError{http.StatusNotFound, "not_found", err.Error()}
	case errors.Is(err, store.ErrConflict):
		ae = &apiError{http.StatusConflict, "conflict", err.Error()}
	case errors.Is(err, store.ErrTooLarge):
		ae = &apiError{http.StatusRequestEntityTooLarge, "too_large", err.Error()}
	case errors.Is(err, errSettings):
		ae = &apiError{http.StatusBadRequest, "bad_request", err.Error()}
	case errors.Is(err, store.ErrInvalid):
		ae = &apiError{http.StatusBadRequest, "invalid", err.Error()}
	case r.Context().Err() != nil:
		ae = &apiError{http.StatusServiceUnavailable, "unavailable", "the request was cancelled or ran out of time"}
	default:
		a.n.log.LogAttrs(r.Context(), slog.LevelError, "operator request failed",
			slog.String("method", r.Method), slog.String("route", r.Pattern), slog.Any("err", err))
		ae = &apiError{http.StatusInternalServerError, "internal", "internal error"}
	}
	writeError(w, ae)
}

func writeError(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.status, struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	}{e.msg, e.code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":"internal error","code":"internal"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// decode reads a request body of one JSON value into v, strictly: the
// content type must be application/json, the body valid UTF-8 within its
// cap, and every member a field of v.
func decode(r *http.Request, v any) error {
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return &apiError{http.StatusUnsupportedMediaType, "unsupported_media_type", "the body must be application/json"}
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return &apiError{http.StatusUnsupportedMediaType, "unsupported_media_type", "the body must be UTF-8"}
	}
	body, err := io.ReadAll(r.Body)
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return errTooLarge(tooLarge.Limit)
	}
	if err != nil {
		return badRequest("reading the body: %v", err)
	}
	if !utf8.Valid(body) {
		return badRequest("the body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return badRequest("the body does not decode: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("the body holds more than one JSON value")
	}
	return nil
}

// queryParams returns the request's query, refusing names other than
// allowed and names given twice.
func queryParams(r *http.Request, allowed ...string) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, badRequest("the query does not parse: %v", err)
	}
	for k, v := range q {
		if !slices.Contains(allowed, k) {
			return nil, badRequest("unknown query parameter %q (allowed: %s)", k, strings.Join(allowed, ", "))
		}
		if len(v) > 1 {
			return nil, badRequest("query parameter %q given %d times", k, len(v))
		}
	}
	return q, nil
}

// limitParam reads the limit query parameter: def when absent, at most
// maxLimit.
func limitParam(q url.Values, def, maxLimit int) (int, error) {
	s := q.Get("limit")
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > maxLimit {
		return 0, badRequest("limit must be an integer from 1 to %d", maxLimit)
	}
	return n, nil
}

// deviceParam parses the device ID in the path.
func deviceParam(r *http.Request) (identity.ID, error) {
	id, err := identity.ParseID(r.PathValue("id"))
	if err != nil {
		return identity.ID{}, badRequest("bad device ID: %v", err)
	}
	return id, nil
}

func etag(version uint64) string { return `"` + strconv.FormatUint(version, 10) + `"` }

// ---- JSON shapes ----

// deviceJSON is a device as the API shows it.
type deviceJSON struct {
	ID             string    `json:"id"`
	Model          string    `json:"model"`
	Owner          string    `json:"owner,omitempty"`
	Standing       string    `json:"standing"`
	StandingReason string    `json:"standing_reason"`
	StandingSince  time.Time `json:"standing_since"`
	Created        time.Time `json:"created"`
	PublicKey      string    `json:"public_key"`
	Chain          [][]byte  `json:"chain,omitempty"`
}

func newDeviceJSON(d store.Device) deviceJSON {
	return deviceJSON{
		ID:             d.ID.String(),
		Model:          d.Model,
		Owner:          d.Owner,
		Standing:       d.Standing.String(),
		StandingReason: d.StandingReason,
		StandingSince:  d.StandingSince,
		Created:        d.Created,
		PublicKey:      string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: d.PublicKey})),
		Chain:          d.Chain,
	}
}

type modelJSON struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

type manifestJSON struct {
	Hash    string    `json:"hash"`
	Model   string    `json:"model"`
	Version string    `json:"version,omitempty"`
	Added   time.Time `json:"added"`
	Signed  []byte    `json:"signed,omitempty"`
}

func newManifestJSON(m store.Manifest) manifestJSON {
	return manifestJSON{Hash: protocol.Hash(m.Hash).String(), Model: m.Model, Added: m.Added}
}

// documentJSON is a versioned state document: its settings as a JSON
// object, or, for a document that is not settings JSON can express, its
// CBOR.
type documentJSON struct {
	Version  uint64         `json:"version"`
	Settings map[string]any `json:"settings,omitzero"`
	CBOR     []byte         `json:"cbor,omitempty"`
}

func newDocumentJSON(d store.Document) documentJSON {
	s, raw := settingsJSON(d.Body)
	return documentJSON{Version: d.Version, Settings: s, CBOR: raw}
}

type commandJSON struct {
	ID         string         `json:"id"`
	Device     string         `json:"device"`
	Name       string         `json:"name"`
	Args       map[string]any `json:"args,omitzero"`
	ArgsCBOR   []byte         `json:"args_cbor,omitempty"`
	State      string         `json:"state"`
	Created    time.Time      `json:"created"`
	Expires    time.Time      `json:"expires,omitzero"`
	Delivered  time.Time      `json:"delivered,omitzero"`
	Finished   time.Time      `json:"finished,omitzero"`
	Result     map[string]any `json:"result,omitzero"`
	ResultCBOR []byte         `json:"result_cbor,omitempty"`
}

func newCommandJSON(c store.Command) commandJSON {
	j := commandJSON{
		ID: c.ID.String(), Device: c.Device.String(), Name: c.Name, State: c.State.String(),
		Created: c.Created, Expires: c.Expires, Delivered: c.Delivered, Finished: c.Finished,
	}
	j.Args, j.ArgsCBOR = settingsJSON(c.Args)
	j.Result, j.ResultCBOR = settingsJSON(c.Result)
	return j
}

type incidentJSON struct {
	ID     int64     `json:"id"`
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"`
	Detail string    `json:"detail"`
}

func newIncidentJSON(i store.Incident) incidentJSON {
	return incidentJSON{ID: i.ID, Time: i.Time, Kind: i.Kind, Detail: i.Detail}
}

// jsonList converts a list for an answer; none is an empty list, not
// null.
func jsonList[T, J any](xs []T, conv func(T) J) []J {
	out := make([]J, len(xs))
	for i, x := range xs {
		out[i] = conv(x)
	}
	return out
}

// settingsOf turns settings from a JSON object (decoded with UseNumber)
// into protocol.Settings, which the node encodes as devices read them. A
// number with a fraction or an exponent is a float, any other an
// integer, which must fit in 64 bits; nothing may nest.
func settingsOf(m map[string]any) (protocol.Settings, error) {
	s := make(protocol.Settings, len(m))
	for k, v := range m {
		switch x := v.(type) {
		case bool, string:
			s[k] = x
		case json.Number:
			if strings.ContainsAny(string(x), ".eE") {
				f, err := x.Float64()
				if err != nil {
					return nil, badRequest("setting %q: %v", k, err)
				}
				s[k] = f
			} else {
				i, err := x.Int64()
				if err != nil {
					return nil, badRequest("setting %q: an integer out of the 64-bit range", k)
				}
				s[k] = i
			}
		default:
			return nil, badRequest("setting %q: settings are booleans, numbers and strings, not %s", k, jsonKind(v))
		}
	}
	return s, nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "an array"
	}
	return "an object"
}

// settingsJSON returns a CBOR document as settings for JSON, floats
// always written with a fraction or an exponent so that they read back as
// floats; or, for a document that is not settings or holds a float JSON
// cannot write (NaN, infinities), the document itself. A nil document is
// neither.
func settingsJSON(doc []byte) (map[string]any, []byte) {
	if doc == nil {
		return nil, nil
	}
	var s protocol.Settings
	if err := s.UnmarshalCBOR(doc); err != nil {
		return nil, doc
	}
	out := make(map[string]any, len(s))
	for k, v := range s {
		if f, ok := v.(float64); ok {
			if math.IsNaN(f) || math.IsInf(f, 0) {
				return nil, doc
			}
			t := strconv.FormatFloat(f, 'g', -1, 64)
			if !strings.ContainsAny(t, ".eE") {
				t += ".0"
			}
			v = json.Number(t)
		}
		out[k] = v
	}
	return out, nil
}

// ---- devices ----

func (a *httpAPI) device(ctx context.Context, id identity.ID) (store.Device, error) {
	return storeCall(a.n.metrics, "device", func() (store.Device, error) { return a.n.store.Device(ctx, id) })
}

func (a *httpAPI) getDevice(w http.ResponseWriter, r *http.Request) error {
	id, err := deviceParam(r)
	if err != nil {
		return err
	}
	d, err := a.device(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, newDeviceJSON(d))
	return nil
}

func (a *httpAPI) listDevices(w http.ResponseWriter, r *http.Request) error {
	q, err := queryParams(r, "model", "owner", "cursor", "limit")
	if err != nil {
		return err
	}
	_, byModel := q["model"]
	_, byOwner := q["owner"]
	if byModel == byOwner {
		return badRequest("give exactly one of model and owner (owner= lists the devices nobody owns)")
	}
	limit, err := limitParam(q, defaultPage, maxPage)
	if err != nil {
		return err
	}
	p := store.Page{Limit: limit + 1}
	if c := q.Get("cursor"); c != "" {
		if p.After, err = identity.ParseID(c); err != nil {
			return badRequest("bad cursor: %v", err)
		}
	}
	ctx := r.Context()
	var ds []store.Device
	if byModel {
		ds, err = storeCall(a.n.metrics, "list_devices_by_model", func() ([]store.Device, error) {
			return a.n.store.ListDevicesByModel(ctx, q.Get("model"), p)
		})
	} else {
		ds, err = storeCall(a.n.metrics, "list_devices_by_owner", func() ([]store.Device, error) {
			return a.n.store.ListDevicesByOwner(ctx, q.Get("owner"), p)
		})
	}
	if err != nil {
		return err
	}
	var resp struct {
		Devices    []deviceJSON `json:"devices"`
		NextCursor string       `json:"next_cursor,omitempty"`
	}
	if len(ds) > limit {
		ds = ds[:limit]
		resp.NextCursor = ds[limit-1].ID.String()
	}
	resp.Devices = jsonList(ds, newDeviceJSON)
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (a *httpAPI) importDevice(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		PublicKey string `json:"public_key"`
		Model     string `json:"model"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	block, rest := pem.Decode([]byte(req.PublicKey))
	if block == nil || block.Type != "PUBLIC KEY" || len(bytes.TrimSpace(rest)) != 0 {
		return badRequest("public_key must be one PEM block of type PUBLIC KEY")
	}
	key, err := parsePublicKey(block.Bytes)
	if err != nil {
		return badRequest("public_key: %v", err)
	}
	ctx := r.Context()
	id, err := storeCall(a.n.metrics, "create_device", func() (identity.ID, error) {
		return a.n.ImportDevice(ctx, ImportedDevice{Key: key, Model: req.Model})
	})
	if errors.Is(err, store.ErrNotFound) {
		return &apiError{http.StatusBadRequest, "unknown_model", fmt.Sprintf("no model %q", req.Model)}
	}
	if err != nil {
		return err
	}
	d, err := a.device(ctx, id)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/devices/"+id.String())
	writeJSON(w, http.StatusCreated, newDeviceJSON(d))
	return nil
}

// parsePublicKey parses a DER SubjectPublicKeyInfo of a key a device may
// have: P-256 or Ed25519.
func parsePublicKey(der []byte) (crypto.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, err
	}
	if _, err := identity.TypeOf(k); err != nil {
		return nil, err
	}
	return k, nil
}

func (a *httpAPI) setStanding(w http.ResponseWriter, r *http.Request) error {
	id, err := deviceParam(r)
	if err != nil {
		return err
	}
	var req struct {
		Standing string `json:"standing"`
		Reason   string `json:"reason"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	var s store.Standing
	for _, c := range []store.Standing{store.Active, store.Suspended, store.Decommissioned} {
		if req.Standing == c.String() {
			s = c
		}
	}
	if s == 0 {
		return badRequest("standing must be active, suspended or decommissioned")
	}
	if req.Reason == "" {
		return badRequest("a reason is required")
	}
	ctx := r.Context()
	if err := storeDo(a.n.metrics, "set_standing", func() error { return a.n.SetStanding(ctx, id, s, req.Reason) }); err != nil {
		return err
	}
	d, err := a.device(ctx, id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, newDeviceJSON(d))
	return nil
}

// ---- claims ----

func (a *httpAPI) createClaim(w http.ResponseWriter, r *http.Request) error {
	id, err := deviceParam(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	var code string
	c, err := storeCall(a.n.metrics, "set_claim", func() (c store.Claim, err error) {
		c, code, err = a.n.newClaim(ctx, id)
		return c, err
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, newClaimCodeJSON(c, code))
	return nil
}

func (a *httpAPI) getClaim(w http.ResponseWriter, r *http.Request) error {
	id, err := deviceParam(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	c, err := storeCall(a.n.metrics, "claim", func() (store.Claim, error) { return a.n.store.Claim(ctx, id) })
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct {
		Device  string    `json:"device"`
		Created time.Time `json:"created"`
	}{id.String(), c.Created})
	return nil
}

func (a *httpAPI) deleteClaim(w http.ResponseWriter, r *http.Request) error {
	id, err := deviceParam(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if err := storeDo(a.n.metrics, "delete_claim", func() error { return a.n.store.DeleteClaim(ctx, id) }); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// ---- state ----

func (a *httpAPI) getState(w http.ResponseWriter, r *http.Request) error {
	id, err := deviceParam(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	s, err := storeCall(a.n.metrics, "state", func() (store.State, error) { return a.n.store.State(ctx, id) })
	if err != nil {
		return err
	}
	if s.Desired.Version > 0 {
		w.Header().Set("ETag", etag(s.Desired.Version))
	}
	writeJSON(w, http.StatusOK, struct {
		Desired  documentJSON `json:"desired"`
		Reported documentJSON `json:"reported"`
		Seen     uint64       `json:"seen"`
	}{newDocumentJSON(s.Desired), newDocumentJSON(s.Reported), s.Seen})
	return nil
}

// ifMatch reads the If-Match header: the desired state's version, or 0
// for none (or *), which replaces whatever is there.
func ifMatch(r *http.Request) (uint64, error) {
	h := r.Header.Values("If-Match")
	if len(h) == 0 {
		return 0, nil
	}
	s := strings.TrimSpace(h[0])
	if len(h) > 1 || strings.Contains(s, ",") {
		return 0, badRequest("If-Match must name one version")
	}
	if s == "*" {
		return 0, nil
	}
	if len(s) < 3 || s[0] != '"' || s[len(s)-1] != '"' {
		return 0, badRequest(`If-Match must be a strong ETag such as "3"`)
	}
	v, err := strconv.ParseUint(s[1:len(s)-1], 10, 64)
	if err != nil || v == 0 {
		return 0, badRequest("If-Match must name a version from 1 up, as the ETag of GET state gives it")
	}
	return v, nil
}

func (a *httpAPI) setDesired(w http.ResponseWriter, r *http.Request) error {
	id, err := deviceParam(r)
	if err != nil {
		return err
	}
	expected, err := ifMatch(r)
	if err != nil {
		return err
	}
	var req struct {
		Settings map[string]any `json:"settings"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	if req.Settings == nil {
		return badRequest("settings are required (an object; {} for none)")
	}
	settings, err := settingsOf(req.Settings)
	if err != nil {
		return err
	}
	ctx := r.Context()
	v, err := storeCall(a.n.metrics, "set_desired", func() (uint64, error) {
		return a.n.SetDesired(ctx, id, settings, expected) // the device's observers hear of it
	})
	if err != nil {
		return err
	}
	w.Header().Set("ETag", etag(v))
	writeJSON(w, http.StatusOK, struct {
		Version uint64 `json:"version"`
	}{v})
	return nil
}

// ---- commands ----

func (a *httpAPI) enqueueCommand(w http.ResponseWriter, r *http.Request) error {
	id, err := deviceParam(r)
	if err != nil {
		return err
	}
	var req struct {
		ID         string         `json:"id"`
		Name       string         `json:"name"`
		Args       map[string]any `json:"args"`
		TTLSeconds int64          `json:"ttl_seconds"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	c := store.Command{Device: id, Name: req.Name, Created: a.n.now()}
	if req.ID == "" {
		rand.Read(c.ID[:])
	} else if c.ID, err = parseCommandID(req.ID); err != nil {
		return err
	}
	if req.Name == "" {
		return badRequest("a command needs a name")
	}
	if req.TTLSeconds < 0 || req.TTLSeconds > math.MaxInt64/int64(time.Second) {
		return badRequest("ttl_seconds must be 0 (never expires) or more, within range")
	}
	if req.TTLSeconds > 0 {
		c.Expires = c.Created.Add(time.Duration(req.TTLSeconds) * time.Second)
	}
	var args protocol.Settings
	if req.Args != nil {
		if args, err = settingsOf(req.Args); err != nil {
			return err
		}
	}
	ctx := r.Context()
	if err := storeDo(a.n.metrics, "enqueue_command", func() error { return a.n.enqueue(ctx, c, args) }); err != nil {
		return err
	}
	got, err := storeCall(a.n.metrics, "command", func() (store.Command, error) { return a.n.store.Command(ctx, id, c.ID) })
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/devices/"+id.String()+"/commands/"+c.ID.String())
	writeJSON(w, http.StatusCreated, newCommandJSON(got))
	return nil
}

func parseCommandID(s string) (protocol.CommandID, error) {
	var id protocol.CommandID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, badRequest("a command ID is %d hex digits", 2*len(id))
	}
	copy(id[:], b)
	return id, nil
}

func (a *httpAPI) getCommand(w http.ResponseWriter, r *http.Request) error {
	id, err := deviceParam(r)
	if err != nil {
		return err
	}
	cid, err := parseCommandID(r.PathValue("command"))
	if err != nil {
		return err
	}
	ctx := r.Context()
	c, err := storeCall(a.n.metrics, "command", func() (store.Command, error) { return a.n.store.Command(ctx, id, cid) })
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, newCommandJSON(c))
	return nil
}

func (a *httpAPI) listCommands(w http.ResponseWriter, r *http.Request) error {
	id, err := deviceParam(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if _, err := a.device(ctx, id); err != nil {
		return err
	}
	cs, err := storeCall(a.n.metrics, "deliverable_commands", func() ([]store.Command, error) {
		return a.n.store.DeliverableCommands(ctx, id, a.n.now())
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"commands": jsonList(cs, newCommandJSON)})
	return nil
}

// ---- incidents ----

func (a *httpAPI) listIncidents(w http.ResponseWriter, r *http.Request) error {
	id, err := deviceParam(r)
	if err != nil {
		return err
	}
	q, err := queryParams(r, "since", "limit")
	if err != nil {
		return err
	}
	limit, err := limitParam(q, defaultPage, store.MaxList)
	if err != nil {
		return err
	}
	since := time.Unix(0, 0)
	if s := q.Get("since"); s != "" {
		if since, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return badRequest("since must be an RFC 3339 time: %v", err)
		}
	}
	ctx := r.Context()
	if _, err := a.device(ctx, id); err != nil {
		return err
	}
	is, err := storeCall(a.n.metrics, "list_incidents", func() ([]store.Incident, error) {
		return a.n.store.ListIncidents(ctx, id, since, limit)
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"incidents": jsonList(is, newIncidentJSON)})
	return nil
}

// ---- models and manifests ----

func (a *httpAPI) listModels(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	ms, err := storeCall(a.n.metrics, "list_models", func() ([]store.Model, error) { return a.n.store.ListModels(ctx) })
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"models": jsonList(ms, func(m store.Model) modelJSON { return modelJSON(m) })})
	return nil
}

func (a *httpAPI) addModel(w http.ResponseWriter, r *http.Request) error {
	var req modelJSON
	if err := decode(r, &req); err != nil {
		return err
	}
	if req.ID == "" || req.Name == "" {
		return badRequest("a model needs an id and a name")
	}
	ctx := r.Context()
	if err := storeDo(a.n.metrics, "add_model", func() error { return a.n.store.AddModel(ctx, store.Model(req)) }); err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/models/"+url.PathEscape(req.ID))
	writeJSON(w, http.StatusCreated, req)
	return nil
}

func (a *httpAPI) model(ctx context.Context, id string) (store.Model, error) {
	return storeCall(a.n.metrics, "model", func() (store.Model, error) { return a.n.store.Model(ctx, id) })
}

func (a *httpAPI) getModel(w http.ResponseWriter, r *http.Request) error {
	m, err := a.model(r.Context(), r.PathValue("model"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, modelJSON(m))
	return nil
}

func (a *httpAPI) listManifests(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	model := r.PathValue("model")
	if _, err := a.model(ctx, model); err != nil {
		return err
	}
	ms, err := storeCall(a.n.metrics, "list_manifests", func() ([]store.Manifest, error) {
		return a.n.store.ListManifests(ctx, model)
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"manifests": jsonList(ms, newManifestJSON)})
	return nil
}

// manifestRefusals are the errors of policy.OpenSigned that mean the
// signed manifest is at fault, not the node.
var manifestRefusals = []error{
	consent.ErrMalformed, consent.ErrWrongTag, consent.ErrUnknownKey, consent.ErrAlgorithm,
	consent.ErrBadSignature, policy.ErrNotMaker, policy.ErrInvalid,
}

func (a *httpAPI) addManifest(w http.ResponseWriter, r *http.Request) error {
	model := r.PathValue("model")
	var req struct {
		Signed []byte `json:"signed"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	if len(req.Signed) == 0 {
		return badRequest("signed is required: the signed manifest, base64")
	}
	ctx := r.Context()
	m, err := policy.OpenSigned(ctx, req.Signed, a.n.Keys())
	if err != nil {
		for _, e := range manifestRefusals {
			if errors.Is(err, e) {
				return &apiError{http.StatusBadRequest, "bad_manifest", err.Error()}
			}
		}
		return err
	}
	if m.Product != model {
		return &apiError{http.StatusBadRequest, "bad_manifest", fmt.Sprintf("the manifest is for product %q, not model %q", m.Product, model)}
	}
	hash, err := m.Hash()
	if err != nil {
		return err
	}
	sm := store.Manifest{Hash: hash, Model: model, Signed: req.Signed, Added: a.n.now()}
	if err := storeDo(a.n.metrics, "add_manifest", func() error { return a.n.store.AddManifest(ctx, sm) }); err != nil {
		return err
	}
	j := newManifestJSON(sm)
	j.Version = m.Version
	j.Added = j.Added.UTC()
	w.Header().Set("Location", "/v1/manifests/"+j.Hash)
	writeJSON(w, http.StatusCreated, j)
	return nil
}

func (a *httpAPI) getManifest(w http.ResponseWriter, r *http.Request) error {
	var h protocol.Hash
	b, err := hex.DecodeString(r.PathValue("hash"))
	if err != nil || len(b) != len(h) {
		return badRequest("a manifest hash is %d hex digits", 2*len(h))
	}
	copy(h[:], b)
	ctx := r.Context()
	m, err := storeCall(a.n.metrics, "manifest", func() (store.Manifest, error) { return a.n.store.Manifest(ctx, h) })
	if err != nil {
		return err
	}
	j := newManifestJSON(m)
	j.Signed = m.Signed
	writeJSON(w, http.StatusOK, j)
	return nil
}
