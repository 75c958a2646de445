// Command demo runs the product on one machine: a cloud node on SQLite in
// a temporary directory, an air conditioner whose agent records readings
// over DTLS, and its owner, who gives consent and withdraws it. It prints
// what happens at each step and exits.
//
//	go run ./examples/demo
//
// What it shows: the maker signs the product's data manifest; the cloud
// registers the device from the factory's list; the device shapes each
// reading on the device as the manifest says (the time to the second,
// the power to 10 W) and keeps it in its encrypted outbox; nothing that needs
// consent is recorded until the owner's app signs a consent record, which
// both the cloud and the device verify; the cloud stores each reading once,
// with the manifest and the consent record that let it leave the device;
// after the owner withdraws, the device refuses to record for that purpose
// and the cloud would refuse it too; the consent log's export of the
// owner's history verifies with the log's public key alone.
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/sensible-iot/sensible/cloud"
	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/transport"
)

// manifest is the air conditioner's data manifest: its energy readings
// leave for analytics only with the owner's consent, the time to the
// second and the power rounded to 10 W. (Consent is decided at a
// reading's time as the manifest shapes it: with the time coarsened to the
// hour, a withdrawal would stop readings from the next hour on.)
const manifest = `{
  "product": "acme-aircon-x1",
  "version": "2026.11",
  "streams": [
    {
      "name": "energy",
      "description": "how much power the air conditioner used, for energy tips",
      "purposes": ["analytics"],
      "consent": "analytics",
      "fields": [
        {"name": "ts", "type": "timestamp", "category": "device.usage", "transform": {"op": "coarsen_time", "bucket": "1s"}},
        {"name": "watts", "type": "number", "category": "device.sensor.power", "transform": {"op": "round", "step": 10}}
      ],
      "destinations": [{"to": "cloud"}]
    }
  ]
}`

const owner = "subj-demo-7f3a"

func main() {
	readings := flag.Int("readings", 5, "readings the air conditioner records while the owner consents")
	keep := flag.Bool("keep", false, "keep the temporary directory and say where it is")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: go run ./examples/demo [-readings N] [-keep]\n\n%s\n", "Runs a cloud node, an air conditioner and its owner on this machine, on loopback, and prints what happens.")
		flag.PrintDefaults()
	}
	flag.Parse()
	dir, err := os.MkdirTemp("", "sensible-demo")
	if err != nil {
		fail(err)
	}
	if *keep {
		fmt.Println("files in", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout, dir, *readings); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "demo:", err)
	os.Exit(1)
}

// run is the demo, writing its story to w and its files under dir.
func run(ctx context.Context, w io.Writer, dir string, n int) error {
	say := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }

	// The maker signs the manifest with its controller key.
	_, makerKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	maker := consent.TrustedKey{KID: []byte("maker-1"), Key: makerKey.Public(), Role: consent.ControllerKey}
	m, err := policy.Parse([]byte(manifest))
	if err != nil {
		return err
	}
	signed, err := m.Sign(makerKey, maker.KID)
	if err != nil {
		return err
	}
	say("maker:  signed the data manifest of %s", m.Product)

	// The cloud: one node on SQLite, its device listener on DTLS.
	fleet := make([]byte, 32)
	rand.Read(fleet)
	node, err := cloud.New(ctx, cloud.Config{Dir: filepath.Join(dir, "cloud"), FleetSecret: fleet, Controllers: []consent.TrustedKey{maker}})
	if err != nil {
		return err
	}
	defer node.Close()
	st := node.Store()
	if err := st.AddModel(ctx, store.Model{ID: m.Product, Name: "Acme Aircon X1"}); err != nil {
		return err
	}
	if _, err := node.AddManifest(ctx, signed); err != nil {
		return err
	}
	url, err := node.Listen("coaps://127.0.0.1:0")
	if err != nil {
		return err
	}
	say("cloud:  listening on %s (SQLite in %s)", url, filepath.Join(dir, "cloud"))

	// The device from the factory's list, owned by the demo's customer,
	// whose phone app has a key of its own.
	devKey, err := identity.GenerateKey(identity.P256)
	if err != nil {
		return err
	}
	id, err := node.ImportDevice(ctx, cloud.ImportedDevice{Key: devKey.Public(), Model: m.Product})
	if err != nil {
		return err
	}
	if err := st.SetOwner(ctx, id, owner); err != nil {
		return err
	}
	_, appKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	appDER, err := x509.MarshalPKIXPublicKey(appKey.Public())
	if err != nil {
		return err
	}
	if err := st.AddAppKey(ctx, store.AppKey{KID: []byte("app-1"), Subject: owner, PublicKey: appDER, Added: time.Now()}); err != nil {
		return err
	}
	say("cloud:  registered device %s, owned by %s", id, owner)

	// The device's agent: the manifest its maker signed, the keys it
	// trusts for consent, an encrypted outbox, DTLS with its PSK.
	var makers, consentKeys consent.KeySet
	if err := makers.Add(maker); err != nil {
		return err
	}
	for _, k := range []consent.TrustedKey{maker, {KID: []byte("app-1"), Key: appKey.Public(), Role: consent.SubjectKey, Subject: owner}} {
		if err := consentKeys.Add(k); err != nil {
			return err
		}
	}
	psk, err := transport.DerivePSK(fleet, id)
	if err != nil {
		return err
	}
	agent, err := device.New(ctx, device.Config{
		Dir: filepath.Join(dir, "device"), Manifest: signed, Makers: &makers, Key: devKey,
		Owner: owner, ConsentKeys: &consentKeys, URL: url, Transport: transport.ClientConfig{PSK: psk},
	})
	if err != nil {
		return err
	}
	defer agent.Close()
	if err := agent.Start(); err != nil {
		return err
	}
	now := time.Now()
	err = agent.Record(ctx, "energy", policy.Reading{"ts": now, "watts": 1234.5})
	say("device: before any consent, a reading is refused: %v", errors.Is(err, device.ErrNoConsent))

	// The owner consents in the app; the cloud logs it and the device
	// takes it.
	grant := consent.Grant(consent.GrantParams{
		Subject: owner, Controller: "acme", At: now.Add(-2 * time.Hour), Actor: "subject:app",
		Notice:    consent.Notice{ID: "energy-tips", Version: 1, Language: "en", Hash: consent.HashText([]byte("We use your air conditioner's power readings to send you energy tips."))},
		Processes: []consent.Process{{Purpose: "analytics", Categories: []string{"device.usage", "device.sensor.power"}, LegalBasis: "consent", Retention: 365 * 24 * 3600}},
		Devices:   []identity.ID{id},
	})
	history := consent.NewHistory(owner) // the owner's, as the app keeps it
	if err := give(ctx, node, agent, history, grant, appKey); err != nil {
		return err
	}
	say("owner:  gave consent %s for analytics; the cloud logged it", grant.ID)

	for i := range n {
		at := now.Add(-time.Duration(n-i) * time.Minute)
		if err := agent.Record(ctx, "energy", policy.Reading{"ts": at, "watts": 1200 + 17.3*float64(i)}); err != nil {
			return err
		}
	}
	say("device: recorded %d readings; each is durable in the outbox when Record returns", n)
	drain, stop := context.WithTimeout(ctx, 30*time.Second)
	defer stop()
	if err := agent.Drain(drain); err != nil {
		return err
	}
	got, err := st.ListReadings(ctx, store.ReadingQuery{Device: id, Stream: "energy"})
	if err != nil {
		return err
	}
	say("cloud:  stored %d readings", len(got))
	if len(got) > 0 {
		p, err := st.ReadingProvenance(ctx, got[0].ID)
		if err != nil {
			return err
		}
		say("cloud:  reading %d left the device under manifest %x... and consent %s", got[0].ID, p.Manifest[:6], p.Consent)
	}

	// The owner changes their mind.
	withdrawal := consent.Withdraw(grant, time.Now().Truncate(time.Second), "subject:app")
	if err := give(ctx, node, agent, history, withdrawal, appKey); err != nil {
		return err
	}
	err = agent.Record(ctx, "energy", policy.Reading{"ts": time.Now(), "watts": 990.0})
	say("owner:  withdrew it; the device now refuses to record: %v", errors.Is(err, device.ErrNoConsent))

	// The owner's history with the cloud's receipts: anyone with the
	// consent log's public key can check all of it.
	export, err := history.Export(ctx, node.ConsentLog(), node.ConsentLogKey())
	if err != nil {
		return err
	}
	say("export: %d events of %s, verified with the log's key alone: %v", len(export.Events), owner, consent.VerifyExport(ctx, export, node.ConsentLogKey()) == nil)
	return nil
}

// give signs r with the owner's app key and hands it to the cloud, which
// verifies and logs it, to the device, and to the owner's history with the
// cloud's receipt.
func give(ctx context.Context, node *cloud.Node, agent *device.Agent, h *consent.History, r *consent.Record, app ed25519.PrivateKey) error {
	signed, err := consent.Sign(r, app, []byte("app-1"))
	if err != nil {
		return err
	}
	receipt, err := node.AddConsent(ctx, signed)
	if err != nil {
		return err
	}
	if err := agent.AddConsent(ctx, signed); err != nil {
		return err
	}
	v, err := consent.Verify(ctx, node.Keys(), signed)
	if err != nil {
		return err
	}
	if err := h.Add(v); err != nil {
		return err
	}
	return h.SetReceipt(r.ID, receipt, node.ConsentLogKey())
}
