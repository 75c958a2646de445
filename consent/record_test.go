package consent

import (
	"context"
	"crypto"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"

	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

const noticeText = "We use your air conditioner's power readings to improve energy efficiency."

func testRecord() *Record {
	return &Record{
		Schema: SchemaVersion, ID: NewID(), Subject: "subj-7f3a", Controller: "acme-appliances",
		Notice: Notice{ID: "energy", Version: 3, Language: "en-GB", Hash: HashText([]byte(noticeText))},
		Processes: []Process{{
			Purpose: "analytics", Categories: []string{"device.sensor.power"}, LegalBasis: "consent",
			Retention: 365 * 24 * 3600, Storage: "eu-west", Withdrawal: "app:settings/privacy", Jurisdiction: "EU",
		}},
		Devices: []identity.ID{{0x9d, 0x3c, 0x42, 0x17, 0x70, 0xb1, 0x4a, 0xf3, 0x0d, 0x66, 0x3f, 0x12, 0x8b, 0x5e, 0x01, 0x77}},
		Event:   Event{Time: t0.Unix(), Actor: "subject:app", State: StateGiven},
	}
}

type keyring struct {
	set   *KeySet
	app   crypto.Signer
	ctrl  crypto.Signer
	other crypto.Signer
}

func newKeyring(t testing.TB, kt identity.KeyType) *keyring {
	t.Helper()
	k := &keyring{set: &KeySet{}}
	var err error
	for _, p := range []*crypto.Signer{&k.app, &k.ctrl, &k.other} {
		if *p, err = identity.GenerateKey(kt); err != nil {
			t.Fatal(err)
		}
	}
	if err := k.set.Add(TrustedKey{KID: []byte("app-1"), Key: k.app.Public(), Role: SubjectKey, Subject: "subj-7f3a"}); err != nil {
		t.Fatal(err)
	}
	if err := k.set.Add(TrustedKey{KID: []byte("ctrl-1"), Key: k.ctrl.Public(), Role: ControllerKey}); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSignVerify(t *testing.T) {
	for _, kt := range []identity.KeyType{identity.P256, identity.Ed25519} {
		t.Run(kt.String(), func(t *testing.T) {
			k := newKeyring(t, kt)
			r := testRecord()
			msg, err := Sign(r, k.app, []byte("app-1"))
			if err != nil {
				t.Fatal(err)
			}
			v, err := Verify(context.Background(), k.set, msg)
			if err != nil {
				t.Fatal(err)
			}
			if v.Record.ID != r.ID || v.Record.Subject != r.Subject || v.Signer.Role != SubjectKey ||
				v.Record.Processes[0].Retention != r.Processes[0].Retention || v.Record.Notice.Hash != r.Notice.Hash {
				t.Fatalf("verified %+v", v.Record)
			}
			if err := v.Record.Notice.CheckText([]byte(noticeText)); err != nil {
				t.Fatal(err)
			}
			// Any COSE implementation can verify our records: go-cose's own
			// verifier, independently of our code path.
			var m cose.Sign1Message
			if err := m.UnmarshalCBOR(msg); err != nil {
				t.Fatal(err)
			}
			alg := cose.AlgorithmES256
			if kt == identity.Ed25519 {
				alg = cose.AlgorithmEdDSA
			}
			cv, _ := cose.NewVerifier(alg, k.app.Public())
			if err := m.Verify(nil, cv); err != nil {
				t.Fatalf("go-cose does not verify our record: %v", err)
			}
			if kid, _ := m.Headers.Protected[cose.HeaderLabelKeyID].([]byte); string(kid) != "app-1" {
				t.Fatalf("kid %q not in the protected header", kid)
			}
			// The payload is the deterministic encoding: signing the same
			// record again gives the same payload.
			again, _ := codec.Marshal(r)
			if string(again) != string(m.Payload) {
				t.Fatal("payload is not the deterministic encoding of the record")
			}
		})
	}
}

func TestVerifyBadInput(t *testing.T) {
	k := newKeyring(t, identity.P256)
	r := testRecord()
	good, err := Sign(r, k.app, []byte("app-1"))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := Sign(testRecord(), k.app, []byte("app-1"))

	var m cose.Sign1Message
	m.UnmarshalCBOR(good)
	var mo cose.Sign1Message
	mo.UnmarshalCBOR(other)
	swapped := m
	swapped.Signature = mo.Signature
	swappedMsg, _ := swapped.MarshalCBOR()

	forged := append([]byte(nil), good...)
	forged[len(forged)-1] ^= 1

	untrusted, _ := Sign(r, k.other, []byte("app-1")) // claims a trusted kid
	unknownKid, _ := Sign(r, k.other, []byte("stranger"))

	wrongTag := append([]byte{0xd1}, good[1:]...) // tag 17: COSE_Mac0
	bigTag := append([]byte{0xd9, 0x03, 0xe6}, good[1:]...)

	// A payload with a duplicate map key, properly signed by a trusted key.
	dup := []byte{0xa2, 0x01, 0x01, 0x01, 0x02}
	cs, _ := cose.NewSigner(cose.AlgorithmES256, k.app)
	dupMsg, _ := cose.Sign1(rand.Reader, cs, cose.Headers{Protected: cose.ProtectedHeader{
		cose.HeaderLabelAlgorithm: cose.AlgorithmES256, cose.HeaderLabelKeyID: []byte("app-1")}}, dup, nil)
	edSigner, _ := identity.GenerateKey(identity.Ed25519)
	es, _ := cose.NewSigner(cose.AlgorithmEdDSA, edSigner)
	wrongAlg, _ := cose.Sign1(rand.Reader, es, cose.Headers{Protected: cose.ProtectedHeader{
		cose.HeaderLabelAlgorithm: cose.AlgorithmEdDSA, cose.HeaderLabelKeyID: []byte("app-1")}}, m.Payload, nil)
	bad := *r
	bad.Event.State = 0
	badPayload, _ := codec.Marshal(&bad)
	badRec, _ := cose.Sign1(rand.Reader, cs, cose.Headers{Protected: cose.ProtectedHeader{
		cose.HeaderLabelAlgorithm: cose.AlgorithmES256, cose.HeaderLabelKeyID: []byte("app-1")}}, badPayload, nil)

	for _, c := range []struct {
		name string
		msg  []byte
		want error
	}{
		{"forged signature", forged, ErrBadSignature},
		{"signature swapped from another record", swappedMsg, ErrBadSignature},
		{"re-signed by an untrusted key under a trusted kid", untrusted, ErrBadSignature},
		{"unknown key ID", unknownKid, ErrUnknownKey},
		{"truncated", good[:len(good)/2], ErrMalformed},
		{"truncated by one byte", good[:len(good)-1], ErrMalformed},
		{"empty", nil, ErrMalformed},
		{"wrong COSE tag (17)", wrongTag, ErrWrongTag},
		{"wrong tag (998)", bigTag, ErrWrongTag},
		{"duplicate map keys in the record", dupMsg, ErrMalformed},
		{"EdDSA under a P-256 key", wrongAlg, ErrAlgorithm},
		{"unknown state", badRec, ErrMalformed},
		{"oversize", make([]byte, MaxRecordSize+1), ErrMalformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, err := Verify(context.Background(), k.set, c.msg)
			if !errors.Is(err, c.want) {
				t.Fatalf("Verify = %v, %v; want %v", v, err, c.want)
			}
		})
	}
}

func TestRecordValidity(t *testing.T) {
	r := testRecord()
	r.Event.Expires = t0.Add(24 * time.Hour).Unix()
	if err := r.ValidAt(t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := r.ValidAt(t0.Add(-time.Second)); !errors.Is(err, ErrNotYetValid) {
		t.Fatalf("before the event: %v", err)
	}
	if err := r.ValidAt(t0.Add(24 * time.Hour)); !errors.Is(err, ErrExpired) {
		t.Fatalf("at expiry: %v", err)
	}
	if err := r.Notice.CheckText([]byte(noticeText + " And we sell it.")); !errors.Is(err, ErrNoticeHash) {
		t.Fatalf("changed notice text: %v", err)
	}
}

func TestSignRefusesBadRecords(t *testing.T) {
	k := newKeyring(t, identity.Ed25519)
	for name, mutate := range map[string]func(*Record){
		"no subject":              func(r *Record) { r.Subject = "" },
		"no process":              func(r *Record) { r.Processes = nil },
		"process without purpose": func(r *Record) { r.Processes[0].Purpose = "" },
		"withdrawal naming none":  func(r *Record) { r.Event.State = StateWithdrawn },
		"grant naming one":        func(r *Record) { id := NewID(); r.Ends = &id },
		"expires before event":    func(r *Record) { r.Event.Expires = r.Event.Time - 1 },
		"wrong schema":            func(r *Record) { r.Schema = 9 },
	} {
		r := testRecord()
		mutate(r)
		if _, err := Sign(r, k.app, []byte("app-1")); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

func FuzzVerify(f *testing.F) {
	k := newKeyring(f, identity.Ed25519)
	good, err := Sign(testRecord(), k.app, []byte("app-1"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)-3])
	f.Add(append([]byte{0xd1}, good[1:]...))
	f.Fuzz(func(t *testing.T, msg []byte) {
		v, err := Verify(context.Background(), k.set, msg)
		if err != nil {
			if !isTyped(err) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		// Whatever verifies was signed by a trusted key, and what it
		// decoded to encodes again.
		if _, err := k.set.LookupKey(context.Background(), v.Signer.KID); err != nil {
			t.Fatal(err)
		}
		if _, err := codec.Marshal(v.Record); err != nil {
			t.Fatal(err)
		}
	})
}

func TestVerifyStrictHeaders(t *testing.T) {
	k := newKeyring(t, identity.P256)
	payload, _ := codec.Marshal(testRecord())
	cs, _ := cose.NewSigner(cose.AlgorithmES256, k.app)
	sign := func(h cose.Headers) []byte {
		t.Helper()
		msg, err := cose.Sign1(rand.Reader, cs, h, payload, nil)
		if err != nil {
			t.Fatal(err)
		}
		return msg
	}
	good := sign(cose.Headers{Protected: cose.ProtectedHeader{cose.HeaderLabelAlgorithm: cose.AlgorithmES256, cose.HeaderLabelKeyID: []byte("app-1")}})
	if _, err := Verify(context.Background(), k.set, good); err != nil {
		t.Fatal(err)
	}
	// A header parameter in both buckets.
	var m sign1
	if err := coseDecoder.Unmarshal(good[1:], &m); err != nil {
		t.Fatal(err)
	}
	kid, _ := codec.Marshal([]byte("ctrl-1"))
	m.Unprotected = map[int64]cbor.RawMessage{labelKID: kid}
	both, err := codec.Marshal(&m)
	if err != nil {
		t.Fatal(err)
	}
	both = append([]byte{0xd2}, both...)
	if _, err := Verify(context.Background(), k.set, both); !errors.Is(err, ErrMalformed) {
		t.Errorf("kid both protected and unprotected: %v", err)
	}
	// A critical header this verifier does not understand.
	crit := sign(cose.Headers{Protected: cose.ProtectedHeader{cose.HeaderLabelAlgorithm: cose.AlgorithmES256,
		cose.HeaderLabelKeyID: []byte("app-1"), cose.HeaderLabelCritical: []any{int64(99)}, int64(99): "x"}})
	if _, err := Verify(context.Background(), k.set, crit); !errors.Is(err, ErrMalformed) {
		t.Errorf("critical header: %v", err)
	}
	// A text header label.
	text := sign(cose.Headers{Protected: cose.ProtectedHeader{cose.HeaderLabelAlgorithm: cose.AlgorithmES256,
		cose.HeaderLabelKeyID: []byte("app-1"), "note": "x"}})
	if _, err := Verify(context.Background(), k.set, text); !errors.Is(err, ErrMalformed) {
		t.Errorf("text header label: %v", err)
	}
}

// TestDecodeAccepted: a stored record decodes with its key ID without any
// key, its signature unchecked; what is not a record is ErrMalformed.
func TestDecodeAccepted(t *testing.T) {
	k := newKeyring(t, identity.Ed25519)
	r := testRecord()
	msg, err := Sign(r, k.app, []byte("app-1"))
	must(t, err)
	got, kid, err := DecodeAccepted(msg)
	must(t, err)
	if got.ID != r.ID || string(kid) != "app-1" {
		t.Fatalf("decoded %s signed by %q", got.ID, kid)
	}
	for _, bad := range [][]byte{nil, []byte("'; DROP TABLE consent_records; --"), msg[:len(msg)/2]} {
		if _, _, err := DecodeAccepted(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("%x: %v, want ErrMalformed", bad, err)
		}
	}
}
