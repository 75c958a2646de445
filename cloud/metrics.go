package cloud

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are a node's Prometheus collectors, on a registry of the node's
// own (never the global one, so that several nodes in one process do not
// clash), served at /metrics on the operator listener.
//
// The methods below are what the rest of the node calls; each is safe for
// concurrent use and cheap. Label values must come from a small fixed set
// (constants in the calling code), never from a device or a request:
// every distinct value is a time series kept for the life of the process.
//
//   - batchStored(duplicate, readings): after Ingest stored a telemetry
//     batch (or found it stored before); counts the batch by result and,
//     for a batch stored now, its readings.
//   - refused(reason): a device's request or batch refused, by a reason
//     such as "manifest", "consent", "malformed", "too-large", "rate".
//   - incident(kind): an incident recorded, by its kind ("bad-token", ...).
//   - session(method, admitted): a device authenticated, by method ("psk",
//     "cert", "token"), and whether the registry admitted it.
//   - storeCall / storeDo: run one store operation and observe its
//     latency by operation name.
//
// The operator API counts its own requests, authentication failures and
// store calls.
type metrics struct {
	reg *prometheus.Registry

	batches        *prometheus.CounterVec
	readings       prometheus.Counter
	refusals       *prometheus.CounterVec
	incidents      *prometheus.CounterVec
	sessions       *prometheus.CounterVec
	storeSeconds   *prometheus.HistogramVec
	requests       *prometheus.CounterVec
	requestSeconds *prometheus.HistogramVec
	authFailures   *prometheus.CounterVec
}

// metricsNamespace prefixes every metric of ours.
const metricsNamespace = "sensible_cloud"

func newMetrics() *metrics {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricsNamespace, Name: name, Help: help}, labels)
	}
	histogram := func(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: metricsNamespace, Name: name, Help: help, Buckets: buckets}, labels)
	}
	m := &metrics{
		reg:       prometheus.NewRegistry(),
		batches:   counter("telemetry_batches_total", "Telemetry batches received, by result: stored, or duplicate (stored before).", "result"),
		readings:  prometheus.NewCounter(prometheus.CounterOpts{Namespace: metricsNamespace, Name: "telemetry_readings_total", Help: "Readings stored from telemetry batches."}),
		refusals:  counter("refusals_total", "Device requests and batches refused, by reason.", "reason"),
		incidents: counter("incidents_total", "Device incidents recorded, by kind.", "kind"),
		sessions:  counter("device_sessions_total", "Device authentications, by method and by whether the registry admitted the device.", "method", "result"),
		storeSeconds: histogram("store_duration_seconds", "Latency of store operations, by operation.",
			[]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}, "op"),
		requests: counter("operator_requests_total", "Operator API requests, by route pattern and status code.", "route", "code"),
		requestSeconds: histogram("operator_request_duration_seconds", "Operator API request latency, by route pattern.",
			prometheus.DefBuckets, "route"),
		authFailures: counter("operator_auth_failures_total", "Operator API requests refused before their handler: no token (missing), a bad one (invalid), too many failures from the client (limited), or a scope the token lacks (scope).", "reason"),
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.batches, m.readings, m.refusals, m.incidents, m.sessions, m.storeSeconds,
		m.requests, m.requestSeconds, m.authFailures,
	)
	return m
}

// handler serves the registry in the Prometheus text format.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// batchStored counts a telemetry batch that Ingest stored now, with its
// readings, or found stored before (duplicate).
func (m *metrics) batchStored(duplicate bool, readings int) {
	if duplicate {
		m.batches.WithLabelValues("duplicate").Inc()
		return
	}
	m.batches.WithLabelValues("stored").Inc()
	m.readings.Add(float64(readings))
}

// refused counts a device's request or batch refused for reason.
func (m *metrics) refused(reason string) { m.refusals.WithLabelValues(reason).Inc() }

// incident counts an incident of kind.
func (m *metrics) incident(kind string) { m.incidents.WithLabelValues(kind).Inc() }

// session counts a device's authentication by method, admitted or refused
// by the registry.
func (m *metrics) session(method string, admitted bool) {
	result := "refused"
	if admitted {
		result = "admitted"
	}
	m.sessions.WithLabelValues(method, result).Inc()
}

// request counts an operator API request by route pattern and status.
func (m *metrics) request(route string, status int, d time.Duration) {
	m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
	m.requestSeconds.WithLabelValues(route).Observe(d.Seconds())
}

// authFailed counts an operator API request refused before its handler.
func (m *metrics) authFailed(reason string) { m.authFailures.WithLabelValues(reason).Inc() }

// storeCall runs one store operation, f, and observes its latency under
// op.
func storeCall[T any](m *metrics, op string, f func() (T, error)) (T, error) {
	start := time.Now()
	v, err := f()
	m.storeSeconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
	return v, err
}

// storeDo is storeCall for an operation that returns only an error.
func storeDo(m *metrics, op string, f func() error) error {
	_, err := storeCall(m, op, func() (struct{}, error) { return struct{}{}, f() })
	return err
}
