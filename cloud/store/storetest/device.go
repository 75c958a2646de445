package storetest

import (
	"bytes"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/protocol"
)

func testIncidents(t *testing.T, s store.Store) {
	ctx := t.Context()
	d, other := newID(), newID() // incidents need no registered device
	var want []store.Incident
	for i := range 5 {
		inc := store.Incident{Device: d, Time: at(time.Duration(i) * time.Minute), Kind: "bad-token", Detail: "expired"}
		if i == 2 {
			inc.Detail = ""
		}
		id, err := s.RecordIncident(ctx, inc)
		ok(t, err, "RecordIncident")
		if len(want) > 0 && id <= want[len(want)-1].ID {
			t.Fatalf("incident IDs do not increase: %d after %d", id, want[len(want)-1].ID)
		}
		inc.ID = id
		want = append(want, inc)
	}
	_, err := s.RecordIncident(ctx, store.Incident{Device: other, Time: t0, Kind: "flood"})
	ok(t, err, "RecordIncident")
	for _, bad := range []store.Incident{{Device: d, Kind: "k"}, {Device: d, Time: t0}, {Time: t0, Kind: "k"}} {
		_, err := s.RecordIncident(ctx, bad)
		is(t, err, store.ErrInvalid, "RecordIncident of an incomplete incident")
	}
	count := func(since time.Time, want int64) {
		t.Helper()
		n, err := s.CountIncidents(ctx, d, since)
		ok(t, err, "CountIncidents")
		same(t, n, want, "incidents since "+since.String())
	}
	count(t0, 5)
	count(at(2*time.Minute), 3)
	count(at(time.Hour), 0)
	n, err := s.CountIncidents(ctx, newID(), t0)
	ok(t, err, "CountIncidents")
	same(t, n, int64(0), "incidents of a device without any")
	list, err := s.ListIncidents(ctx, d, at(time.Minute), 0)
	ok(t, err, "ListIncidents")
	same(t, list, want[1:], "ListIncidents")
	list, err = s.ListIncidents(ctx, d, t0, 2)
	ok(t, err, "ListIncidents")
	same(t, list, want[:2], "ListIncidents, two")
}

func testState(t *testing.T, s store.Store) {
	ctx := t.Context()
	w := newWorld(t, s)
	d := w.device
	state := func(want store.State) {
		t.Helper()
		got, err := s.State(ctx, d)
		ok(t, err, "State")
		same(t, got, want, "State")
	}
	// version and stale return checks of what SetDesired and SetReported
	// return.
	version := func(what string, want uint64) func(uint64, error) {
		return func(got uint64, err error) {
			t.Helper()
			ok(t, err, what)
			same(t, got, want, what+": version")
		}
	}
	stale := func(named, current uint64) func(uint64, error) {
		return func(_ uint64, err error) {
			t.Helper()
			var se *store.StaleError
			if !errors.As(err, &se) || !errors.Is(err, store.ErrStale) || se.Named != named || se.Current != current {
				t.Fatalf("got error %v, want a stale version %d (current %d)", err, named, current)
			}
		}
	}
	state(store.State{})
	_, err := s.State(ctx, newID())
	is(t, err, store.ErrNotFound, "State of an unknown device")

	version("first SetDesired", 1)(s.SetDesired(ctx, d, cbor(1), 0))
	version("SetDesired naming the version", 2)(s.SetDesired(ctx, d, cbor(2), 1))
	stale(1, 2)(s.SetDesired(ctx, d, cbor(3), 1))
	stale(7, 2)(s.SetDesired(ctx, d, cbor(3), 7))
	state(store.State{Desired: store.Document{Body: cbor(2), Version: 2}})
	version("SetDesired naming none", 3)(s.SetDesired(ctx, d, cbor(3), 0))

	stale(2, 3)(s.SetReported(ctx, d, cbor(10), 2))
	version("first SetReported", 1)(s.SetReported(ctx, d, cbor(10), 3))
	version("SetReported", 2)(s.SetReported(ctx, d, cbor(11), 3))
	state(store.State{Desired: store.Document{Body: cbor(3), Version: 3}, Reported: store.Document{Body: cbor(11), Version: 2}, Seen: 3})

	// Before any desired state, a report answers version 0.
	d2 := w.addDevice(t, w.model)
	stale(1, 0)(s.SetReported(ctx, d2, cbor(1), 1))
	version("SetReported before any desired state", 1)(s.SetReported(ctx, d2, cbor(1), 0))

	_, err = s.SetDesired(ctx, newID(), cbor(1), 0)
	is(t, err, store.ErrNotFound, "SetDesired of an unknown device")
	_, err = s.SetReported(ctx, newID(), cbor(1), 0)
	is(t, err, store.ErrNotFound, "SetReported of an unknown device")
	_, err = s.SetDesired(ctx, d, nil, 0)
	is(t, err, store.ErrInvalid, "SetDesired of nothing")
	_, err = s.SetReported(ctx, d, nil, 3)
	is(t, err, store.ErrInvalid, "SetReported of nothing")
}

func testStateLimits(t *testing.T, s store.Store) {
	ctx := t.Context()
	w := newWorld(t, s)
	full := bytes.Repeat([]byte{0}, store.MaxDocument)
	full[0] = 0x5a // a byte string, with NUL bytes
	v, err := s.SetDesired(ctx, w.device, full, 0)
	ok(t, err, "SetDesired of MaxDocument bytes")
	_, err = s.SetReported(ctx, w.device, full, v)
	ok(t, err, "SetReported of MaxDocument bytes")
	over := append(full, 0)
	tooLarge := func(err error, what string) {
		t.Helper()
		var te *store.TooLargeError
		if !errors.As(err, &te) || !errors.Is(err, store.ErrTooLarge) || te.Size != len(over) || te.Limit != store.MaxDocument {
			t.Fatalf("%s: got error %v, want a TooLargeError", what, err)
		}
	}
	_, err = s.SetDesired(ctx, w.device, over, 0)
	tooLarge(err, "SetDesired over MaxDocument")
	_, err = s.SetReported(ctx, w.device, over, v)
	tooLarge(err, "SetReported over MaxDocument")
	err = s.EnqueueCommand(ctx, store.Command{ID: protocol.CommandID{1}, Device: w.device, Name: "n", Args: over, Created: t0})
	tooLarge(err, "EnqueueCommand over MaxDocument")
	got, err := s.State(ctx, w.device)
	ok(t, err, "State")
	same(t, got, store.State{Desired: store.Document{Body: full, Version: 1}, Reported: store.Document{Body: full, Version: 1}, Seen: 1}, "State")
}

func testConcurrentState(t *testing.T, s store.Store) {
	ctx := t.Context()
	w := newWorld(t, s)
	const writers = 6
	// race has every writer set the desired state at once, naming
	// expected, and returns the versions of those that won.
	race := func(expected uint64) []uint64 {
		var wg sync.WaitGroup
		var mu sync.Mutex
		var won []uint64
		for g := range writers {
			wg.Go(func() {
				v, err := s.SetDesired(ctx, w.device, cbor(g), expected)
				switch {
				case errors.Is(err, store.ErrStale):
				case err != nil:
					t.Errorf("SetDesired: %v", err)
				default:
					mu.Lock()
					won = append(won, v)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		slices.Sort(won)
		return won
	}
	// Writes that name no version all win, each with a version of its own.
	same(t, race(0), []uint64{1, 2, 3, 4, 5, 6}, "versions won naming none")
	// Of writes that name the current version, one wins.
	for v := uint64(writers); v < writers+5; v++ {
		same(t, race(v), []uint64{v + 1}, "versions won naming the current one")
	}
}

func testCommands(t *testing.T, s store.Store) {
	ctx := t.Context()
	w := newWorld(t, s)
	d := w.device
	c1 := store.Command{ID: protocol.CommandID{1}, Device: d, Name: "start-cleaning", Args: cbor(1), Created: t0, Expires: at(time.Hour)}
	c2 := store.Command{ID: protocol.CommandID{2}, Device: d, Name: "stop", Created: at(time.Second)}
	c3 := store.Command{ID: protocol.CommandID{3}, Device: d, Name: "beep", Created: at(2 * time.Second)}
	for _, c := range []store.Command{c3, c1, c2} {
		ok(t, s.EnqueueCommand(ctx, c), "EnqueueCommand")
	}
	is(t, s.EnqueueCommand(ctx, c1), store.ErrConflict, "EnqueueCommand of a taken ID")
	other := c1
	other.Device = w.addDevice(t, w.model)
	ok(t, s.EnqueueCommand(ctx, other), "EnqueueCommand of another device's ID")
	unknown := c1
	unknown.Device = newID()
	is(t, s.EnqueueCommand(ctx, unknown), store.ErrNotFound, "EnqueueCommand for an unknown device")
	for _, bad := range []store.Command{
		{ID: protocol.CommandID{4}, Device: d, Created: t0},
		{ID: protocol.CommandID{4}, Device: d, Name: "n"},
		{ID: protocol.CommandID{4}, Name: "n", Created: t0},
	} {
		is(t, s.EnqueueCommand(ctx, bad), store.ErrInvalid, "EnqueueCommand of an incomplete command")
	}
	c1.State, c2.State, c3.State = store.Pending, store.Pending, store.Pending
	got, err := s.Command(ctx, d, c1.ID)
	ok(t, err, "Command")
	same(t, got, c1, "Command")
	_, err = s.Command(ctx, d, protocol.CommandID{9})
	is(t, err, store.ErrNotFound, "Command of an unknown ID")
	deliverable := func(now time.Time, want ...store.Command) {
		t.Helper()
		got, err := s.DeliverableCommands(ctx, d, now)
		ok(t, err, "DeliverableCommands")
		if len(want) == 0 {
			want = nil
		}
		same(t, got, want, "DeliverableCommands")
	}
	deliverable(t0, c1, c2, c3)

	ok(t, s.MarkDelivered(ctx, d, c1.ID, at(time.Minute)), "MarkDelivered")
	ok(t, s.MarkDelivered(ctx, d, c1.ID, at(2*time.Minute)), "MarkDelivered again")
	c1.State, c1.Delivered = store.Delivered, at(time.Minute)
	deliverable(t0, c1, c2, c3)
	is(t, s.MarkDelivered(ctx, d, protocol.CommandID{9}, t0), store.ErrNotFound, "MarkDelivered of an unknown command")

	res := store.CommandResult{State: store.Succeeded, Result: cbor(42), At: at(3 * time.Minute)}
	ok(t, s.SetCommandResult(ctx, d, c1.ID, res), "SetCommandResult")
	ok(t, s.SetCommandResult(ctx, d, c1.ID, res), "SetCommandResult again")
	c1.State, c1.Result, c1.Finished = store.Succeeded, cbor(42), at(3*time.Minute)
	got, _ = s.Command(ctx, d, c1.ID)
	same(t, got, c1, "Command after its result")
	is(t, s.SetCommandResult(ctx, d, c1.ID, store.CommandResult{State: store.Failed, At: at(4 * time.Minute)}), store.ErrConflict, "another result")
	is(t, s.SetCommandResult(ctx, d, c1.ID, store.CommandResult{State: store.Succeeded, Result: cbor(43), At: at(4 * time.Minute)}), store.ErrConflict, "another result")
	is(t, s.MarkDelivered(ctx, d, c1.ID, at(5*time.Minute)), store.ErrConflict, "MarkDelivered of an ended command")
	deliverable(at(5*time.Minute), c2, c3)

	// A pending command may end without being marked delivered.
	ok(t, s.SetCommandResult(ctx, d, c2.ID, store.CommandResult{State: store.Failed, At: at(6 * time.Minute)}), "SetCommandResult")
	got, _ = s.Command(ctx, d, c2.ID)
	if got.State != store.Failed || got.Result != nil || !got.Delivered.IsZero() {
		t.Fatalf("a failed command: %+v", got)
	}
	deliverable(at(7*time.Minute), c3)
	for _, bad := range []store.CommandState{0, store.Pending, store.Delivered, store.Expired} {
		is(t, s.SetCommandResult(ctx, d, c3.ID, store.CommandResult{State: bad, At: t0}), store.ErrInvalid, "SetCommandResult "+bad.String())
	}
	is(t, s.SetCommandResult(ctx, d, c3.ID, store.CommandResult{State: store.Succeeded}), store.ErrInvalid, "SetCommandResult without a time")
	is(t, s.SetCommandResult(ctx, d, protocol.CommandID{9}, res), store.ErrNotFound, "SetCommandResult of an unknown command")
}

func testCommandExpiry(t *testing.T, s store.Store) {
	ctx := t.Context()
	w := newWorld(t, s)
	d := w.device
	soon := store.Command{ID: protocol.CommandID{1}, Device: d, Name: "a", Created: t0, Expires: at(10 * time.Minute)}
	later := store.Command{ID: protocol.CommandID{2}, Device: d, Name: "b", Created: t0, Expires: at(time.Hour)}
	never := store.Command{ID: protocol.CommandID{3}, Device: d, Name: "c", Created: t0}
	for _, c := range []store.Command{soon, later, never} {
		ok(t, s.EnqueueCommand(ctx, c), "EnqueueCommand")
	}
	ok(t, s.MarkDelivered(ctx, d, later.ID, at(time.Minute)), "MarkDelivered")
	ids := func(now time.Time) []protocol.CommandID {
		t.Helper()
		cs, err := s.DeliverableCommands(ctx, d, now)
		ok(t, err, "DeliverableCommands")
		var ids []protocol.CommandID
		for _, c := range cs {
			ids = append(ids, c.ID)
		}
		return ids
	}
	same(t, ids(at(10*time.Minute-time.Nanosecond)), []protocol.CommandID{{1}, {2}, {3}}, "deliverable before the expiry")
	// Expired at its expiry, before any sweep.
	same(t, ids(at(10*time.Minute)), []protocol.CommandID{{2}, {3}}, "deliverable at the expiry")
	is(t, s.MarkDelivered(ctx, d, soon.ID, at(10*time.Minute)), store.ErrConflict, "MarkDelivered of an expired command")

	n, err := s.ExpireCommands(ctx, at(10*time.Minute))
	ok(t, err, "ExpireCommands")
	same(t, n, int64(1), "commands expired")
	n, err = s.ExpireCommands(ctx, at(10*time.Minute))
	ok(t, err, "ExpireCommands")
	same(t, n, int64(0), "commands expired again")
	got, _ := s.Command(ctx, d, soon.ID)
	if got.State != store.Expired || !got.Finished.Equal(at(10*time.Minute)) {
		t.Fatalf("an expired command: %+v", got)
	}
	is(t, s.SetCommandResult(ctx, d, soon.ID, store.CommandResult{State: store.Succeeded, At: at(11 * time.Minute)}), store.ErrConflict, "SetCommandResult of an expired command")

	// A delivered command expires too; one that ended does not.
	ok(t, s.SetCommandResult(ctx, d, never.ID, store.CommandResult{State: store.Succeeded, At: at(2 * time.Minute)}), "SetCommandResult")
	n, err = s.ExpireCommands(ctx, at(100*365*24*time.Hour))
	ok(t, err, "ExpireCommands")
	same(t, n, int64(1), "commands expired")
	got, _ = s.Command(ctx, d, later.ID)
	same(t, got.State, store.Expired, "state of a delivered command after its expiry")
	got, _ = s.Command(ctx, d, never.ID)
	same(t, got.State, store.Succeeded, "state of an ended command")
	same(t, len(ids(at(200*365*24*time.Hour))), 0, "deliverable commands")
}

func testClaims(t *testing.T, s store.Store) {
	ctx := t.Context()
	w := newWorld(t, s)
	h1, h2 := store.ClaimCodeHash([]byte("code one")), store.ClaimCodeHash([]byte("code two"))
	if h1 == h2 || h1 != store.ClaimCodeHash([]byte("code one")) {
		t.Fatal("ClaimCodeHash is not a function of the code")
	}
	_, err := s.Claim(ctx, w.device)
	is(t, err, store.ErrNotFound, "Claim before SetClaim")
	ok(t, s.SetClaim(ctx, store.Claim{Device: w.device, Hash: h1, Created: t0}), "SetClaim")
	got, err := s.Claim(ctx, w.device)
	ok(t, err, "Claim")
	same(t, got, store.Claim{Device: w.device, Hash: h1, Created: t0}, "Claim")
	ok(t, s.SetClaim(ctx, store.Claim{Device: w.device, Hash: h2, Created: at(time.Hour)}), "SetClaim again")
	got, err = s.Claim(ctx, w.device)
	ok(t, err, "Claim")
	same(t, got, store.Claim{Device: w.device, Hash: h2, Created: at(time.Hour)}, "Claim replaced")
	is(t, s.SetClaim(ctx, store.Claim{Device: newID(), Hash: h1, Created: t0}), store.ErrNotFound, "SetClaim of an unknown device")
	is(t, s.SetClaim(ctx, store.Claim{Device: w.device, Hash: h1}), store.ErrInvalid, "SetClaim without a time")
	ok(t, s.DeleteClaim(ctx, w.device), "DeleteClaim")
	_, err = s.Claim(ctx, w.device)
	is(t, err, store.ErrNotFound, "Claim after DeleteClaim")
	is(t, s.DeleteClaim(ctx, w.device), store.ErrNotFound, "DeleteClaim again")
}

func testClaimAttempts(t *testing.T, s store.Store) {
	ctx := t.Context()
	d1, d2 := newID(), newID() // attempts need no registered device
	attempt := func(d [16]byte, claimant string, after time.Duration, want store.AttemptCounts) {
		t.Helper()
		got, err := s.RecordClaimAttempt(ctx, store.ClaimAttempt{Device: d, Claimant: claimant, At: at(after), Window: time.Minute})
		ok(t, err, "RecordClaimAttempt")
		same(t, got, want, "attempts counted")
	}
	attempt(d1, "alice", 0, store.AttemptCounts{Device: 1, Claimant: 1})
	attempt(d1, "bob", 10*time.Second, store.AttemptCounts{Device: 2, Claimant: 1})
	attempt(d2, "alice", 20*time.Second, store.AttemptCounts{Device: 1, Claimant: 2})
	attempt(d1, "alice", 59*time.Second, store.AttemptCounts{Device: 3, Claimant: 3})
	// d1's and alice's windows started at 0 and ended at 1m; bob's and
	// d2's go on.
	attempt(d1, "alice", time.Minute, store.AttemptCounts{Device: 1, Claimant: 1})
	attempt(d2, "bob", 65*time.Second, store.AttemptCounts{Device: 2, Claimant: 2})
	attempt(d2, "bob", 80*time.Second, store.AttemptCounts{Device: 1, Claimant: 1})
	for _, bad := range []store.ClaimAttempt{
		{Device: d1, Claimant: "alice", At: t0},
		{Device: d1, At: t0, Window: time.Minute},
		{Device: d1, Claimant: "alice", Window: time.Minute},
		{Claimant: "alice", At: t0, Window: time.Minute},
	} {
		_, err := s.RecordClaimAttempt(ctx, bad)
		is(t, err, store.ErrInvalid, "RecordClaimAttempt of an incomplete attempt")
	}
}

func testConcurrentClaimAttempts(t *testing.T, s store.Store) {
	ctx := t.Context()
	d := newID()
	const claimants, each = 8, 5
	var wg sync.WaitGroup
	var mu sync.Mutex
	var counts []int64
	for g := range claimants {
		wg.Go(func() {
			for i := range each {
				n, err := s.RecordClaimAttempt(ctx, store.ClaimAttempt{
					Device: d, Claimant: string(rune('a' + g)), At: at(time.Duration(i) * time.Millisecond), Window: time.Hour,
				})
				if err != nil {
					t.Errorf("RecordClaimAttempt: %v", err)
					return
				}
				if n.Claimant != int64(i+1) {
					t.Errorf("claimant %d's attempt %d counted as %d", g, i+1, n.Claimant)
				}
				mu.Lock()
				counts = append(counts, n.Device)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.Sort(counts)
	want := make([]int64, claimants*each)
	for i := range want {
		want[i] = int64(i + 1)
	}
	same(t, counts, want, "device counts seen by concurrent attempts")
}
