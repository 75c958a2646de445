package cloud_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud"
	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// enrollWith posts an enrollment request.
func enrollWith(c *transport.Client, req protocol.EnrollRequest) (protocol.Enrollment, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var e protocol.Enrollment
	err := c.Post(ctx, protocol.EnrollPath, req, &e)
	return e, err
}

// ownerOf returns a device's owner in the store.
func (f *fixture) ownerOf(d *device) string {
	f.t.Helper()
	got, err := f.st.Device(context.Background(), d.id)
	must(f.t, err)
	return got.Owner
}

// TestFactoryReset: a device that enrolls saying it was reset to its
// factory settings is released from its owner and told it is unclaimed,
// over DTLS-PSK, TCP with a token and DTLS with certificates; a device
// that is not active is refused and keeps its owner.
func TestFactoryReset(t *testing.T) {
	f := newFixture(t, "sqlite", cloud.Config{})
	reset := protocol.EnrollRequest{Model: aircon, Firmware: "1.4.2", Manifest: f.manifests[aircon].hash, Reset: true}
	unclaimed := protocol.Enrollment{Status: protocol.Unclaimed, Manifest: f.manifests[aircon].hash}
	for _, scheme := range []string{"coaps", "coap+tcp"} {
		t.Run(scheme, func(t *testing.T) {
			d := f.importDevice(aircon)
			c := f.dial(d, scheme)
			e, err := enrollWith(c, reset)
			must(t, err)
			unclaimed.Time = f.clock.now().Unix()
			if e != unclaimed || f.ownerOf(d) != "" {
				t.Fatalf("enrollment %+v, owner %q; want %+v and no owner", e, f.ownerOf(d), unclaimed)
			}
			// Said again (the answer was lost), it changes nothing.
			if e, err = enrollWith(c, reset); err != nil || e != unclaimed {
				t.Fatalf("reset again: %+v, %v", e, err)
			}
			// Claimed again, it is told so, and a request without the
			// flag releases nothing.
			must(t, f.st.SetOwner(context.Background(), d.id, "subj-new"))
			e, err = enrollWith(c, protocol.EnrollRequest{Model: aircon, Firmware: "1.4.2"})
			must(t, err)
			if e.Status != protocol.Claimed || e.Subject != "subj-new" {
				t.Fatalf("enrollment %+v after a new claim", e)
			}
		})
	}
	t.Run("zero-touch", func(t *testing.T) {
		d := f.factoryDevice(aircon)
		e, err := enrollWith(f.dial(d, "coaps+cert"), reset)
		must(t, err)
		if e.Status != protocol.Unclaimed || f.ownerOf(d) != "" {
			t.Fatalf("enrollment %+v", e)
		}
	})
	t.Run("suspended", func(t *testing.T) {
		d := f.importDevice(aircon)
		c := f.dial(d, "coap+tcp")
		must(t, f.node.SetStanding(context.Background(), d.id, store.Suspended, "test"))
		if _, err := enrollWith(c, reset); err == nil {
			t.Fatal("a suspended device enrolled")
		}
		if f.ownerOf(d) != owner {
			t.Fatalf("owner %q", f.ownerOf(d))
		}
	})
}

// appCall posts to the app API with a new token of the app key kid.
func appCall(t *testing.T, api, path string, signer crypto.Signer, kid []byte, subject string, at time.Time, body any) (int, []byte) {
	t.Helper()
	tok, err := cloud.SignAppToken(signer, kid, cloud.AppClaims{Subject: subject, Audience: cloud.DefaultAppAudience, IssuedAt: at})
	must(t, err)
	var r io.Reader = http.NoBody
	if body != nil {
		b, err := json.Marshal(body)
		must(t, err)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest("POST", api+path, r)
	must(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	must(t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	must(t, err)
	return res.StatusCode, b
}

// TestTransferNeedsNewConsent: after a transfer, the old owner's consent
// no longer lets the device's readings leave: a batch that needs consent
// is refused while nobody owns the device and after the new owner claims
// it, until the new owner consents; and the device learns its new owner.
func TestTransferNeedsNewConsent(t *testing.T) {
	f := newFixture(t, "sqlite", cloud.Config{MaxIncidents: -1})
	api, err := f.node.Listen("http://127.0.0.1:0")
	must(t, err)
	const newOwner = "subj-91b4e0"
	newApp := newEd25519(t)
	der, err := x509.MarshalPKIXPublicKey(newApp.Public())
	must(t, err)
	must(t, f.st.AddAppKey(context.Background(), store.AppKey{KID: []byte("app-2"), Subject: newOwner, PublicKey: der, Added: f.clock.now()}))

	d := f.importDevice(aircon)
	c := f.dial(d, "coaps")
	now := f.clock.now()
	old := powerGrant(now.Add(-6 * time.Hour))
	f.give(old)
	storedUnder(t, f, c, d, f.power(d, 1, 2), old.ID)

	// The owner's app starts the transfer and gets a new code.
	path := "/v1/app/devices/" + d.id.String() + "/transfer"
	status, body := appCall(t, api, path, f.app, []byte("app-1"), owner, now, nil)
	if status != http.StatusOK {
		t.Fatalf("transfer: %d %s", status, body)
	}
	var code struct{ Device, Code, Label string }
	must(t, json.Unmarshal(body, &code))
	if f.ownerOf(d) != "" {
		t.Fatalf("owner %q during the transfer", f.ownerOf(d))
	}
	refusedForConsent(t, f, c, d, f.power(d, 2, 1), "no owner")

	// The new owner claims it with the label.
	status, body = appCall(t, api, "/v1/app/claims", newApp, []byte("app-2"), newOwner, now, map[string]string{"label": code.Label})
	if status != http.StatusOK || f.ownerOf(d) != newOwner {
		t.Fatalf("claim: %d %s; owner %q", status, body, f.ownerOf(d))
	}
	e, err := enrollWith(c, protocol.EnrollRequest{Model: aircon, Firmware: "1.4.2"})
	must(t, err)
	if e.Status != protocol.Claimed || e.Subject != newOwner {
		t.Fatalf("enrollment %+v", e)
	}
	refusedForConsent(t, f, c, d, f.power(d, 3, 1), "no consent")
	if status, body = appCall(t, api, path, f.app, []byte("app-1"), owner, now, nil); status != http.StatusForbidden {
		t.Fatalf("transfer by the old owner: %d %s", status, body)
	}

	// The new owner consents; from then on the device's readings leave
	// under the new owner's record.
	fresh := consent.Grant(consent.GrantParams{
		Subject: newOwner, Controller: "acme", Notice: notice, At: now.Add(-6 * time.Hour), Actor: "subject:app",
		Processes: powerGrant(now).Processes,
	})
	signed, err := consent.Sign(fresh, newApp, []byte("app-2"))
	must(t, err)
	must(t, addConsent(f.node, context.Background(), signed))
	storedUnder(t, f, c, d, f.power(d, 4, 2), fresh.ID)

	// The old owner withdrawing changes nothing for the new owner.
	f.give(consent.Withdraw(old, f.clock.now(), "subject:app"))
	storedUnder(t, f, c, d, f.power(d, 5, 1), fresh.ID)
}
