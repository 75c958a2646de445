// Package transport carries CBOR messages between device and cloud over
// CoAP, with one server, one client and one handler API for every CoAP
// transport, so that a product team never has to learn go-coap.
//
// # Transports
//
// The URL scheme picks the transport: coap:// is CoAP over UDP and
// coaps:// over DTLS 1.2 (RFC 7252); coap+tcp:// is CoAP over TCP and
// coaps+tcp:// over TLS (RFC 8323). A [Server] may listen on several at
// once ([Server.Listen]); a [Client] dials one ([Dial]) and completes any
// handshake within the caller's context.
//
// # Resources and handlers
//
// A [Resource] names a path, its methods, whether it needs an
// authenticated device, the content-formats it accepts (CBOR, and
// SenML-CBOR where declared) and its body limit. Before a [Handler] runs,
// the server answers for it: 4.04 for an unknown path, 4.05 for a method
// the resource lacks, 4.01 for a protected resource and an unauthenticated
// peer, 4.29 past the peer's rate limit, 4.13 for a body over the limit and
// 4.15 for a content-format the resource does not accept. A handler decodes
// the body strictly ([Request.Decode], or [Typed] for Go values in and out);
// malformed CBOR answers 4.00 with a short diagnostic that names the field
// at fault. An [*Error] returned by a handler chooses the code (4.03 for
// policy or consent, say), as does a code sentinel such as [ErrForbidden];
// any other error answers 5.00 and goes to the log, not to the peer.
//
// /.well-known/core lists the resources in RFC 6690 link format.
//
// # Authentication
//
// The authenticated device reaches every handler in the request context
// ([DeviceFrom]). A device authenticates in one of three ways:
//
//   - DTLS-PSK (TLS_PSK_WITH_AES_128_CCM_8, the suite RFC 7252 makes
//     mandatory): the PSK identity is the device ID and
//     [ServerConfig.PSK] returns its key, for example one derived from a
//     fleet secret with [DerivePSK]. Connection IDs (RFC 9146) are on, so a
//     device whose address or port changes keeps its session.
//   - Its certificate chain from the manufacturer, over DTLS or TLS:
//     [ServerConfig.DeviceRoots] holds the manufacturer roots, and the chain
//     is checked during the handshake, so a bad chain never reaches a
//     handler.
//   - A device token, on transports without client authentication: a device
//     posts a token it signed (see package
//
// github.com/sensible-iot/sensible/device/identity) to [AuthPath] once per
// session; [ClientConfig.Signer] makes the client do it after every
// connect, and [ServerConfig.Tokens] verifies it and binds the device to
// that connection.
//
// # Errors
//
// On the client, every 4.xx and 5.xx response is an [*Error] carrying the
// code and the server's diagnostic; errors.Is matches it against
// [ErrUnauthorized], [ErrForbidden], [ErrTooManyRequests] and the other
// sentinels by code. The sentinels are constants, so no caller can change
// them, and a handler may return one as it is. Diagnostics travel as RFC
// 7252 section 5.5.2 has them: UTF-8 text without a content-format.
//
// A response the client cannot use is a typed error too: a body that does
// not decode is a [*DecodeError] naming the field at fault
// ([ErrDecode]); a 2.xx body in another content-format matches
// [ErrUnexpectedFormat]; a Reset, [ErrReset]. A request that failed for
// want of a connection matches [ErrUnreachable]. [Server.Listen] fails
// with [ErrBadURL] or [ErrAddressInUse] where they apply.
//
// # Retries
//
// The client retries a request only where it may not have reached the
// server, or the server asked for it ([RetryPolicy]): the connection
// failed or closed before the response, no response came within
// RetryPolicy.Timeout, or the answer was 5.03 or 4.29, after the Max-Age
// it carried ([Error.RetryAfter], which a handler sets to send one). A
// response that does not decode, a content-format mismatch and local
// errors are returned at once, so a handler never runs twice for them.
//
// Responses and notifications are decoded tolerantly: map keys the Go
// value lacks are skipped, so that the cloud can add a field without
// breaking the devices already deployed. Requests, and everything signed,
// are decoded strictly.
//
// # Observe
//
// [Client.Observe] registers for notifications (RFC 7641), which reach the
// handler on a goroutine of the observation, in order. The client keeps
// its observations alive by itself: it checks every
// [ClientConfig.KeepAlive] (30 s by default, which also keeps NAT bindings
// open) with a CoAP ping over TCP and TLS, and by registering again over
// UDP and DTLS, where a restarted server answers a ping as before. When
// the connection closes or a check goes unanswered, the handler gets a
// [Notification] whose Err matches [ErrMissedNotifications], and the
// client reconnects, backing off, and registers again, without waiting
// for a request; the handler then gets the current value. Confirmable
// notifications are acknowledged. A notification with an error code ends
// the observation, and the handler gets that error.
//
// # Large bodies
//
// Over UDP and DTLS a body larger than one block travels block-wise (RFC
// 7959), in 1 KiB blocks that fit a DTLS record; over TCP and TLS one
// message carries it (up to ServerConfig.MaxMessageSize). A resource's
// MaxBody still bounds what its handler accepts. Block-wise transfer is
// not combined with Observe: keep notifications small.
//
// # Defences
//
// A Server faces the open internet. Before go-coap caches, reassembles or
// dispatches anything, every message a peer sends passes a filter of ours:
//
//   - Responses, and ACKs or RSTs carrying a code, token or payload, are
//     dropped: no client of ours sends them to a server.
//   - Requests are rate-limited per peer ([ServerConfig.RateLimit]). Over
//     UDP and DTLS a peer over its limit is told 4.29 a few times and then
//     once a second; the rest are dropped unanswered, because go-coap keeps
//     each answer 247 s and scans a plain-UDP peer's answers on every
//     datagram it sends. A plain-UDP peer that keeps flooding has its
//     session closed, and its cache with it. Before it authenticates, a
//     peer is limited by its IP address, whatever its port. A plain-UDP
//     peer within its limit still makes go-coap keep up to RateLimit ×
//     247 s answers: for busy devices prefer coaps://, whose server does
//     not scan them per datagram.
//   - Block-wise uploads (Block1) are reassembled by us, only after the
//     route, method, authentication, content-format and Size1 pass, in
//     order, at most two per connection, each bounded by the resource's
//     MaxBody (4.13 with Size1). Every byte held counts against one budget
//     for the whole server ([ServerConfig.MaxInFlightBytes]; 5.03 with
//     Max-Age when it is spent). BERT (SZX 7) is refused outside TCP.
//
// Connections are admitted against [ServerConfig.MaxConnections], which is
// kept below the process's file-descriptor limit, and a share per source
// prefix (IPv4 /24, IPv6 /56). A plain-UDP peer is made by one datagram, so
// unauthenticated ones live in a small quota of their own
// ([ServerConfig.MaxUnauthenticated]), are forgotten
// [ServerConfig.UnauthenticatedIdle] after their last datagram, and, when
// the quota is full, the one silent longest makes room. A device token
// over coap:// would bind a session to a source address alone, which
// anyone can send from, so it is refused unless
// [ServerConfig.TokensOverUDP] is set; over coap+tcp:// it binds to the
// TCP connection.
//
// A coaps:// handshake takes nothing that counts until the client echoes
// its DTLS cookie, which a spoofed source never receives: only then a
// handshake slot ([ServerConfig.MaxHandshakes]), a connection slot and a
// token of [ServerConfig.HandshakeRate]. Before, it is one of
// [ServerConfig.MaxCookieWaits] handshakes waiting for their cookie; one
// source prefix holds at most an eighth of either, and a new first
// ClientHello drops its own prefix's oldest waiting handshake when that
// share is full, else the oldest of all when they are all taken.
//
// Observe registrations are capped per connection
// ([ServerConfig.MaxObservations]) and indexed by connection and token;
// over UDP and DTLS every eighth notification (or the first after 30 s)
// is confirmable, and an observer that answers with RST or not at all is
// dropped.
//
// [ServerConfig.Authorize] is asked whenever a device authenticates (a
// DTLS-PSK or certificate handshake, a token), so a decommissioned device
// or a leaked key is refused while its certificate or PSK is still valid,
// and [Server.Revoke] closes every session a device already has.
//
// # Caveats
//
// go-coap keeps every UDP response for about 247 s, keyed by message ID,
// to answer retransmissions; a device that reuses message IDs sooner (a
// reboot that resets its counter on the same address and port) can get a
// stale answer. Batch readings rather than sending many small requests.
//
// pion/dtls keeps each DTLS cookie in the state of its own connection, so
// the cookie exchange is not stateless as RFC 6347 section 4.2.1
// recommends (dtlslisten.go says why it cannot be made so from outside).
// Under a spoofed flood of first ClientHellos from many networks, R a
// second, a device has about MaxCookieWaits/R seconds to echo its cookie
// (0.4 s at the default and 5,000 a second) before its handshake is
// dropped as the oldest; past that it is served once the flood slows. A
// flood from few networks only churns their own eighths.
package transport
