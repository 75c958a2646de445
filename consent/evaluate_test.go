package consent

import (
	"context"
	"crypto"
	"errors"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/device/identity"
)

type world struct {
	k *keyring
	h *History
}

func newWorld(t testing.TB) *world {
	return &world{k: newKeyring(t, identity.Ed25519), h: NewHistory("subj-7f3a")}
}

// add signs r with signer under kid, verifies it and adds it.
func (w *world) add(t testing.TB, r *Record, signer crypto.Signer, kid string) error {
	t.Helper()
	msg, err := Sign(r, signer, []byte(kid))
	if err != nil {
		t.Fatal(err)
	}
	v, err := Verify(context.Background(), w.k.set, msg)
	if err != nil {
		t.Fatal(err)
	}
	return w.h.Add(v)
}

var (
	energy = Notice{ID: "energy", Version: 3, Language: "en", Hash: HashText([]byte(noticeText))}
	pests  = []Process{{Purpose: "pest-alerts", Categories: []string{"device.sensor.camera.pest"}, Recipients: []string{"pestco"}, LegalBasis: "consent"}}
)

func TestDecide(t *testing.T) {
	w := newWorld(t)
	g := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: pests, At: t0, Actor: "subject:app"})
	if err := w.add(t, g, w.k.app, "app-1"); err != nil {
		t.Fatal(err)
	}
	q := Query{Purpose: "pest-alerts", Category: "device.sensor.camera.pest", At: t0.Add(time.Hour)}
	check := func(name string, q Query, allowed bool, reason Reason, rec ID) {
		t.Helper()
		d := w.h.Decide(q)
		if d.Allowed != allowed || d.Reason != reason || d.Record != rec {
			t.Errorf("%s: %+v, want allowed=%v reason=%v record=%s", name, d, allowed, reason, rec)
		}
	}
	check("granted", q, true, ReasonGranted, g.ID)
	qp := q
	qp.Recipient = "pestco"
	check("shared with the named partner", qp, true, ReasonGranted, g.ID)
	qo := q
	qo.Recipient = "grocer"
	check("another partner", qo, false, ReasonNoConsent, ID{})
	qc := q
	qc.Category = "device.sensor.camera.frame"
	check("another category", qc, false, ReasonNoConsent, ID{})
	qb := q
	qb.At = t0.Add(-time.Hour)
	check("before the grant", qb, false, ReasonNotYetValid, g.ID)

	wd := Withdraw(g, t0.Add(2*time.Hour), "subject:app")
	if err := w.add(t, wd, w.k.app, "app-1"); err != nil {
		t.Fatal(err)
	}
	qa := q
	qa.At = t0.Add(3 * time.Hour)
	check("after withdrawal", qa, false, ReasonWithdrawn, wd.ID)
	check("before withdrawal, still allowed", q, true, ReasonGranted, g.ID)

	// Given again later: the latest event wins.
	g2 := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: pests, At: t0.Add(4 * time.Hour), Actor: "subject:app"})
	if err := w.add(t, g2, w.k.app, "app-1"); err != nil {
		t.Fatal(err)
	}
	qa.At = t0.Add(5 * time.Hour)
	check("given again", qa, true, ReasonGranted, g2.ID)
	// The controller revokes it.
	rv := Revoke(g2, t0.Add(6*time.Hour), "controller")
	if err := w.add(t, rv, w.k.ctrl, "ctrl-1"); err != nil {
		t.Fatal(err)
	}
	qa.At = t0.Add(7 * time.Hour)
	check("revoked", qa, false, ReasonRevoked, rv.ID)
}

func TestDecideExpiryRefusalNotice(t *testing.T) {
	w := newWorld(t)
	g := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: pests, At: t0, Actor: "subject:app"})
	g.Event.Expires = t0.Add(24 * time.Hour).Unix()
	if err := w.add(t, g, w.k.app, "app-1"); err != nil {
		t.Fatal(err)
	}
	q := Query{Purpose: "pest-alerts", Category: "device.sensor.camera.pest", Recipient: "pestco", At: t0.Add(25 * time.Hour)}
	if d := w.h.Decide(q); d.Allowed || d.Reason != ReasonExpired {
		t.Errorf("after expiry: %+v", d)
	}
	// A later refusal beats an earlier grant.
	g2 := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: pests, At: t0.Add(26 * time.Hour), Actor: "subject:app"})
	must(t, w.add(t, g2, w.k.app, "app-1"))
	ref := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: pests, At: t0.Add(27 * time.Hour), Actor: "subject:app"})
	ref.Event.State = StateRefused
	must(t, w.add(t, ref, w.k.app, "app-1"))
	q.At = t0.Add(28 * time.Hour)
	if d := w.h.Decide(q); d.Allowed || d.Reason != ReasonRefused || d.Record != ref.ID {
		t.Errorf("after refusal: %+v", d)
	}
	// Notice v4 adds a recipient; consent under v3 does not extend to it.
	v4 := energy
	v4.Version = 4
	w2 := newWorld(t)
	g3 := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: pests, At: t0, Actor: "subject:app"})
	must(t, w2.add(t, g3, w2.k.app, "app-1"))
	q4 := Query{Purpose: "pest-alerts", Category: "device.sensor.camera.pest", Recipient: "grocer", At: t0.Add(time.Hour)}
	if d := w2.h.Decide(q4); d.Allowed {
		t.Errorf("a recipient added by notice v4 inherited v3 consent: %+v", d)
	}
	p4 := []Process{{Purpose: "pest-alerts", Categories: pests[0].Categories, Recipients: []string{"pestco", "grocer"}, LegalBasis: "consent"}}
	g4 := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: v4, Processes: p4, At: t0.Add(2 * time.Hour), Actor: "subject:app"})
	must(t, w2.add(t, g4, w2.k.app, "app-1"))
	q4.At = t0.Add(3 * time.Hour)
	if d := w2.h.Decide(q4); !d.Allowed || d.Record != g4.ID {
		t.Errorf("after consenting to v4: %+v", d)
	}
}

func TestHistoryRefusesBadEvents(t *testing.T) {
	w := newWorld(t)
	g := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: pests, At: t0, Actor: "subject:app"})
	must(t, w.add(t, g, w.k.app, "app-1"))
	// A withdrawal naming an unknown record.
	ghost := *g
	ghost.ID = NewID()
	if err := w.add(t, Withdraw(&ghost, t0.Add(time.Hour), "subject:app"), w.k.app, "app-1"); !errors.Is(err, ErrUnknownRecord) {
		t.Errorf("withdrawal of an unknown record: %v", err)
	}
	// A withdrawal signed by someone other than the subject.
	if err := w.add(t, Withdraw(g, t0.Add(time.Hour), "controller"), w.k.ctrl, "ctrl-1"); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("withdrawal by the controller: %v", err)
	}
	// A revocation signed by the subject.
	if err := w.add(t, Revoke(g, t0.Add(time.Hour), "subject"), w.k.app, "app-1"); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("revocation by the subject: %v", err)
	}
	// A grant signed by the controller on the subject's behalf.
	if err := w.add(t, Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: pests, At: t0, Actor: "controller"}), w.k.ctrl, "ctrl-1"); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("grant by the controller: %v", err)
	}
	// Another subject's record.
	if err := w.add(t, Grant(GrantParams{Subject: "subj-other", Controller: "acme", Notice: energy, Processes: pests, At: t0, Actor: "x"}), w.k.app, "app-1"); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("another subject's record: %v", err)
	}
	if d := w.h.Decide(Query{Purpose: "pest-alerts", Category: "device.sensor.camera.pest", At: t0.Add(2 * time.Hour)}); !d.Allowed {
		t.Errorf("refused events changed the decision: %+v", d)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// BenchmarkDecide decides over a subject with 1,000 events, after
// indexing.
func BenchmarkDecide(b *testing.B) {
	w := newWorld(b)
	purposes := []string{"analytics", "pest-alerts", "grocery", "support", "research"}
	for i := range 1000 {
		p := []Process{{Purpose: purposes[i%len(purposes)], Categories: []string{"device.sensor.power", "device.sensor.camera.pest"}, Recipients: []string{"pestco"}, LegalBasis: "consent"}}
		g := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: p, At: t0.Add(time.Duration(i) * time.Minute), Actor: "subject:app"})
		must(b, w.add(b, g, w.k.app, "app-1"))
		if i%3 == 0 {
			must(b, w.add(b, Withdraw(g, t0.Add(time.Duration(i)*time.Minute+30*time.Second), "subject:app"), w.k.app, "app-1"))
		}
	}
	// The latest pest-alerts grant (i = 996) was withdrawn 30 s later; ask
	// in between, when it allows.
	q := Query{Purpose: "pest-alerts", Category: "device.sensor.camera.pest", Recipient: "pestco", At: t0.Add(996*time.Minute + 10*time.Second)}
	b.ReportAllocs()
	for b.Loop() {
		if d := w.h.Decide(q); !d.Allowed {
			b.Fatal(d)
		}
	}
}

func TestNoticeSuperseded(t *testing.T) {
	w := newWorld(t)
	ns := &Notices{}
	ns.Publish(energy, true)
	w.h.UseNotices(ns)
	g := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: pests, At: t0, Actor: "subject:app"})
	must(t, w.add(t, g, w.k.app, "app-1"))
	q := Query{Purpose: "pest-alerts", Category: "device.sensor.camera.pest", At: t0.Add(time.Hour)}
	if d := w.h.Decide(q); !d.Allowed {
		t.Fatalf("before v4: %+v", d)
	}
	// A wording fix keeps consent; new terms need it again.
	fix := energy
	fix.Version, fix.Hash = 4, HashText([]byte("typo fixed"))
	ns.Publish(fix, false)
	if d := w.h.Decide(q); !d.Allowed {
		t.Fatalf("after a wording fix: %+v", d)
	}
	terms := energy
	terms.Version, terms.Hash = 5, HashText([]byte("new terms"))
	ns.Publish(terms, true)
	if d := w.h.Decide(q); d.Allowed || d.Reason != ReasonSuperseded || d.Record != g.ID {
		t.Fatalf("after new terms: %+v", d)
	}
	if err := ns.Check(g); !errors.Is(err, ErrNoticeSuperseded) {
		t.Fatalf("Check: %v", err)
	}
	forged := *g
	forged.Notice.Hash = HashText([]byte("a friendlier text"))
	if err := ns.Check(&forged); !errors.Is(err, ErrNoticeHash) {
		t.Fatalf("a record naming a published version with another text: %v", err)
	}
	g5 := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: terms, Processes: pests, At: t0.Add(2 * time.Hour), Actor: "subject:app"})
	must(t, w.add(t, g5, w.k.app, "app-1"))
	q.At = t0.Add(3 * time.Hour)
	if d := w.h.Decide(q); !d.Allowed || d.Record != g5.ID {
		t.Fatalf("after consenting to v5: %+v", d)
	}
}

func TestLatestChoiceWins(t *testing.T) {
	w := newWorld(t)
	dev, _ := identity.GenerateKey(identity.Ed25519)
	must(t, w.k.set.Add(TrustedKey{KID: []byte("dev-1"), Key: dev.Public(), Role: DeviceKey, Subject: "subj-7f3a"}))
	g1 := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: pests, At: t0, Actor: "device"})
	must(t, w.add(t, g1, dev, "dev-1"))
	g2 := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: pests, At: t0.Add(time.Hour), Actor: "subject:app"})
	must(t, w.add(t, g2, w.k.app, "app-1"))
	wd := Withdraw(g2, t0.Add(2*time.Hour), "subject:app")
	must(t, w.add(t, wd, w.k.app, "app-1"))
	q := Query{Purpose: "pest-alerts", Category: "device.sensor.camera.pest", At: t0.Add(3 * time.Hour)}
	if d := w.h.Decide(q); d.Allowed || d.Record != wd.ID || d.Reason != ReasonWithdrawn {
		t.Fatalf("an older grant outlived the later withdrawal: %+v", d)
	}
	// Recording an expiry before the record expires is not allowed.
	g3 := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: pests, At: t0.Add(4 * time.Hour), Actor: "subject:app"})
	g3.Event.Expires = t0.Add(48 * time.Hour).Unix()
	must(t, w.add(t, g3, w.k.app, "app-1"))
	early := ending(g3, t0.Add(5*time.Hour), "controller", StateExpired)
	if err := w.add(t, early, w.k.ctrl, "ctrl-1"); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("early expiry by the controller: %v", err)
	}
	late := ending(g3, t0.Add(49*time.Hour), "controller", StateExpired)
	must(t, w.add(t, late, w.k.ctrl, "ctrl-1"))
}

// BenchmarkDecideAllWithdrawn decides over 1,000 grants that were all
// withdrawn: the worst case of the old scan.
func BenchmarkDecideAllWithdrawn(b *testing.B) {
	w := newWorld(b)
	for i := range 1000 {
		g := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: pests, At: t0.Add(time.Duration(i) * time.Minute), Actor: "subject:app"})
		must(b, w.add(b, g, w.k.app, "app-1"))
		must(b, w.add(b, Withdraw(g, t0.Add(time.Duration(i)*time.Minute+30*time.Second), "subject:app"), w.k.app, "app-1"))
	}
	q := Query{Purpose: "pest-alerts", Category: "device.sensor.camera.pest", Recipient: "pestco", At: t0.Add(2000 * time.Minute)}
	b.ReportAllocs()
	for b.Loop() {
		if d := w.h.Decide(q); d.Allowed {
			b.Fatal(d)
		}
	}
}

func TestRevocationByTheRecordsController(t *testing.T) {
	w := newWorld(t)
	other, _ := identity.GenerateKey(identity.P256)
	must(t, w.k.set.Add(TrustedKey{KID: []byte("ctrl-other"), Key: other.Public(), Role: ControllerKey, Controller: "globex"}))
	g := Grant(GrantParams{Subject: "subj-7f3a", Controller: "acme", Notice: energy, Processes: pests, At: t0, Actor: "subject:app"})
	must(t, w.add(t, g, w.k.app, "app-1"))
	// Another controller's key cannot revoke acme's record, whether it
	// names acme or itself.
	if err := w.add(t, Revoke(g, t0.Add(time.Hour), "globex"), other, "ctrl-other"); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("revocation by another controller's key: %v", err)
	}
	r := Revoke(g, t0.Add(time.Hour), "globex")
	r.Controller = "globex"
	if err := w.add(t, r, other, "ctrl-other"); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("revocation naming another controller: %v", err)
	}
}
