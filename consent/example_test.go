package consent_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/device/identity"
)

// A customer lets a robot vacuum tell a pest-control partner about
// cockroaches, then withdraws; both events are proved to be in the
// consent log, and the log is shown to have only grown.
func Example() {
	ctx := context.Background()
	t0 := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)

	// The customer's app key is trusted to sign for the subject.
	appKey, _ := identity.GenerateKey(identity.P256)
	keys := &consent.KeySet{}
	keys.Add(consent.TrustedKey{KID: []byte("app-1"), Key: appKey.Public(), Role: consent.SubjectKey, Subject: "subj-7f3a"})

	// The cloud's consent log.
	dir, _ := os.MkdirTemp("", "consent")
	defer os.RemoveAll(dir)
	skey, vkey, _ := note.GenerateKey(rand.Reader, "consent.acme.example")
	store, _ := consent.OpenFileLogStore(filepath.Join(dir, "consent.log"))
	defer store.Close()
	signer, _ := note.NewSigner(skey)
	log, _ := consent.OpenLog(ctx, store, signer)
	history := consent.NewHistory("subj-7f3a")

	// record signs an event in the app, then verifies, logs and applies it
	// in the cloud. Giving and withdrawing take the same steps.
	record := func(r *consent.Record) *consent.Receipt {
		msg, err := consent.Sign(r, appKey, []byte("app-1"))
		if err != nil {
			panic(err)
		}
		v, err := consent.Verify(context.Background(), keys, msg)
		if err != nil {
			panic(err)
		}
		if err := history.Add(v); err != nil {
			panic(err)
		}
		receipt, err := log.Append(ctx, msg)
		if err != nil {
			panic(err)
		}
		if err := history.SetReceipt(r.ID, receipt, vkey); err != nil {
			panic(err) // the receipt does not prove these bytes
		}
		fmt.Printf("%s: logged at index %d\n", r.Event.State, receipt.Index)
		return receipt
	}

	notice := consent.Notice{ID: "pest-alerts", Version: 1, Language: "en", Hash: consent.HashText([]byte("We tell PestCo when your vacuum sees pests."))}
	grant := consent.Grant(consent.GrantParams{
		Subject: "subj-7f3a", Controller: "acme", Notice: notice,
		Processes: []consent.Process{{
			Purpose: "pest-alerts", Categories: []string{"device.sensor.camera.pest"},
			Recipients: []string{"pestco"}, LegalBasis: "consent",
		}},
		At: t0, Actor: "subject:app",
	})
	first := record(grant)

	q := consent.Query{Purpose: "pest-alerts", Category: "device.sensor.camera.pest", At: t0.Add(time.Hour)}
	fmt.Println("process:", history.Decide(q).Reason)
	q.Recipient = "pestco"
	fmt.Println("share with pestco:", history.Decide(q).Reason)

	second := record(consent.Withdraw(grant, t0.Add(2*time.Hour), "subject:app"))
	q.At = t0.Add(3 * time.Hour)
	d := history.Decide(q)
	fmt.Println("share after withdrawal:", d.Allowed, d.Reason)

	// Both events are in the log as of the latest checkpoint, and the log
	// only grew between the two checkpoints.
	older, _ := consent.OpenCheckpoint(first.Checkpoint, vkey)
	newer, _ := consent.OpenCheckpoint(second.Checkpoint, vkey)
	for _, r := range []*consent.Receipt{first, second} {
		proof, _ := log.Prove(ctx, r.Index, newer.Size)
		entry, _ := store.Entry(ctx, r.Index)
		now := &consent.Receipt{Index: r.Index, Proof: proof, Checkpoint: second.Checkpoint}
		fmt.Printf("event %d in the log of %d: %v\n", r.Index, newer.Size, consent.VerifyReceipt(now, entry, vkey) == nil)
	}
	proof, _ := log.ProveConsistency(ctx, older.Size, newer.Size)
	fmt.Println("log grew from", older.Size, "to", newer.Size, "consistently:", consent.VerifyConsistency(older, newer, proof) == nil)

	// The subject's export: every event as signed, its receipt, and a
	// proof that each receipt is from the history the newest checkpoint
	// commits to. The log's public key alone checks it.
	export, _ := history.Export(ctx, log, vkey)
	data, _ := export.CBOR()
	received, _ := consent.ParseExport(data)
	fmt.Println("export of", len(received.Events), "events verifies:", consent.VerifyExport(ctx, received, vkey) == nil)
	// Output:
	// given: logged at index 0
	// process: granted
	// share with pestco: granted
	// withdrawn: logged at index 1
	// share after withdrawal: false withdrawn
	// event 0 in the log of 2: true
	// event 1 in the log of 2: true
	// log grew from 1 to 2 consistently: true
	// export of 2 events verifies: true
}
