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
// that manifest.
package policy
