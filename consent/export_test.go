package consent

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
)

func TestExport(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	skey, vkey, _ := note.GenerateKey(rand.Reader, "consent.example/log")
	l, _ := OpenLog(ctx, &MemLogStore{}, skey)
	add := func(r *Record) {
		msg, err := Sign(r, w.k.app, []byte("app-1"))
		must(t, err)
		v, err := Verify(context.Background(), w.k.set, msg)
		must(t, err)
		must(t, w.h.Add(v))
		rc, err := l.Append(ctx, msg)
		must(t, err)
		must(t, w.h.SetReceipt(r.ID, rc, vkey))
	}
	g := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: pests, At: t0, Actor: "subject:app"})
	add(g)
	add(Withdraw(g, t0.Add(time.Hour), "subject:app"))

	e := w.h.Export()
	if e.Subject != "subj-7f3a" || len(e.Events) != 2 || e.Events[0].Record.Event.State != StateGiven || e.Events[1].Record.Event.State != StateWithdrawn {
		t.Fatalf("export %+v", e)
	}
	// Every exported event checks out on its own: signature and receipt.
	for _, ev := range e.Events {
		v, err := Verify(context.Background(), w.k.set, ev.Signed)
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

// TestHistoryRetry: an app that retries with the same bytes changes
// nothing; one that signs the record again (same ID, new bytes: ECDSA
// signatures differ each time) gets ErrRecordConflict, the history keeps
// the first bytes, and a receipt for the second bytes is refused, so the
// export pairs the first bytes with their own receipt.
func TestHistoryRetry(t *testing.T) {
	ctx := context.Background()
	k := newKeyring(t, identity.P256)
	h := NewHistory("subj-7f3a")
	skey, vkey, _ := note.GenerateKey(rand.Reader, "consent.example/log")
	l, err := OpenLog(ctx, &MemLogStore{}, skey)
	must(t, err)
	g := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: pests, At: t0, Actor: "subject:app"})
	first, err := Sign(g, k.app, []byte("app-1"))
	must(t, err)
	again, err := Sign(g, k.app, []byte("app-1"))
	must(t, err)
	if bytes.Equal(first, again) {
		t.Fatal("two ECDSA signatures of one record came out equal")
	}
	v1, err := Verify(ctx, k.set, first)
	must(t, err)
	v2, err := Verify(ctx, k.set, again)
	must(t, err)

	must(t, h.Add(v1))
	must(t, h.Add(v1)) // the same bytes again: a no-op
	if err := h.Add(v2); !errors.Is(err, ErrRecordConflict) {
		t.Fatalf("re-signed record: %v, want ErrRecordConflict", err)
	}
	r1, err := l.Append(ctx, first)
	must(t, err)
	r2, err := l.Append(ctx, again)
	must(t, err)
	if err := h.SetReceipt(g.ID, r2, vkey); !errors.Is(err, ErrBadProof) {
		t.Fatalf("receipt of the re-signed bytes: %v, want ErrBadProof", err)
	}
	if err := h.SetReceipt(NewID(), r1, vkey); !errors.Is(err, ErrUnknownRecord) {
		t.Fatalf("receipt for an unknown record: %v, want ErrUnknownRecord", err)
	}
	must(t, h.SetReceipt(g.ID, r1, vkey))
	e := h.Export()
	if len(e.Events) != 1 || !bytes.Equal(e.Events[0].Signed, first) {
		t.Fatal("the export does not hold the first bytes")
	}
	if err := VerifyReceipt(e.Events[0].Receipt, e.Events[0].Signed, vkey); err != nil {
		t.Fatalf("exported receipt: %v", err)
	}
}
