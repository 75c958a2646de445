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
// # Device resources
//
// POST /v1/enroll answers a device with whether it has an owner (and who),
// the hash of its model's newest manifest and the cloud's time: 2.04 for a
// device the registry knows, 2.01 for a zero-touch device, which it
// registers then with the model it names and the key and chain it
// authenticated with (transport.PeerCertificates). An unknown model is
// 4.03, and so is every claim token, since the node issues none yet. A
// device that says it was reset to its factory settings is released
// from its owner.
//
// GET /v1/manifest gives the newest manifest of the device's model as its
// maker signed it; [Node.AddManifest] adds one, checked against the
// maker's keys (Config.Controllers).
//
// POST /v1/telemetry takes a batch as CBOR or SenML-CBOR and, before it
// stores anything, decodes it against the manifest it names (4.00
// protocol.DiagnosticUnknownManifest for one the store does not hold),
// checks that the manifest is one of the device's model's, runs the
// manifest's check on every value, and decides for every reading whether
// a consent record of the device's owner allowed it when it was taken.
// A batch that fails a check is refused whole with 4.03 and recorded as
// an incident ([IncidentManifest], [IncidentConsent]); a device with
// Config.MaxIncidents incidents within Config.IncidentWindow is suspended
// and its sessions closed. A batch that passes is stored once per
// idempotency key, each reading with the manifest's hash and the consent
// record that allowed it, and acknowledged only once it is durable.
// Batches that arrive together share one transaction (group commit).
//
// # Consent and retention
//
// /v1/consent (docs/protocol.md 4.7) gives a device, observable, its
// owner's records that cover it (for each purpose the latest, preceded by
// the record it ends) with the app keys that signed them, and takes a
// record the owner gave on the device itself, signed by the device: it is
// logged, and the answer is its receipt. Every record accepted through
// any node reaches the observers of all the owner's devices.
//
// [Node.AddConsent] verifies a signed consent record, applies the rules
// of consent.History (who may grant, withdraw and revoke) and keeps it in
// the store. The node builds each owner's history from the records the
// store holds, verified with [Node.Keys], and before each decision checks
// it against the store, so that a record added through any node counts at
// once on every node.
//
// [Node.Sweep] deletes the readings that their manifest's retention, or
// the shorter retention of the consent that allowed them, no longer lets
// the cloud keep. The node sweeps every Config.SweepInterval (a minute
// by default), and Sweep may be called any time.
//
// # Owners
//
// A device's owner is the subject whose consent decides what leaves it.
// The owner's app claims a device with the claim code on its label
// ([ClaimLabel], [ParseClaimLabel]) through the app API
// (docs/app-api.md), which the node serves beside the operator API, each
// request carrying an app token: a JWT signed with the subject's app key
// from the registry ([SignAppToken]). [Node.ClaimDevice] counts every
// attempt against the device and the claimant and refuses those past
// Config.Claims, compares codes by their hashes in constant time, and
// uses each code once. [Node.TransferDevice] lets the owner hand the
// device on with a new code; [Node.ReleaseDevice], and a device that
// enrolls saying it was reset to its factory settings, leave it without
// an owner. Consent does not travel with a device: from a release on,
// only its next owner's records count.
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
//
// # State and commands
//
// A device observes /v1/state and /v1/commands (docs/protocol.md 4.5,
// 4.6). [Node.SetDesired] stores a device's desired settings under a new
// version; [Node.EnqueueCommand] queues a command, with a time to live.
// Either tells the device's observers at once, over any transport; a
// value larger than a notification may be (protocol.MaxNotificationBody)
// is notified with only its version and Fetch, and the device GETs it.
// Both resources answer 4.04 to a device that has not enrolled and 4.01
// to one that is no longer active.
//
// A device reports the state it is in (POST /v1/state) naming the
// desired version it applied: a report on a version that is no longer
// the current one is refused with 4.12 Precondition Failed, and the
// device GETs the desired state again. [Node.State] returns both states,
// [Node.StateDelta] the desired settings not yet in force.
//
// A command is Pending until a list carrying it reaches the device (a
// GET or a notification), then Delivered; it is in every list the device
// gets, after every reconnect, until the device posts its result: then it
// ends Succeeded or Failed and leaves the list. A command whose time to
// live has passed is no longer delivered and ends Expired: every
// second the node marks such commands in the store and tells the
// observers whose lists lost one. A result for a lapsed command is taken
// only if it says expired; any other is refused with 4.09 Conflict, as is
// a result unlike the one a command already ended with. The same result
// again is stored once. A command list's version is the serving node's
// clock in microseconds, made strictly increasing on each node, since the
// store keeps no version per list: keep the nodes' clocks synchronized.
//
// A change is published through the store's notifier (LISTEN/NOTIFY on
// PostgreSQL) to every node sharing the store, and each notifies its own
// observers, reading the value again from the store: a device observing on
// any node hears a change made through any other, within milliseconds.
// If notifications were lost (a listener reconnected), an observer gets
// the current value when it next registers (its keep-alive or reconnect).
// Standing changes travel the same way, so that suspending a device
// through one node closes its sessions on all of them.
package cloud
