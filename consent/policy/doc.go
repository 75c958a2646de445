// Package policy holds a product's data manifest: the streams it may
// send, their fields and data categories, the purposes they serve, where
// they may go, the transform each field gets before it leaves the device,
// the legal basis and how long the data is kept. Anything the manifest
// does not declare never leaves the device.
//
// Manifests are written by people in JSON ([Parse]), validated with errors
// that name the line and the problem ([ManifestError]), and identified by
// the SHA-256 of their deterministic CBOR encoding ([Manifest.Hash]), which
// every telemetry batch names so that the cloud checks it against exactly
// that manifest. A maker signs its manifests ([Manifest.Sign]) and a device
// runs only one its maker signed ([OpenSigned]).
//
// On the device an [Enforcer] applies the manifest: [Enforcer.Apply] (or
// the allocation-free [Enforcer.ApplyValues]) returns what of a reading
// may leave, transformed, and for which destinations, or nothing; an
// [Aggregator] turns readings into one value per window, suppressing
// windows with too few samples. In the cloud, [Manifest.Check] and
// [Manifests.Check] refuse what a device should not have sent, with a
// [Violation] fit for an audit log: both sides run the same transforms.
//
// [Manifest.DisclosureMarkdown] and [Manifest.DisclosureHTML] render the
// manifest for customers: what is sent, why, to whom, for how long, and
// what never leaves the device.
package policy
