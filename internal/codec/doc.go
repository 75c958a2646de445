// Package codec is Sensible's one CBOR codec (RFC 8949): a deterministic
// encoder for everything that is signed, hashed or compared, and strict,
// bounded decoders for everything that comes from the network or a file.
// Other packages use it instead of configuring github.com/fxamacker/cbor/v2
// themselves, so that device and cloud agree on every byte.
//
// # Encoding
//
// [Marshal] writes RFC 8949 §4.2.1 core deterministic encoding: preferred
// serialization (shortest heads, shortest float that keeps the value, NaN
// as f97e00), no indefinite lengths, map keys and struct fields sorted
// bytewise by their encoded form. Equal values give equal bytes, so the
// output can be signed, hashed (the manifest hash, the consent log) and
// compared. It writes no tags (time.Time is integer Unix seconds) and no
// indefinite lengths, so [Unmarshal] reads back what it writes, within the
// limits and apart from the caveats below.
//
// # Strict decoding
//
// [Unmarshal] and [Decoder.Unmarshal] reject, rather than interpret,
// anything our v1 schemas do not use or that would let one input cost
// much:
//
//   - input longer than MaxBody, before decoding it;
//   - anything but exactly one well-formed data item (no trailing bytes);
//   - text strings that are not valid UTF-8;
//   - duplicate map keys (RFC 8949 §5.6), which could make two readers of
//     one signed record see different values;
//   - indefinite-length strings, arrays and maps, which deterministic
//     encoding never produces;
//   - tags, all of them. This includes time (tags 0 and 1): send integer
//     seconds; and bignums (tags 2 and 3), so integers are limited to the
//     range of major types 0 and 1, -2^64 to 2^64-1 (decoded into any, the
//     negative ones below -2^63 become big.Int). COSE messages (tag 18)
//     are parsed by the COSE library, not here;
//   - arrays and maps nested deeper than MaxDepth, arrays with more than
//     MaxArray elements and maps with more than MaxMap pairs;
//   - map keys that name no field of the target struct. A v1 peer must not
//     send fields v1 does not define: ignoring them would let data through
//     that no manifest declared and hide a peer's bug; a new field belongs
//     to a new schema version. Struct field names match case-sensitively.
//
// One relaxation exists, for what a newer peer may extend: a decoder from
// [NewTolerantDecoder] skips map keys that name no field (still checking
// them against every rule above). Clients use it for responses and
// notifications, so that the cloud can add a field without breaking the
// devices already deployed; requests, and everything signed or hashed,
// are decoded strictly.
//
// Counts are checked on the item heads before anything is allocated, and
// no string can be longer than the body that holds it, so the limits bound
// the memory one input may take.
//
// Every error is a *[DecodeError] whose Kind is one of the sentinels
// ([ErrTooLarge], [ErrMalformed], [ErrDuplicateKey], [ErrIndefiniteLength],
// [ErrTag], [ErrTooDeep], [ErrTooMany], [ErrType]); test with errors.Is,
// never by the text. The text is short and fixed, fit for a CoAP 4.00
// (4.13 for ErrTooLarge) diagnostic payload. Its Field names the struct
// field whose value did not fit, when one did not.
//
// # Limits
//
// The defaults suit CoAP bodies: [DefaultMaxBody] 64 KiB, [DefaultMaxDepth]
// 16, [DefaultMaxArray] 4096 (a telemetry batch), [DefaultMaxMap] 256.
// A purpose that needs other bounds builds its own [Decoder] once, at
// startup, and shares it:
//
//	var manifestDecoder = func() *codec.Decoder {
//		d, err := codec.NewDecoder(codec.Limits{MaxBody: 1 << 20})
//		if err != nil {
//			panic(err) // constant limits: a bug
//		}
//		return d
//	}()
//
// Fields left zero keep their defaults. Decoders are immutable and safe
// for concurrent use.
//
// # Caveats
//
// Duplicate keys are found by comparing decoded Go values, so floating-point
// map keys are compared as Go floats: 0.0 and -0.0 count as the same key
// (rejected, though CBOR tells them apart), and NaN keys never equal one
// another (accepted, and a map with several NaN keys has no deterministic
// encoding). None of our schemas has float keys.
//
// Marshal does not check that Go strings are valid UTF-8; Unmarshal rejects
// text strings that are not.
//
// Decoded into any, undefined becomes nil, which Marshal writes as null.
package codec
