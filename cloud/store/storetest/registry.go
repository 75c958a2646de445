package storetest

import (
	"slices"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/protocol"
)

func testModels(t *testing.T, s store.Store) {
	ctx := t.Context()
	m1, m2 := store.Model{ID: "m1", Name: "Model One"}, store.Model{ID: "m2"}
	ok(t, s.AddModel(ctx, m2), "AddModel")
	ok(t, s.AddModel(ctx, m1), "AddModel")
	is(t, s.AddModel(ctx, store.Model{ID: "m2", Name: "other"}), store.ErrConflict, "AddModel of a taken ID")
	is(t, s.AddModel(ctx, store.Model{Name: "no ID"}), store.ErrInvalid, "AddModel without an ID")
	got, err := s.Model(ctx, "m1")
	ok(t, err, "Model")
	same(t, got, m1, "Model")
	got, err = s.Model(ctx, "m2")
	ok(t, err, "Model")
	same(t, got, m2, "Model after a refused AddModel")
	_, err = s.Model(ctx, "m3")
	is(t, err, store.ErrNotFound, "Model of an unknown ID")
	list, err := s.ListModels(ctx)
	ok(t, err, "ListModels")
	same(t, list, []store.Model{m1, m2}, "ListModels")
}

func testManifests(t *testing.T, s store.Store) {
	ctx := t.Context()
	ok(t, s.AddModel(ctx, store.Model{ID: "m"}), "AddModel")
	ok(t, s.AddModel(ctx, store.Model{ID: "empty"}), "AddModel")
	newer := store.Manifest{Hash: hashOf("newer"), Model: "m", Signed: []byte{0xd2, 0x84, 0x00, 0xff, 0x00}, Added: at(time.Hour)}
	older := store.Manifest{Hash: hashOf("older"), Model: "m", Signed: []byte("signed"), Added: t0}
	is(t, s.AddManifest(ctx, store.Manifest{Hash: hashOf("x"), Model: "nope", Signed: []byte("s"), Added: t0}), store.ErrNotFound, "AddManifest for an unknown model")
	ok(t, s.AddManifest(ctx, newer), "AddManifest")
	ok(t, s.AddManifest(ctx, older), "AddManifest")
	is(t, s.AddManifest(ctx, store.Manifest{Hash: newer.Hash, Model: "m", Signed: []byte("other"), Added: t0}), store.ErrConflict, "AddManifest of a taken hash")
	for _, bad := range []store.Manifest{
		{Model: "m", Signed: []byte("s"), Added: t0},
		{Hash: hashOf("y"), Model: "m", Added: t0},
		{Hash: hashOf("y"), Model: "m", Signed: []byte("s")},
		{Hash: hashOf("y"), Signed: []byte("s"), Added: t0},
	} {
		is(t, s.AddManifest(ctx, bad), store.ErrInvalid, "AddManifest of an incomplete manifest")
	}
	got, err := s.Manifest(ctx, newer.Hash)
	ok(t, err, "Manifest")
	same(t, got, newer, "Manifest")
	_, err = s.Manifest(ctx, hashOf("y"))
	is(t, err, store.ErrNotFound, "Manifest of an unknown hash")
	list, err := s.ListManifests(ctx, "m")
	ok(t, err, "ListManifests")
	same(t, list, []store.Manifest{older, newer}, "ListManifests")
	list, err = s.ListManifests(ctx, "empty")
	ok(t, err, "ListManifests")
	same(t, len(list), 0, "manifests of a model without any")
	got, err = s.NewestManifest(ctx, "m")
	ok(t, err, "NewestManifest")
	same(t, got, newer, "NewestManifest")
	_, err = s.NewestManifest(ctx, "empty")
	is(t, err, store.ErrNotFound, "NewestManifest of a model without any")
}

func testDevices(t *testing.T, s store.Store) {
	ctx := t.Context()
	ok(t, s.AddModel(ctx, store.Model{ID: "m"}), "AddModel")
	d := store.Device{
		ID:        newID(),
		PublicKey: pkix,
		Chain:     [][]byte{{0x30, 0x82, 0x00, 0x01}, {0x30, 0x00, 0xff}},
		Model:     "m",
		Created:   t0,
	}
	ok(t, s.CreateDevice(ctx, d), "CreateDevice")
	want := d
	want.Standing, want.StandingSince = store.Active, t0
	got, err := s.Device(ctx, d.ID)
	ok(t, err, "Device")
	same(t, got, want, "Device")

	is(t, s.CreateDevice(ctx, store.Device{ID: d.ID, PublicKey: []byte{1}, Model: "m", Created: t0}), store.ErrConflict, "CreateDevice of a taken ID")
	is(t, s.CreateDevice(ctx, store.Device{ID: newID(), PublicKey: pkix, Model: "nope", Created: t0}), store.ErrNotFound, "CreateDevice of an unknown model")
	for _, bad := range []store.Device{
		{PublicKey: pkix, Model: "m", Created: t0},
		{ID: newID(), Model: "m", Created: t0},
		{ID: newID(), PublicKey: pkix, Created: t0},
		{ID: newID(), PublicKey: pkix, Model: "m"},
		{ID: newID(), PublicKey: pkix, Model: "m", Created: t0, Standing: 9},
	} {
		is(t, s.CreateDevice(ctx, bad), store.ErrInvalid, "CreateDevice of an incomplete device")
	}
	_, err = s.Device(ctx, newID())
	is(t, err, store.ErrNotFound, "Device of an unknown ID")

	// A device without certificates, created suspended with a reason.
	psk := store.Device{ID: newID(), PublicKey: pkix, Model: "m", Owner: "alice", Standing: store.Suspended,
		StandingReason: "returned", StandingSince: at(-time.Hour), Created: t0}
	ok(t, s.CreateDevice(ctx, psk), "CreateDevice")
	got, err = s.Device(ctx, psk.ID)
	ok(t, err, "Device")
	same(t, got, psk, "Device without certificates")

	ok(t, s.SetStanding(ctx, d.ID, store.Suspended, "flooding", at(time.Minute)), "SetStanding")
	got, _ = s.Device(ctx, d.ID)
	if got.Standing != store.Suspended || got.StandingReason != "flooding" || !got.StandingSince.Equal(at(time.Minute)) {
		t.Fatalf("after SetStanding: %v %q %v", got.Standing, got.StandingReason, got.StandingSince)
	}
	ok(t, s.SetStanding(ctx, d.ID, store.Active, "", at(2*time.Minute)), "SetStanding")
	ok(t, s.SetStanding(ctx, d.ID, store.Decommissioned, "scrapped", at(3*time.Minute)), "SetStanding")
	is(t, s.SetStanding(ctx, d.ID, store.Active, "", at(4*time.Minute)), store.ErrConflict, "SetStanding of a decommissioned device")
	got, _ = s.Device(ctx, d.ID)
	if got.Standing != store.Decommissioned || got.StandingReason != "scrapped" {
		t.Fatalf("a refused SetStanding changed the device: %v %q", got.Standing, got.StandingReason)
	}
	is(t, s.SetStanding(ctx, newID(), store.Active, "", t0), store.ErrNotFound, "SetStanding of an unknown device")
	is(t, s.SetStanding(ctx, psk.ID, 0, "", t0), store.ErrInvalid, "SetStanding to no standing")
	is(t, s.SetStanding(ctx, psk.ID, store.Active, "", time.Time{}), store.ErrInvalid, "SetStanding without a time")

	ok(t, s.SetOwner(ctx, psk.ID, "bob"), "SetOwner")
	got, _ = s.Device(ctx, psk.ID)
	same(t, got.Owner, "bob", "owner after SetOwner")
	ok(t, s.SetOwner(ctx, psk.ID, ""), "SetOwner")
	got, _ = s.Device(ctx, psk.ID)
	same(t, got.Owner, "", "owner after SetOwner to nobody")
	is(t, s.SetOwner(ctx, newID(), "bob"), store.ErrNotFound, "SetOwner of an unknown device")
}

func testDevicePages(t *testing.T, s store.Store) {
	ctx := t.Context()
	ok(t, s.AddModel(ctx, store.Model{ID: "m"}), "AddModel")
	ok(t, s.AddModel(ctx, store.Model{ID: "n"}), "AddModel")
	byOwner := map[string][]identity.ID{}
	byModel := map[string][]identity.ID{}
	for i := range 12 {
		id := newID()
		owner, model := []string{"alice", "bob", ""}[i%3], []string{"m", "n"}[i%2]
		ok(t, s.CreateDevice(ctx, store.Device{ID: id, PublicKey: pkix, Model: model, Created: t0}), "CreateDevice")
		if owner != "" {
			ok(t, s.SetOwner(ctx, id, owner), "SetOwner")
		}
		byOwner[owner] = append(byOwner[owner], id)
		byModel[model] = append(byModel[model], id)
	}
	pages := func(list func(store.Page) ([]store.Device, error), size int) []identity.ID {
		var ids []identity.ID
		var p store.Page
		p.Limit = size
		for range 20 {
			page, err := list(p)
			ok(t, err, "listing devices")
			if size > 0 && len(page) > size {
				t.Fatalf("a page of %d devices, limit %d", len(page), size)
			}
			if len(page) == 0 {
				return ids
			}
			for _, d := range page {
				ids = append(ids, d.ID)
			}
			p.After = page[len(page)-1].ID
		}
		t.Fatal("listing devices does not end")
		return nil
	}
	sorted := func(ids []identity.ID) []identity.ID {
		ids = slices.Clone(ids)
		slices.SortFunc(ids, func(a, b identity.ID) int { return slices.Compare(a[:], b[:]) })
		return ids
	}
	for owner, want := range byOwner {
		for _, size := range []int{1, 3, 0} {
			got := pages(func(p store.Page) ([]store.Device, error) { return s.ListDevicesByOwner(ctx, owner, p) }, size)
			same(t, got, sorted(want), "devices of owner "+owner)
		}
	}
	for model, want := range byModel {
		got := pages(func(p store.Page) ([]store.Device, error) { return s.ListDevicesByModel(ctx, model, p) }, 5)
		same(t, got, sorted(want), "devices of model "+model)
	}
	none, err := s.ListDevicesByOwner(ctx, "carol", store.Page{})
	ok(t, err, "ListDevicesByOwner")
	same(t, len(none), 0, "devices of an owner without any")
}

func testAppKeys(t *testing.T, s store.Store) {
	ctx := t.Context()
	k1 := store.AppKey{KID: []byte("k1"), Subject: "alice", PublicKey: pkix, Added: t0}
	k2 := store.AppKey{KID: []byte{0, 0xff, 'k', 2}, Subject: "alice", PublicKey: []byte{0x30, 1}, Added: at(time.Second)}
	k3 := store.AppKey{KID: []byte("k3"), Subject: "bob", PublicKey: pkix, Added: t0}
	for _, k := range []store.AppKey{k2, k1, k3} {
		ok(t, s.AddAppKey(ctx, k), "AddAppKey")
	}
	is(t, s.AddAppKey(ctx, store.AppKey{KID: []byte("k1"), Subject: "bob", PublicKey: pkix, Added: t0}), store.ErrConflict, "AddAppKey of a taken key ID")
	for _, bad := range []store.AppKey{
		{Subject: "alice", PublicKey: pkix, Added: t0},
		{KID: []byte("k4"), PublicKey: pkix, Added: t0},
		{KID: []byte("k4"), Subject: "alice", Added: t0},
		{KID: []byte("k4"), Subject: "alice", PublicKey: pkix},
	} {
		is(t, s.AddAppKey(ctx, bad), store.ErrInvalid, "AddAppKey of an incomplete key")
	}
	got, err := s.AppKey(ctx, k2.KID)
	ok(t, err, "AppKey")
	same(t, got, k2, "AppKey")
	_, err = s.AppKey(ctx, []byte("k4"))
	is(t, err, store.ErrNotFound, "AppKey of an unknown key ID")
	list, err := s.ListAppKeys(ctx, "alice")
	ok(t, err, "ListAppKeys")
	same(t, list, []store.AppKey{k1, k2}, "ListAppKeys")

	ok(t, s.RemoveAppKey(ctx, k1.KID, at(time.Hour)), "RemoveAppKey")
	_, err = s.AppKey(ctx, k1.KID)
	is(t, err, store.ErrNotFound, "AppKey of a removed key")
	is(t, s.RemoveAppKey(ctx, k1.KID, at(2*time.Hour)), store.ErrNotFound, "RemoveAppKey of a removed key")
	is(t, s.RemoveAppKey(ctx, []byte("k4"), at(time.Hour)), store.ErrNotFound, "RemoveAppKey of an unknown key")
	is(t, s.RemoveAppKey(ctx, k2.KID, time.Time{}), store.ErrInvalid, "RemoveAppKey without a time")
	is(t, s.AddAppKey(ctx, k1), store.ErrConflict, "AddAppKey of a removed key's ID")
	list, err = s.ListAppKeys(ctx, "alice")
	ok(t, err, "ListAppKeys")
	same(t, list, []store.AppKey{k2}, "ListAppKeys after RemoveAppKey")
}

// A manifest hash that no test registers.
var unknownManifest = protocol.Hash{0xde, 0xad}
