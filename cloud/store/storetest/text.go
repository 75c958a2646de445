package storetest

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/protocol"
)

// tricky are texts that mean something to SQL, to a driver or to a
// terminal. Every text field must keep them as they are.
var tricky = []string{
	"it's",
	"''",
	`"double" and \back\slash`,
	"'; DROP TABLE devices; --",
	"x' OR '1'='1",
	"$1 ? ?1 :name @p %s %% _",
	"/* comment */ -- not one",
	"żółć 日本語 🙂 e\u0301",
	"\u202eright to left\u202c",
	"new\nline\ttab\rreturn",
	" leading and trailing ",
	"\u00a0\ufeff",
	strings.Repeat("long ", 2000),
}

// bad are texts no text field takes.
var bad = []string{"nul\x00byte", "\xff\xfe not UTF-8", "\x00"}

// testText stores each tricky text in every text field and reads it
// back.
func testText(t *testing.T, s store.Store) {
	ctx := t.Context()
	for i, text := range tricky {
		m := store.Model{ID: text, Name: text}
		ok(t, s.AddModel(ctx, m), "AddModel")
		got, err := s.Model(ctx, text)
		ok(t, err, "Model")
		same(t, got, m, "Model")

		w := &world{s: s, model: text, manifest: hashOf("manifest " + text)}
		w.addManifest(t, w.manifest)
		list, err := s.ListManifests(ctx, text)
		ok(t, err, "ListManifests")
		if len(list) != 1 || list[0].Model != text {
			t.Fatalf("ListManifests(%q): %+v", text, list)
		}

		d := store.Device{ID: newID(), PublicKey: pkix, Model: text, Owner: text, StandingReason: text, Created: t0}
		ok(t, s.CreateDevice(ctx, d), "CreateDevice")
		w.device = d.ID
		ok(t, s.SetStanding(ctx, d.ID, store.Suspended, text+" again", t0), "SetStanding")
		ok(t, s.SetOwner(ctx, d.ID, text+"2"), "SetOwner")
		dev, err := s.Device(ctx, d.ID)
		ok(t, err, "Device")
		if dev.Model != text || dev.Owner != text+"2" || dev.StandingReason != text+" again" {
			t.Fatalf("Device: model %q owner %q reason %q", dev.Model, dev.Owner, dev.StandingReason)
		}
		byOwner, err := s.ListDevicesByOwner(ctx, text+"2", store.Page{})
		ok(t, err, "ListDevicesByOwner")
		byModel, err := s.ListDevicesByModel(ctx, text, store.Page{})
		ok(t, err, "ListDevicesByModel")
		if len(byOwner) != 1 || byOwner[0].ID != d.ID || len(byModel) != 1 || byModel[0].ID != d.ID {
			t.Fatalf("devices listed by owner %q: %d, by model: %d", text+"2", len(byOwner), len(byModel))
		}

		k := store.AppKey{KID: []byte(text + "\x00kid"), Subject: text, PublicKey: pkix, Added: t0}
		ok(t, s.AddAppKey(ctx, k), "AddAppKey")
		key, err := s.AppKey(ctx, k.KID)
		ok(t, err, "AppKey")
		same(t, key, k, "AppKey")
		keys, err := s.ListAppKeys(ctx, text)
		ok(t, err, "ListAppKeys")
		same(t, keys, []store.AppKey{k}, "ListAppKeys")

		r, err := s.StoreBatch(ctx, w.batch(text, 1, 2))
		ok(t, err, "StoreBatch")
		rs := w.readings(t, text)
		if len(rs) != 2 {
			t.Fatalf("%d readings of stream %q, want 2", len(rs), text)
		}
		p, err := s.ReadingProvenance(ctx, rs[0].ID)
		ok(t, err, "ReadingProvenance")
		if p.Stream != text || p.Batch != r.ID {
			t.Fatalf("ReadingProvenance: stream %q, batch %d", p.Stream, p.Batch)
		}
		n, err := s.DeleteReadings(ctx, store.Retention{Manifest: w.manifest, Stream: text, Before: at(time.Hour)})
		ok(t, err, "DeleteReadings")
		same(t, n, int64(2), "readings deleted")

		inc := store.Incident{Device: d.ID, Time: t0, Kind: text, Detail: text}
		inc.ID, err = s.RecordIncident(ctx, inc)
		ok(t, err, "RecordIncident")
		incs, err := s.ListIncidents(ctx, d.ID, t0, 0)
		ok(t, err, "ListIncidents")
		same(t, incs, []store.Incident{inc}, "ListIncidents")

		c := store.Command{ID: protocol.CommandID{byte(i)}, Device: d.ID, Name: text, Created: t0}
		ok(t, s.EnqueueCommand(ctx, c), "EnqueueCommand")
		cmd, err := s.Command(ctx, d.ID, c.ID)
		ok(t, err, "Command")
		same(t, cmd.Name, text, "command name")

		// Claimants that differ only in quoting are counted apart.
		for _, claimant := range []string{text, text + "'"} {
			n, err := s.RecordClaimAttempt(ctx, store.ClaimAttempt{Device: d.ID, Claimant: claimant, At: t0, Window: time.Hour})
			ok(t, err, "RecordClaimAttempt")
			same(t, n.Claimant, int64(1), "attempts of claimant "+claimant)
		}
	}
	models, err := s.ListModels(ctx)
	ok(t, err, "ListModels")
	var ids []string
	for _, m := range models {
		ids = append(ids, m.ID)
	}
	want := slices.Clone(tricky)
	slices.Sort(want)
	slices.Sort(ids) // the database's collation need not be Go's
	same(t, ids, want, "model IDs")
}

// testBadText checks that every text field refuses what it cannot keep
// the same way in every database.
func testBadText(t *testing.T, s store.Store) {
	ctx := t.Context()
	w := newWorld(t, s)
	for _, text := range bad {
		for what, err := range map[string]error{
			"AddModel ID":        s.AddModel(ctx, store.Model{ID: text}),
			"AddModel name":      s.AddModel(ctx, store.Model{ID: "ok", Name: text}),
			"CreateDevice":       s.CreateDevice(ctx, store.Device{ID: newID(), PublicKey: pkix, Model: w.model, Owner: text, Created: t0}),
			"SetOwner":           s.SetOwner(ctx, w.device, text),
			"SetStanding":        s.SetStanding(ctx, w.device, store.Active, text, t0),
			"AddAppKey":          s.AddAppKey(ctx, store.AppKey{KID: []byte("k"), Subject: text, PublicKey: pkix, Added: t0}),
			"EnqueueCommand":     s.EnqueueCommand(ctx, store.Command{ID: protocol.CommandID{1}, Device: w.device, Name: text, Created: t0}),
			"StoreBatch":         second(s.StoreBatch(ctx, w.batch(text, 1, 1))),
			"RecordIncident":     second(s.RecordIncident(ctx, store.Incident{Device: w.device, Time: t0, Kind: text})),
			"incident detail":    second(s.RecordIncident(ctx, store.Incident{Device: w.device, Time: t0, Kind: "k", Detail: text})),
			"RecordClaimAttempt": second(s.RecordClaimAttempt(ctx, store.ClaimAttempt{Device: w.device, Claimant: text, At: t0, Window: time.Hour})),
		} {
			is(t, err, store.ErrInvalid, what+" of "+strings.ToValidUTF8(text, "?"))
		}
	}
	dev, err := s.Device(ctx, w.device)
	ok(t, err, "Device")
	if dev.Owner != "" || dev.StandingReason != "" {
		t.Fatalf("refused text stored: %+v", dev)
	}
}

// second returns its second argument.
func second[T any](_ T, err error) error { return err }
