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
// A change reaches the observers connected to the node that made it. With
// several nodes on one PostgreSQL store, a device connected to another
// node gets the change when it next registers its observation (after a
// reconnect, or, over UDP and DTLS, at its keep-alive), until changes are
// published between nodes.
package cloud
