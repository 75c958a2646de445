package consent

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/sensible-iot/sensible/internal/codec"
)

func TestExport(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	skey, vkey, _ := note.GenerateKey(rand.Reader, "consent.example/log")
	signer, _ := note.NewSigner(skey)
	l, _ := OpenLog(ctx, &MemLogStore{}, signer)
	add := func(r *Record) {
		msg, err := Sign(r, w.k.app, []byte("app-1"))
		must(t, err)
		v, err := w.k.set.Verify(msg)
		must(t, err)
		must(t, w.h.Add(v))
		rc, err := l.Append(ctx, msg)
		must(t, err)
		w.h.SetReceipt(r.ID, rc)
	}
	g := Grant("subj-7f3a", "acme", energy, pests, t0, "subject:app")
	add(g)
	add(Withdraw(g, t0.Add(time.Hour), "subject:app"))

	e := w.h.Export()
	if e.Subject != "subj-7f3a" || len(e.Events) != 2 || e.Events[0].Record.Event.State != Given || e.Events[1].Record.Event.State != Withdrawn {
		t.Fatalf("export %+v", e)
	}
	// Every exported event checks out on its own: signature and receipt.
	for _, ev := range e.Events {
		v, err := w.k.set.Verify(ev.Signed)
		if err != nil || v.Record.ID != ev.Record.ID {
			t.Fatalf("exported event does not verify: %v", err)
		}
		if err := VerifyReceipt(ev.Receipt, ev.Signed, vkey); err != nil {
			t.Fatalf("exported receipt: %v", err)
		}
	}
	// CBOR: deterministic, and decodes back to the same events.
	c1, err := e.CBOR()
	must(t, err)
	c2, _ := w.h.Export().CBOR()
	if !bytes.Equal(c1, c2) {
		t.Fatal("CBOR export is not deterministic")
	}
	var back Export
	dec, _ := codec.NewDecoder(codec.Limits{MaxBody: 1 << 20})
	must(t, dec.Unmarshal(c1, &back))
	if len(back.Events) != 2 || back.Events[1].Record.Ends == nil || *back.Events[1].Record.Ends != g.ID {
		t.Fatalf("CBOR export decoded to %+v", back)
	}
	if err := VerifyReceipt(back.Events[1].Receipt, back.Events[1].Signed, vkey); err != nil {
		t.Fatalf("receipt from decoded CBOR export: %v", err)
	}
	// JSON: readable (IDs and hashes in hex), and the same content.
	j, err := e.JSON()
	must(t, err)
	if !bytes.Contains(j, []byte(`"id": "`+g.ID.String()+`"`)) && !bytes.Contains(j, []byte(g.ID.String())) {
		t.Fatalf("JSON export lacks the record ID in hex:\n%s", j)
	}
	var jback Export
	must(t, json.Unmarshal(j, &jback))
	if jback.Events[0].Record.Notice.Hash != energy.Hash || jback.Events[0].Record.ID != g.ID {
		t.Fatal("JSON export does not round-trip IDs and hashes")
	}
	if err := VerifyReceipt(jback.Events[0].Receipt, jback.Events[0].Signed, vkey); err != nil {
		t.Fatalf("receipt from JSON export: %v", err)
	}
}
