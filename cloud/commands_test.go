package cloud

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// ids returns the IDs of a list's commands, in order.
func ids(l protocol.Commands) []protocol.CommandID {
	var out []protocol.CommandID
	for _, c := range l.Commands {
		out = append(out, c.ID)
	}
	return out
}

// listOf returns a predicate that holds for a list of exactly the commands
// want, in order.
func listOf(want ...protocol.CommandID) func(protocol.Commands) bool {
	return func(l protocol.Commands) bool { return !l.Fetch && slices.Equal(ids(l), want) }
}

// enqueue queues a command for dev.
func enqueue(t *testing.T, n *Node, dev identity.ID, name string, args protocol.Settings, ttl time.Duration) protocol.CommandID {
	t.Helper()
	id, err := n.EnqueueCommand(context.Background(), dev, name, args, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// commandState returns a command's state in the store.
func commandState(t *testing.T, n *Node, dev identity.ID, id protocol.CommandID) store.Command {
	t.Helper()
	c, err := n.Store().Command(context.Background(), dev, id)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestCommands: a device observing /v1/commands gets an enqueued command
// at once, which is then Delivered; its result is stored once however
// often it is posted, another result is refused, and the command leaves
// the list.
func TestCommands(t *testing.T) {
	for _, scheme := range schemes {
		t.Run(scheme, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			n := testNode(t)
			d := importDevice(t, n)
			c := d.dial(t, n, listen(t, n, scheme))
			lists := observe[protocol.Commands](t, c, protocol.CommandsPath)
			first := next(t, lists, "the empty list", listOf())

			args := protocol.Settings{"room": "kitchen", "passes": int64(2)}
			id := enqueue(t, n, d.id, "start-cleaning", args, 0)
			l := next(t, lists, "the enqueued command", listOf(id))
			want := protocol.Command{ID: id, Name: "start-cleaning", Args: args}
			if !reflect.DeepEqual(l.Commands[0], want) || l.Version <= first.Version {
				t.Fatalf("notified %+v (version %d after %d), want %+v", l.Commands[0], l.Version, first.Version, want)
			}
			waitDelivered(t, n, d.id, id)

			res := protocol.CommandResult{ID: id, Status: protocol.Done, Output: protocol.Settings{"area_m2": 18.5}}
			for range 2 {
				if err := c.Post(ctx, protocol.CommandsPath, res, nil); err != nil {
					t.Fatalf("posting the result: %v", err)
				}
			}
			after := next(t, lists, "the list without the command", listOf())
			if after.Version <= l.Version {
				t.Fatalf("version %d after %d", after.Version, l.Version)
			}
			s := commandState(t, n, d.id, id)
			var stored protocol.CommandResult
			if err := codec.Unmarshal(s.Result, &stored); err != nil {
				t.Fatal(err)
			}
			if s.State != store.Succeeded || !reflect.DeepEqual(stored, res) {
				t.Fatalf("command ended %s with %+v, want succeeded with %+v", s.State, stored, res)
			}
			other := protocol.CommandResult{ID: id, Status: protocol.Failed, Detail: "jammed"}
			if err := c.Post(ctx, protocol.CommandsPath, other, nil); !isCode(err, conflict) {
				t.Fatalf("another result: %v, want 4.09", err)
			}
			if err := c.Post(ctx, protocol.CommandsPath, protocol.CommandResult{ID: id, Status: 9}, nil); !errors.Is(err, transport.ErrBadRequest) {
				t.Fatalf("an unknown status: %v, want 4.00", err)
			}
			var now protocol.Commands
			if err := c.Get(ctx, protocol.CommandsPath, &now); err != nil || len(now.Commands) != 0 {
				t.Fatalf("GET after the result: %+v, %v", now, err)
			}

			// A rejected command ends Failed, the device's status kept.
			id2 := enqueue(t, n, d.id, "self-destruct", nil, 0)
			next(t, lists, "the second command", listOf(id2))
			if err := c.Post(ctx, protocol.CommandsPath, protocol.CommandResult{ID: id2, Status: protocol.Rejected, Detail: "unknown command"}, nil); err != nil {
				t.Fatal(err)
			}
			next(t, lists, "the list without it", listOf())
			if s := commandState(t, n, d.id, id2); s.State != store.Failed {
				t.Fatalf("rejected command is %s", s.State)
			}
		})
	}
}

// TestCommandsAfterReconnect: after the device reconnects and observes
// again, the commands it has not answered come again, with those queued
// while it was away; the one it answered does not.
func TestCommandsAfterReconnect(t *testing.T) {
	for _, scheme := range schemes {
		t.Run(scheme, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			n := testNode(t)
			u := listen(t, n, scheme)
			d := importDevice(t, n)
			c := d.dial(t, n, u)
			lists := observe[protocol.Commands](t, c, protocol.CommandsPath)
			next(t, lists, "the empty list", listOf())
			x := enqueue(t, n, d.id, "dock", nil, 0)
			y := enqueue(t, n, d.id, "beep", nil, time.Hour)
			next(t, lists, "both commands", listOf(x, y))
			if err := c.Post(ctx, protocol.CommandsPath, protocol.CommandResult{ID: x, Status: protocol.Done}, nil); err != nil {
				t.Fatal(err)
			}
			next(t, lists, "the unanswered command", listOf(y))
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}

			z := enqueue(t, n, d.id, "start-cleaning", nil, 0)
			if s := commandState(t, n, d.id, z); s.State != store.Pending {
				t.Fatalf("a command queued while the device is away is %s", s.State)
			}
			c = d.dial(t, n, u)
			lists = observe[protocol.Commands](t, c, protocol.CommandsPath)
			next(t, lists, "the commands again", listOf(y, z))
			if s := commandState(t, n, d.id, y); s.State != store.Delivered {
				t.Fatalf("command delivered twice is %s", s.State)
			}
			if s := commandState(t, n, d.id, z); s.State != store.Delivered {
				t.Fatalf("command delivered on registering is %s", s.State)
			}
		})
	}
}

// TestCommandExpiry: on the node's clock, a command that lapsed while its
// device was away is never delivered and ends Expired; one that lapses
// while the device observes leaves its list at once; a result for a
// lapsed command is taken only if it says expired.
func TestCommandExpiry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, clock, _ := clockedNode(t)
	d := importDevice(t, n)

	lapsed := enqueue(t, n, d.id, "beep", nil, time.Minute)
	keep := enqueue(t, n, d.id, "dock", nil, 0)
	clock.Add(2 * time.Minute)
	c := d.dial(t, n, listen(t, n, "coaps"))
	lists := observe[protocol.Commands](t, c, protocol.CommandsPath)
	next(t, lists, "the list without the lapsed command", listOf(keep))
	n.expireCommands(ctx)
	if s := commandState(t, n, d.id, lapsed); s.State != store.Expired || !s.Delivered.IsZero() {
		t.Fatalf("lapsed command is %s, delivered at %v", s.State, s.Delivered)
	}

	short := enqueue(t, n, d.id, "start-cleaning", nil, time.Minute)
	l := next(t, lists, "the command with a ttl", listOf(keep, short))
	waitDelivered(t, n, d.id, short)
	if want := clock.Now().Add(time.Minute).Unix(); l.Commands[1].Expires != want {
		t.Fatalf("command expires at %d, want %d", l.Commands[1].Expires, want)
	}
	clock.Add(time.Minute)
	n.expireCommands(ctx)
	next(t, lists, "the list without the expired command", listOf(keep))
	if s := commandState(t, n, d.id, short); s.State != store.Expired || s.Delivered.IsZero() {
		t.Fatalf("expired command is %s, delivered at %v", s.State, s.Delivered)
	}

	if err := c.Post(ctx, protocol.CommandsPath, protocol.CommandResult{ID: short, Status: protocol.Done}, nil); !isCode(err, conflict) {
		t.Fatalf("done for an expired command: %v, want 4.09", err)
	}
	for _, id := range []protocol.CommandID{short, lapsed} {
		if err := c.Post(ctx, protocol.CommandsPath, protocol.CommandResult{ID: id, Status: protocol.Expired}, nil); err != nil {
			t.Fatalf("expired for an expired command: %v", err)
		}
	}

	// Lapsed by the clock, not yet marked: the same answers.
	soonGone := enqueue(t, n, d.id, "beep", nil, time.Second)
	next(t, lists, "the short command", listOf(keep, soonGone))
	clock.Add(time.Second)
	if err := c.Post(ctx, protocol.CommandsPath, protocol.CommandResult{ID: soonGone, Status: protocol.Failed}, nil); !isCode(err, conflict) {
		t.Fatalf("failed for a lapsed command: %v, want 4.09", err)
	}
	if err := c.Post(ctx, protocol.CommandsPath, protocol.CommandResult{ID: soonGone, Status: protocol.Expired}, nil); err != nil {
		t.Fatalf("expired for a lapsed command: %v", err)
	}
	var now protocol.Commands
	if err := c.Get(ctx, protocol.CommandsPath, &now); err != nil || !listOf(keep)(now) {
		t.Fatalf("GET: %+v, %v; want only %s", now, err, keep)
	}

	// A device whose clock runs ahead reports expired early: the command
	// ends Failed, with the device's status kept.
	early := enqueue(t, n, d.id, "beep", nil, time.Hour)
	next(t, lists, "the early command", listOf(keep, early))
	res := protocol.CommandResult{ID: early, Status: protocol.Expired}
	if err := c.Post(ctx, protocol.CommandsPath, res, nil); err != nil {
		t.Fatal(err)
	}
	s := commandState(t, n, d.id, early)
	var stored protocol.CommandResult
	if err := codec.Unmarshal(s.Result, &stored); err != nil || s.State != store.Failed || !reflect.DeepEqual(stored, res) {
		t.Fatalf("early expiry ended %s with %+v (%v)", s.State, stored, err)
	}
}

// TestCommandsOfAnotherDevice: a device neither sees nor answers another
// device's commands, and a result for no command is 4.04.
func TestCommandsOfAnotherDevice(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := testNode(t)
	u := listen(t, n, "coaps")
	a, b := importDevice(t, n), importDevice(t, n)
	id := enqueue(t, n, a.id, "dock", nil, 0)
	cb := b.dial(t, n, u)
	var l protocol.Commands
	if err := cb.Get(ctx, protocol.CommandsPath, &l); err != nil || len(l.Commands) != 0 {
		t.Fatalf("another device's list: %+v, %v", l, err)
	}
	for _, res := range []protocol.CommandResult{{ID: id, Status: protocol.Done}, {ID: protocol.CommandID{1}, Status: protocol.Done}} {
		if err := cb.Post(ctx, protocol.CommandsPath, res, nil); !errors.Is(err, transport.ErrNotFound) {
			t.Fatalf("result for command %s: %v, want 4.04", res.ID, err)
		}
	}
	if s := commandState(t, n, a.id, id); s.State != store.Pending {
		t.Fatalf("the command is %s", s.State)
	}
	if _, err := n.EnqueueCommand(ctx, identity.ID{1}, "dock", nil, 0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a command for an unknown device: %v, want ErrNotFound", err)
	}
	if _, err := n.EnqueueCommand(ctx, a.id, "dock", nil, -time.Second); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("a negative ttl: %v, want ErrInvalid", err)
	}
	if _, err := n.EnqueueCommand(ctx, a.id, "", nil, 0); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("no name: %v, want ErrInvalid", err)
	}
}

// TestCommandsTooLargeForANotification: a list over
// protocol.MaxNotificationBody is notified with its version and Fetch,
// which delivers nothing; the GET that follows delivers it.
func TestCommandsTooLargeForANotification(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := testNode(t)
	d := importDevice(t, n)
	c := d.dial(t, n, listen(t, n, "coaps"))
	lists := observe[protocol.Commands](t, c, protocol.CommandsPath)
	next(t, lists, "the empty list", listOf())
	args := protocol.Settings{"script": strings.Repeat("s", protocol.MaxNotificationBody)}
	id := enqueue(t, n, d.id, "run", args, 0)
	l := next(t, lists, "a large list", func(protocol.Commands) bool { return true })
	if !l.Fetch || l.Commands != nil {
		t.Fatalf("notified %+v, want only the version and Fetch", l)
	}
	if s := commandState(t, n, d.id, id); s.State != store.Pending {
		t.Fatalf("command only announced is %s", s.State)
	}
	var whole protocol.Commands
	if err := c.Get(ctx, protocol.CommandsPath, &whole); err != nil {
		t.Fatal(err)
	}
	if whole.Version <= l.Version || !listOf(id)(whole) || !reflect.DeepEqual(whole.Commands[0].Args, args) {
		t.Fatalf("GET after Fetch: version %d after %d, %d commands", whole.Version, l.Version, len(whole.Commands))
	}
	if s := commandState(t, n, d.id, id); s.State != store.Delivered {
		t.Fatalf("command fetched is %s", s.State)
	}
}

// TestCommandListVersions: versions increase strictly whatever the clock
// does, and follow it when it moves ahead.
func TestCommandListVersions(t *testing.T) {
	var l commandLists
	at := time.Unix(1_800_000_000, 0)
	v1 := l.version(at)
	v2 := l.version(at)
	v3 := l.version(at.Add(-time.Hour))
	v4 := l.version(at.Add(time.Second))
	if v1 != uint64(at.UnixMicro()) || v2 != v1+1 || v3 != v2+1 || v4 != uint64(at.Add(time.Second).UnixMicro()) {
		t.Fatalf("versions %d %d %d %d", v1, v2, v3, v4)
	}
}

// TestCloseStopsExpiry: Close ends the expiry loop and waits for it.
func TestCloseStopsExpiry(t *testing.T) {
	n := testNode(t)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-n.cmds.done:
	default:
		t.Fatal("the expiry loop runs after Close")
	}
	if err := n.Close(); err != nil {
		t.Fatalf("Close again: %v", err)
	}
}

// waitDelivered waits until the node has marked a notified command
// Delivered, which it does once the notification is sent: possibly just
// after the device has it.
func waitDelivered(t *testing.T, n *Node, dev identity.ID, id protocol.CommandID) {
	t.Helper()
	for deadline := time.Now().Add(time.Second); ; time.Sleep(10 * time.Millisecond) {
		s := commandState(t, n, dev, id)
		if s.State == store.Delivered && !s.Delivered.IsZero() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("notified command is %s, delivered at %v", s.State, s.Delivered)
		}
	}
}
