package cloud

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// expiryPeriod is how often a node marks lapsed commands Expired and
// tells the observers whose lists lost one.
const expiryPeriod = time.Second

// EnqueueCommand queues a command for a device and notifies the device's
// observers of /v1/commands at once; it returns the command's ID, 16
// random bytes. name says what to do in the product's terms; args are its
// arguments (nil for none), kept as their CBOR encoding (store.Command's
// Args). A ttl over zero makes the command lapse that long from now: it
// is never delivered after, and ends Expired; zero means never.
//
// The command is delivered in every list the device gets, after every
// reconnect, until the device reports a result or it lapses. The result
// is kept in store.Command's Result as the device's protocol.CommandResult
// encoded in CBOR; the command ends Succeeded for Done and Failed for
// Failed and Rejected (and for Expired reported before the command lapsed
// by the cloud's clock).
//
// Arguments the device could not decode, an empty name or a negative ttl
// match store.ErrInvalid; arguments over store.MaxDocument bytes
// store.ErrTooLarge; an unknown device store.ErrNotFound.
func (n *Node) EnqueueCommand(ctx context.Context, dev identity.ID, name string, args protocol.Settings, ttl time.Duration) (protocol.CommandID, error) {
	if ttl < 0 {
		return protocol.CommandID{}, fmt.Errorf("cloud: command %q: %w: negative ttl %v", name, store.ErrInvalid, ttl)
	}
	c := store.Command{Device: dev, Name: name, Created: n.now()}
	rand.Read(c.ID[:])
	if ttl > 0 {
		c.Expires = c.Created.Add(ttl)
	}
	if err := n.enqueue(ctx, c, args); err != nil {
		return protocol.CommandID{}, err
	}
	return c.ID, nil
}

// enqueue queues c with args, encoded as the device will decode them, and
// tells the device's observers: EnqueueCommand and the operator API, which
// may name the command's ID itself.
func (n *Node) enqueue(ctx context.Context, c store.Command, args protocol.Settings) error {
	if len(args) > 0 {
		var err error
		if c.Args, err = encodeSettings("command arguments", args); err != nil {
			return err
		}
	}
	if err := n.store.EnqueueCommand(ctx, c); err != nil {
		return fmt.Errorf("cloud: command %q for device %s: %w", c.Name, c.Device, err)
	}
	n.changed(ctx, protocol.CommandsPath, c.Device)
	return nil
}

// serveCommands serves /v1/commands: GET (observable) answers the
// device's list and marks its commands Delivered; POST takes a result.
func (n *Node) serveCommands(ctx context.Context, r *transport.Request) (any, error) {
	dev, err := n.requester(ctx, r)
	if err != nil {
		return nil, err
	}
	if r.Method == transport.GET {
		l, err := n.commandList(ctx, dev)
		if err != nil {
			return nil, err
		}
		n.cmds.track(dev, l.next)
		n.delivered(ctx, dev, l.pending)
		return l.msg, nil
	}
	var res protocol.CommandResult
	if err := r.Decode(&res); err != nil {
		return nil, err
	}
	return nil, n.commandResult(ctx, dev, res)
}

// commandResult stores a device's result for one of its commands, once.
// A command the device does not have is 4.04. A command that has lapsed
// by the cloud's clock takes only the status Expired (2.04, nothing
// stored: it ends Expired); any other result is refused with 4.09, as is
// a result other than the one the command ended with. Once a command
// ends, it leaves the list and the observers hear of it.
func (n *Node) commandResult(ctx context.Context, dev identity.ID, res protocol.CommandResult) error {
	if res.Status < protocol.Done || res.Status > protocol.Expired {
		return transport.Errorf(transport.BadRequest, "unknown result status %d", res.Status)
	}
	c, err := n.store.Command(ctx, dev, res.ID)
	if errors.Is(err, store.ErrNotFound) {
		return transport.Errorf(transport.NotFound, "no command %s", res.ID)
	}
	if err != nil {
		return err
	}
	now := n.now()
	open := c.State == store.Pending || c.State == store.Delivered
	if c.State == store.Expired || open && !c.Expires.IsZero() && !now.Before(c.Expires) {
		if res.Status == protocol.Expired {
			return nil
		}
		return transport.Errorf(conflict, "command %s expired", res.ID)
	}
	state := store.Failed
	if res.Status == protocol.Done {
		state = store.Succeeded
	}
	doc, err := codec.Marshal(res)
	if err != nil {
		return err
	}
	err = n.store.SetCommandResult(ctx, dev, res.ID, store.CommandResult{State: state, Result: doc, At: now})
	if errors.Is(err, store.ErrConflict) {
		return transport.Errorf(conflict, "command %s has already ended otherwise", res.ID)
	}
	if err != nil {
		return answer(err)
	}
	if open {
		n.changed(ctx, protocol.CommandsPath, dev)
	}
	return nil
}

// A commandList is a device's list of commands as read at one time.
type commandList struct {
	msg     protocol.Commands
	pending []protocol.CommandID // those not yet marked Delivered
	next    time.Time            // when the first of them lapses; zero for never
}

// commandList reads a device's list: its Pending and Delivered commands
// that have not lapsed, oldest first.
func (n *Node) commandList(ctx context.Context, dev identity.ID) (commandList, error) {
	// The version is drawn before the read, so that of two lists this
	// node reads, the one with the higher version is never the older.
	now := n.now()
	l := commandList{msg: protocol.Commands{Version: n.cmds.version(now)}}
	cs, err := n.store.DeliverableCommands(ctx, dev, now)
	if err != nil {
		return commandList{}, err
	}
	for _, c := range cs {
		pc := protocol.Command{ID: c.ID, Name: c.Name}
		if len(c.Args) > 0 {
			if err := codec.Unmarshal(c.Args, &pc.Args); err != nil {
				return commandList{}, fmt.Errorf("cloud: arguments of command %s: %w", c.ID, err)
			}
		}
		if !c.Expires.IsZero() {
			// Whole seconds on the wire, rounded down: the device stops
			// running a command no later than the cloud stops sending it.
			pc.Expires = c.Expires.Unix()
			if l.next.IsZero() || c.Expires.Before(l.next) {
				l.next = c.Expires
			}
		}
		if c.State == store.Pending {
			l.pending = append(l.pending, c.ID)
		}
		l.msg.Commands = append(l.msg.Commands, pc)
	}
	return l, nil
}

// delivered marks commands that reached their device Delivered. One that
// ended or lapsed since the list was read stays as it is.
func (n *Node) delivered(ctx context.Context, dev identity.ID, ids []protocol.CommandID) {
	at := n.now()
	for _, id := range ids {
		if err := n.store.MarkDelivered(ctx, dev, id, at); err != nil && !errors.Is(err, store.ErrConflict) {
			n.log.Warn("cloud: marking a command delivered", "device", dev, "command", id, "err", err)
		}
	}
}

// notifyCommands sends a device's list to its observers here, and marks
// its commands Delivered if it reached one (a list too large for a
// notification is marked when the device GETs it).
func (n *Node) notifyCommands(ctx context.Context, dev identity.ID) error {
	l, err := n.commandList(ctx, dev)
	if err != nil {
		return err
	}
	reached, err := n.send(ctx, protocol.CommandsPath, dev, l.msg, protocol.Commands{Version: l.msg.Version, Fetch: true})
	if reached > 0 {
		n.cmds.track(dev, l.next)
		n.delivered(ctx, dev, l.pending)
	}
	return err
}

// commandLists is what a node keeps about command lists beside the store:
// the clock their versions come from, and when the lists it has served
// lose a command by expiry, so that their observers hear of it. The
// store keeps no version per list, so a list's version is the node's
// clock in microseconds when it is read, made strictly increasing on the
// node: a higher version is never an older list from this node, and
// lists from nodes whose clocks agree within the time between two
// changes are ordered too. Its zero value is ready for use; the node
// runs its expiry loop between New and Close.
type commandLists struct {
	last atomic.Uint64

	mu  sync.Mutex
	due map[identity.ID]time.Time // when a list served here first loses a command

	stop context.CancelFunc
	done chan struct{}
}

// version returns the version of a list read now.
func (l *commandLists) version(now time.Time) uint64 {
	v := uint64(max(now.UnixMicro(), 0))
	for {
		last := l.last.Load()
		next := max(v, last+1)
		if l.last.CompareAndSwap(last, next) {
			return next
		}
	}
}

// track remembers that a list served for dev loses a command at at (zero
// for never).
func (l *commandLists) track(dev identity.ID, at time.Time) {
	if at.IsZero() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if old, ok := l.due[dev]; ok && !at.Before(old) {
		return
	}
	if l.due == nil {
		l.due = make(map[identity.ID]time.Time)
	}
	l.due[dev] = at
}

// takeDue returns the devices whose lists have lost a command by now, and
// forgets them.
func (l *commandLists) takeDue(now time.Time) []identity.ID {
	l.mu.Lock()
	defer l.mu.Unlock()
	var devs []identity.ID
	for dev, at := range l.due {
		if !now.Before(at) {
			devs = append(devs, dev)
			delete(l.due, dev)
		}
	}
	return devs
}

// startExpiry starts the loop that expires commands every expiryPeriod.
func (n *Node) startExpiry() {
	ctx, cancel := context.WithCancel(context.Background())
	n.cmds.stop, n.cmds.done = cancel, make(chan struct{})
	go func() {
		defer close(n.cmds.done)
		t := time.NewTicker(expiryPeriod)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				n.expireCommands(ctx)
			}
		}
	}()
}

// stopExpiry stops the expiry loop, if it runs, and waits for it.
func (n *Node) stopExpiry() {
	if n.cmds.stop != nil {
		n.cmds.stop()
		<-n.cmds.done
	}
}

// expireCommands marks Expired the commands that have lapsed by the
// node's clock, in the whole store, and notifies the observers here of
// the lists this node served that lost one. Those notifications are this
// node's alone, not changes for every node (changed): each node tracks
// the lists it served itself.
func (n *Node) expireCommands(ctx context.Context) {
	now := n.now()
	if _, err := n.store.ExpireCommands(ctx, now); err != nil && ctx.Err() == nil {
		n.log.Warn("cloud: expiring commands", "err", err)
	}
	for _, dev := range n.cmds.takeDue(now) {
		n.notify(ctx, protocol.CommandsPath, dev)
	}
}
