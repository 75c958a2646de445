// Package cloud is the cloud side of Sensible: one node that devices reach
// over any of the four CoAP transports, on a store that is SQLite in a
// directory (one node) or PostgreSQL (several identical nodes behind a
// load balancer).
//
// A [Node] keeps the registry (product models and their signed manifests,
// devices and their standing, the app keys that sign each subject's
// consent), authorizes every device on every way in against it, and serves
// the v1 protocol's resources (docs/protocol.md). Its zero [Config] with a
// directory is a working node; everything else has a default.
//
// # Authentication and the registry
//
// A device proves its identity with its manufacturer certificate chain
// (DTLS or TLS, checked against Config.DeviceRoots), a DTLS pre-shared key
// derived from the fleet secret (Config.FleetSecret; such devices are
// imported from the factory's list with [Node.ImportDevice]), or a device
// token it signs with its key. Whichever way, the node then asks the
// registry: a device that is suspended or decommissioned is refused, and
// [Node.SetStanding] closes the sessions such a device already has. A device
// with a valid manufacturer chain that the registry does not know yet may
// connect and enroll (zero-touch); every other resource waits until it has.
//
// # Operators
//
// The maker's staff and tools run the fleet through an HTTP JSON API
// (docs/operator-api.md) that the node serves on every http:// or https://
// URL given to [Node.Listen]: devices and their standing, product models
// and signed manifests, claim codes, desired state, commands, incidents,
// and the node's metrics in the Prometheus text format at /metrics. Each
// request carries an operator token, a JWT signed by one of
// Config.OperatorKeys ([SignOperatorToken] makes one), whose scope claim
// must name the route's scope (ScopeDevicesRead, ...). The server bounds
// header and body sizes and every phase of a request, limits failed
// authentications per client address, and logs one line per request,
// never a token or a claim code.
package cloud
