package consent

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/sensible-iot/sensible/device/identity"
)

// exportWorld is a subject's history whose events are logged among other
// subjects' entries, so that their receipts name different checkpoints.
type exportWorld struct {
	*world
	log   *Log
	vkey  string
	store *MemLogStore
	g     *Record
}

func newExportWorld(t *testing.T) *exportWorld {
	ctx := context.Background()
	skey, vkey, _ := note.GenerateKey(rand.Reader, "consent.example/log")
	signer, _ := note.NewSigner(skey)
	st := &MemLogStore{}
	l, err := OpenLog(ctx, st, signer)
	must(t, err)
	w := &exportWorld{world: newWorld(t), log: l, vkey: vkey, store: st}
	others := func(n int) {
		for i := range n {
			_, err := l.Append(ctx, []byte(fmt.Sprintf("someone else's record %d of %d", i, n)))
			must(t, err)
		}
	}
	others(3)
	w.g = Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: pests, At: t0, Actor: "subject:app"})
	w.record(t, w.g)
	others(5)
	w.record(t, Withdraw(w.g, t0.Add(time.Hour), "subject:app"))
	others(2)
	return w
}

// record signs r with the app key, adds it to the history, logs it and
// attaches its receipt.
func (w *exportWorld) record(t *testing.T, r *Record) {
	ctx := context.Background()
	msg, err := Sign(r, w.k.app, []byte("app-1"))
	must(t, err)
	v, err := Verify(ctx, w.k.set, msg)
	must(t, err)
	must(t, w.h.Add(v))
	rc, err := w.log.Append(ctx, msg)
	must(t, err)
	must(t, w.h.SetReceipt(r.ID, rc, w.vkey))
}

func TestExport(t *testing.T) {
	ctx := context.Background()
	w := newExportWorld(t)
	e, err := w.h.Export(ctx, w.log, w.vkey)
	must(t, err)
	if e.Subject != "subj-7f3a" || len(e.Events) != 2 || e.Events[0].Record.Event.State != StateGiven || e.Events[1].Record.Event.State != StateWithdrawn {
		t.Fatalf("export %+v", e)
	}
	if e.Log == nil || e.Log.Origin != "consent.example/log" || e.Log.Key != w.vkey || len(e.Keys) != 1 {
		t.Fatalf("export's log %+v and keys %+v", e.Log, e.Keys)
	}
	// The receipts name different checkpoints (4 and 10 entries), and each
	// has a proof to the newest (12).
	c0, _ := OpenCheckpoint(e.Events[0].Receipt.Checkpoint, w.vkey)
	c1, _ := OpenCheckpoint(e.Events[1].Receipt.Checkpoint, w.vkey)
	latest, _ := OpenCheckpoint(e.Log.Checkpoint, w.vkey)
	if c0.Size != 4 || c1.Size != 10 || latest.Size != 12 || len(e.Events[0].Consistency) == 0 || len(e.Events[1].Consistency) == 0 {
		t.Fatalf("checkpoints %d, %d, newest %d; proofs of %d and %d hashes", c0.Size, c1.Size, latest.Size, len(e.Events[0].Consistency), len(e.Events[1].Consistency))
	}
	// The whole export checks out with the log's public key alone, in
	// CBOR and in JSON.
	must(t, VerifyExport(ctx, e, w.vkey))
	c1b, err := e.CBOR()
	must(t, err)
	again, _ := w.h.Export(ctx, w.log, w.vkey)
	c2b, _ := again.CBOR()
	if !bytes.Equal(c1b, c2b) {
		t.Fatal("CBOR export is not deterministic")
	}
	back, err := ParseExport(c1b)
	must(t, err)
	if len(back.Events) != 2 || back.Events[1].Record.Ends == nil || *back.Events[1].Record.Ends != w.g.ID {
		t.Fatalf("CBOR export decoded to %+v", back)
	}
	must(t, VerifyExport(ctx, back, w.vkey))
	j, err := e.JSON()
	must(t, err)
	if !bytes.Contains(j, []byte(w.g.ID.String())) {
		t.Fatalf("JSON export lacks the record ID in hex:\n%s", j)
	}
	var jback Export
	must(t, json.Unmarshal(j, &jback))
	if jback.Events[0].Record.Notice.Hash != energy.Hash || jback.Events[0].Record.ID != w.g.ID {
		t.Fatal("JSON export does not round-trip IDs and hashes")
	}
	must(t, VerifyExport(ctx, &jback, w.vkey))
	// A nil log: receipts only, which VerifyExport does not take as whole.
	bare, err := w.h.Export(ctx, nil, "")
	must(t, err)
	if bare.Log != nil || bare.Events[0].Consistency != nil || bare.Events[0].Receipt == nil {
		t.Fatalf("export without a log: %+v", bare)
	}
	if err := VerifyExport(ctx, bare, w.vkey); !errors.Is(err, ErrBadCheckpoint) {
		t.Fatalf("export without a log: %v, want ErrBadCheckpoint", err)
	}
}

// TestExportTampered changes an export in each way a dishonest log or
// exporter could, and VerifyExport catches each with a typed error.
func TestExportTampered(t *testing.T) {
	ctx := context.Background()
	w := newExportWorld(t)
	fresh := func() *Export {
		e, err := w.h.Export(ctx, w.log, w.vkey)
		must(t, err)
		b, _ := e.CBOR()
		e, err = ParseExport(b) // a deep copy
		must(t, err)
		return e
	}
	// A fork: a log under the same key that holds the subject's first
	// event but not the withdrawal, shown to someone else. Its checkpoint
	// cannot be proved consistent with the real log's.
	skeyFork := w.log.signer
	fork, err := OpenLog(ctx, &MemLogStore{}, skeyFork)
	must(t, err)
	first, _ := w.h.Export(ctx, nil, "")
	for i := range 3 {
		_, err := fork.Append(ctx, []byte(fmt.Sprintf("a forked history's record %d", i)))
		must(t, err)
	}
	forkReceipt, err := fork.Append(ctx, first.Events[0].Signed)
	must(t, err)
	for i := range 20 {
		_, err := fork.Append(ctx, []byte(fmt.Sprintf("forked entry %d", i)))
		must(t, err)
	}
	forkLatest, err := fork.Checkpoint(ctx)
	must(t, err)
	_, otherVkey, _ := note.GenerateKey(rand.Reader, "consent.example/log")

	for name, c := range map[string]struct {
		change func(e *Export)
		want   error
	}{
		"record bytes changed": {func(e *Export) { e.Events[0].Signed[len(e.Events[0].Signed)-1] ^= 1 }, ErrBadSignature},
		"receipts swapped": {func(e *Export) {
			e.Events[0].Receipt, e.Events[1].Receipt = e.Events[1].Receipt, e.Events[0].Receipt
			e.Events[0].Consistency, e.Events[1].Consistency = e.Events[1].Consistency, e.Events[0].Consistency
		}, ErrBadProof},
		"receipt missing":      {func(e *Export) { e.Events[1].Receipt = nil }, ErrBadProof},
		"consistency missing":  {func(e *Export) { e.Events[0].Consistency = nil }, ErrBadProof},
		"consistency changed":  {func(e *Export) { e.Events[0].Consistency[0][0] ^= 1 }, ErrBadProof},
		"shown record differs": {func(e *Export) { e.Events[0].Record.Event.Actor = "device" }, ErrMalformed},
		"event twice":          {func(e *Export) { e.Events[1] = e.Events[0] }, ErrRecordConflict},
		"signer key missing":   {func(e *Export) { e.Keys = nil }, ErrUnknownKey},
		"another subject":      {func(e *Export) { e.Subject = "subj-other" }, ErrMalformed},
		"log key not trusted":  {func(e *Export) { e.Log.Key = otherVkey }, ErrBadCheckpoint},
		"newest checkpoint from a fork": {func(e *Export) {
			e.Log.Checkpoint = forkLatest.Signed
		}, ErrBadProof},
		"receipt from a fork": {func(e *Export) {
			e.Events[0].Receipt = forkReceipt
		}, ErrBadProof},
		"older newest checkpoint": {func(e *Export) {
			e.Log.Checkpoint = e.Events[0].Receipt.Checkpoint
		}, ErrBadProof},
	} {
		e := fresh()
		c.change(e)
		if err := VerifyExport(ctx, e, w.vkey); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	if err := VerifyExport(ctx, fresh(), otherVkey); !errors.Is(err, ErrBadCheckpoint) {
		t.Errorf("verified with another log's key: %v, want ErrBadCheckpoint", err)
	}
	must(t, VerifyExport(ctx, fresh(), w.vkey))
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
	signer, _ := note.NewSigner(skey)
	l, err := OpenLog(ctx, &MemLogStore{}, signer)
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
	r1again, err := l.Append(ctx, first) // the app's retry, logged again
	must(t, err)
	if r1again.Index != r1.Index {
		t.Fatalf("the same bytes logged again at %d, first at %d", r1again.Index, r1.Index)
	}
	must(t, VerifyReceipt(r1again, first, vkey))
	r2, err := l.Append(ctx, again)
	must(t, err)
	if err := h.SetReceipt(g.ID, r2, vkey); !errors.Is(err, ErrBadProof) {
		t.Fatalf("receipt of the re-signed bytes: %v, want ErrBadProof", err)
	}
	if err := h.SetReceipt(NewID(), r1, vkey); !errors.Is(err, ErrUnknownRecord) {
		t.Fatalf("receipt for an unknown record: %v, want ErrUnknownRecord", err)
	}
	must(t, h.SetReceipt(g.ID, r1, vkey))
	e, err := h.Export(ctx, l, vkey)
	must(t, err)
	must(t, VerifyExport(ctx, e, vkey))
	if len(e.Events) != 1 || !bytes.Equal(e.Events[0].Signed, first) {
		t.Fatal("the export does not hold the first bytes")
	}
	if err := VerifyReceipt(e.Events[0].Receipt, e.Events[0].Signed, vkey); err != nil {
		t.Fatalf("exported receipt: %v", err)
	}
}
