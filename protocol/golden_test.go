package protocol_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
	"github.com/sensible-iot/sensible/protocol"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// A vector is one golden message: name.cbor holds its bytes, name.hex
// and name.diag the same bytes in hex and in diagnostic notation.
type vector struct {
	name string
	// value is the Go value of the message.
	value any
	// encode returns the message's bytes, and for SenML its Uri-Query
	// options.
	encode func() (query []string, body []byte, err error)
	// decode decodes the golden bytes (with the golden query) into a Go
	// value to compare with value.
	decode func(query []string, body []byte) (any, error)
	// same compares value with a decoded one; nil means reflect.DeepEqual.
	same func(want, got any) bool
}

// message is a vector of a plain message, encoded by codec.Marshal (as
// transport sends it) and decoded strictly into a fresh *T.
func message[T any](name string, v T) vector {
	return vector{
		name: name, value: v,
		encode: func() ([]string, []byte, error) { b, err := codec.Marshal(v); return nil, b, err },
		decode: func(_ []string, b []byte) (any, error) {
			var out T
			err := codec.Unmarshal(b, &out)
			return out, err
		},
	}
}

func batchVector(name string, b protocol.Batch, ms protocol.ManifestSource) vector {
	return vector{
		name: name, value: b,
		encode: func() ([]string, []byte, error) { data, err := b.MarshalCBOR(); return nil, data, err },
		decode: func(_ []string, data []byte) (any, error) {
			got, err := protocol.DecodeBatch(data, ms)
			if err != nil {
				return nil, err
			}
			return *got, nil
		},
		same: sameBatch,
	}
}

func senmlVector(name string, b protocol.Batch, m *policy.Manifest, ms protocol.ManifestSource) vector {
	return vector{
		name: name, value: b,
		encode: func() ([]string, []byte, error) { return b.MarshalSenML(m) },
		decode: func(q []string, data []byte) (any, error) {
			got, err := protocol.DecodeSenML(q, data, ms)
			if err != nil {
				return nil, err
			}
			return *got, nil
		},
		same: sameBatch,
	}
}

// vectors returns every golden message.
func vectors(t testing.TB) []vector {
	f := newFixture(t)
	signedAircon, err := f.aircon.Sign(f.maker, []byte("maker-1"))
	if err != nil {
		t.Fatal(err)
	}
	receipt, deviceRecord := f.receipt(t)
	cmd1 := protocol.CommandID{0xc0, 0x11, 0xa2, 0xd0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}
	cmd2 := protocol.CommandID{0xc0, 0x11, 0xa2, 0xd0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}
	tok := message("auth-token", protocol.Token(f.token()))
	tok.same = func(want, got any) bool {
		// The token is also a valid one, at its time.
		v, err := identity.NewTokenVerifier(identity.VerifierConfig{
			Audience: tokenAudience,
			Keys:     func(context.Context, identity.ID) (crypto.PublicKey, error) { return f.device.Public(), nil },
			Now:      func() time.Time { return goldenTime.Add(time.Minute) },
		})
		if err != nil {
			t.Fatal(err)
		}
		c, err := v.Verify(context.Background(), string(got.(protocol.Token)))
		return err == nil && c.Device == f.deviceID && want == got
	}
	manifest := message("manifest-response", protocol.ManifestResponse{Signed: signedAircon})
	manifest.same = func(want, got any) bool {
		m, err := policy.OpenSigned(context.Background(), got.(protocol.ManifestResponse).Signed, f.keys)
		if err != nil {
			return false
		}
		h, _ := m.Hash()
		return h == f.airconHash && reflect.DeepEqual(want, got)
	}
	record := vector{
		name: "consent-record", value: *f.deviceGrant(),
		encode: func() ([]string, []byte, error) { return nil, deviceRecord, nil },
		decode: func(_ []string, b []byte) (any, error) {
			v, err := consent.Verify(context.Background(), f.keys, b)
			if err != nil {
				return nil, err
			}
			return *v.Record, nil
		},
	}
	appRecord := sign(t, f.appGrant(), f.app, "app-1")
	appKey, err := x509.MarshalPKIXPublicKey(f.app.Public())
	if err != nil {
		t.Fatal(err)
	}
	consents := message("consent-list", protocol.Consents{Version: 2, Records: [][]byte{appRecord, deviceRecord},
		Keys: []protocol.SignerKey{{KID: []byte("app-1"), Role: consent.SubjectKey, Subject: goldenSubject, Key: appKey}}})
	consents.same = func(want, got any) bool {
		// The device verifies the records with its own key and the
		// app keys the list brings.
		cs := got.(protocol.Consents)
		keys := &consent.KeySet{}
		keys.Add(consent.TrustedKey{KID: []byte(f.deviceID.String()), Key: f.device.Public(), Role: consent.DeviceKey, Subject: goldenSubject})
		for _, k := range cs.Keys {
			tk, err := k.TrustedKey()
			if err != nil || keys.Add(tk) != nil {
				return false
			}
		}
		h := consent.NewHistory(goldenSubject)
		for _, r := range cs.Records {
			v, err := consent.Verify(context.Background(), keys, r)
			if err != nil || h.Add(v) != nil {
				return false
			}
		}
		d := h.Decide(consent.Query{Purpose: "analytics", Category: "device.sensor.power", Device: f.deviceID, At: goldenTime})
		return d.Allowed && reflect.DeepEqual(want, got)
	}
	rcpt := message("consent-receipt", *receipt)
	rcpt.same = func(want, got any) bool {
		r := got.(consent.Receipt)
		return consent.VerifyReceipt(&r, deviceRecord, f.logVer) == nil && reflect.DeepEqual(want, got)
	}
	return []vector{
		tok,
		message("enroll-request", protocol.EnrollRequest{Model: "acme-aircon-x1", Firmware: "1.4.2", Manifest: f.airconHash, Claim: claimToken}),
		message("enroll-first-contact", protocol.EnrollRequest{Model: "acme-aircon-x1", Firmware: "1.4.2"}),
		message("enroll-reset", protocol.EnrollRequest{Model: "acme-aircon-x1", Firmware: "1.4.2", Manifest: f.airconHash, Reset: true}),
		message("enroll-response", protocol.Enrollment{Status: protocol.Claimed, Subject: goldenSubject, Manifest: f.airconHash, Time: goldenTime.Unix()}),
		manifest,
		batchVector("telemetry-batch", f.powerBatch(t), f.reg),
		batchVector("telemetry-aggregate", f.occupancyBatch(t), f.reg),
		batchVector("telemetry-types", f.tripBatch(t, goldenTime.Add(7*time.Minute+12345678901)), f.reg),
		senmlVector("telemetry-senml", f.powerBatch(t), f.aircon, f.reg),
		senmlVector("telemetry-senml-types", f.tripBatch(t, goldenTime.Add(7*time.Minute+12500*time.Millisecond)), f.mower, f.reg),
		message("telemetry-ack", protocol.Ack{Key: goldenKey, Stored: 2}),
		message("telemetry-ack-duplicate", protocol.Ack{Key: goldenKey, Stored: 2, Duplicate: true}),
		message("state-desired", protocol.Desired{Version: 7, Settings: protocol.Settings{"mode": "cool", "target_c": 22.5, "fan": int64(2), "eco": true}}),
		message("state-desired-fetch", protocol.Desired{Version: 8, Fetch: true}),
		message("state-reported", protocol.Reported{Version: 7, Settings: protocol.Settings{"mode": "cool", "target_c": 22.5, "fan": int64(3), "eco": true},
			Errors: map[string]string{"fan": "speed 2 is not available in cool mode"}}),
		message("commands", protocol.Commands{Version: 3, Commands: []protocol.Command{
			{ID: cmd1, Name: "start-cleaning", Args: protocol.Settings{"room": "kitchen", "passes": int64(2)}, Expires: goldenTime.Unix() + 3600},
			{ID: cmd2, Name: "dock"},
		}}),
		message("command-result", protocol.CommandResult{ID: cmd1, Status: protocol.Done, Output: protocol.Settings{"area_m2": 18.5}}),
		message("command-result-rejected", protocol.CommandResult{ID: cmd2, Status: protocol.Rejected, Detail: "already docked"}),
		consents,
		record,
		rcpt,
	}
}

// TestGolden checks every golden message both ways: the Go value encodes
// to the golden bytes, and the golden bytes decode to the Go value. The
// .hex and .diag files must show the same bytes. go test -update
// rewrites all three.
func TestGolden(t *testing.T) {
	for _, v := range vectors(t) {
		t.Run(v.name, func(t *testing.T) {
			query, got, err := v.encode()
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			base := filepath.Join("testdata", v.name)
			diag, err := diagnose(got)
			if err != nil {
				t.Fatalf("diagnose: %v", err)
			}
			if *update {
				writeFile(t, base+".cbor", got)
				writeFile(t, base+".hex", []byte(hexLines(got)))
				writeFile(t, base+".diag", []byte(diag))
				if query != nil {
					writeFile(t, base+".query", []byte(strings.Join(query, "\n")+"\n"))
				}
			}
			golden := readFile(t, base+".cbor")
			if !bytes.Equal(got, golden) {
				t.Errorf("encoding differs from %s.cbor (run go test -update if the change is intended)\ngot  %x\nwant %x", base, got, golden)
			}
			if h := string(readFile(t, base+".hex")); h != hexLines(golden) {
				t.Errorf("%s.hex does not hold the bytes of %s.cbor", base, base)
			}
			if d, err := diagnose(golden); err != nil || string(readFile(t, base+".diag")) != d {
				t.Errorf("%s.diag does not show the bytes of %s.cbor (%v)", base, base, err)
			}
			var goldenQuery []string
			if query != nil {
				goldenQuery = strings.Fields(string(readFile(t, base+".query")))
				if !reflect.DeepEqual(query, goldenQuery) {
					t.Errorf("query %q, golden %q", query, goldenQuery)
				}
			}
			dec, err := v.decode(goldenQuery, golden)
			if err != nil {
				t.Fatalf("decoding %s.cbor: %v", base, err)
			}
			same := v.same
			if same == nil {
				same = reflect.DeepEqual
			}
			if !same(v.value, dec) {
				t.Errorf("%s.cbor decodes to\n%#v\nwant\n%#v", base, dec, v.value)
			}
		})
	}
}

// hexLines writes b in lower-case hex, 32 bytes a line.
func hexLines(b []byte) string {
	var s strings.Builder
	for len(b) > 0 {
		n := min(len(b), 32)
		s.WriteString(hex.EncodeToString(b[:n]))
		s.WriteByte('\n')
		b = b[n:]
	}
	return s.String()
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	return b
}

func writeFile(t *testing.T, name string, b []byte) {
	t.Helper()
	if err := os.WriteFile(name, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// sameBatch compares two batches, times by the instant they name.
func sameBatch(want, got any) bool {
	a, b := want.(protocol.Batch), got.(protocol.Batch)
	if a.Manifest != b.Manifest || a.Stream != b.Stream || a.Key != b.Key || a.Partner != b.Partner || len(a.Readings) != len(b.Readings) {
		return false
	}
	for i := range a.Readings {
		if !sameReading(a.Readings[i], b.Readings[i]) {
			return false
		}
	}
	return true
}

func sameReading(a, b policy.Reading) bool {
	if len(a) != len(b) {
		return false
	}
	for k, x := range a {
		y, ok := b[k]
		if !ok {
			return false
		}
		if tx, ok := x.(time.Time); ok {
			ty, ok := y.(time.Time)
			if !ok || !tx.Equal(ty) {
				return false
			}
			continue
		}
		if x != y {
			return false
		}
	}
	return true
}
