package cloud

import (
	"context"
	"errors"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// CoAP response codes the transport has no name for.
const (
	// preconditionFailed is 4.12 (RFC 7252): a report that names a
	// desired version that is no longer the current one.
	preconditionFailed transport.Code = 0x8c
	// conflict is 4.09 (RFC 8132): a command result that clashes with how
	// the command already ended.
	conflict transport.Code = 0x89
)

// stateResources are the resources of the back channel: /v1/state and
// /v1/commands, both observable.
func (n *Node) stateResources() []transport.Resource {
	both := []transport.Method{transport.GET, transport.POST}
	return []transport.Resource{
		{Path: protocol.StatePath, Methods: both, Handler: n.serveState, MaxBody: protocol.MaxBody,
			Attributes: []string{`rt="sensible.state"`}, Observable: true},
		{Path: protocol.CommandsPath, Methods: both, Handler: n.serveCommands, MaxBody: protocol.MaxBody,
			Attributes: []string{`rt="sensible.commands"`}, Observable: true, ConfirmNotifications: true},
	}
}

// changed is the one way a change to what a device observes is made
// known: every write that changes the answer to a GET of topic (a
// resource path, protocol.StatePath or protocol.CommandsPath) for device
// dev calls it once the write is stored. It returns nothing: the change
// is stored whether or not anyone hears of it, and an observer that
// misses a notification gets the value when it registers again.
//
// The change is published through the store's notifier to every node
// sharing the store, this one included, and each runs notify for its own
// observers (followChanges); if publishing fails, this node's observers
// are still told.
func (n *Node) changed(ctx context.Context, topic string, dev identity.ID) {
	msg := []byte(topic + " " + dev.String())
	if err := n.store.Notifier().Notify(context.WithoutCancel(ctx), topicChanges, msg); err != nil {
		n.log.Warn("cloud: publishing a change", "topic", topic, "device", dev, "err", err)
		n.notify(ctx, topic, dev)
	}
}

// notify sends the observers of topic for device dev on this node the
// value as it is now, read again from the store, so that a notification
// never carries a value older than the change that caused it. It is what
// a node runs when it hears of a change, its own or another node's.
func (n *Node) notify(ctx context.Context, topic string, dev identity.ID) {
	// The change is stored: tell the observers even if the caller's
	// request ends now.
	ctx = context.WithoutCancel(ctx)
	var err error
	switch topic {
	case protocol.StatePath:
		err = n.notifyState(ctx, dev)
	case protocol.CommandsPath:
		err = n.notifyCommands(ctx, dev)
	case protocol.ConsentPath:
		err = n.devices.notifyConsents(ctx, dev)
	default:
		n.log.Error("cloud: a change of an unknown topic", "topic", topic, "device", dev)
		return
	}
	if err != nil {
		n.log.Warn("cloud: notifying observers", "topic", topic, "device", dev, "err", err)
	}
}

// send notifies the observers of topic for device dev of v, or of fetch
// when v encodes to more than protocol.MaxNotificationBody (notifications
// are not sent block-wise; fetch holds the version and Fetch, and the
// device GETs the value). It returns how many observers got v itself.
func (n *Node) send(ctx context.Context, topic string, dev identity.ID, v, fetch any) (int, error) {
	b, err := codec.Marshal(v)
	if err != nil {
		return 0, err
	}
	if len(b) > protocol.MaxNotificationBody {
		_, err := n.srv.Notify(ctx, topic, dev, fetch)
		return 0, err
	}
	return n.srv.Notify(ctx, topic, dev, encoded(b))
}

// encoded is a value already encoded as CBOR.
type encoded []byte

// MarshalCBOR returns e as it is.
func (e encoded) MarshalCBOR() ([]byte, error) { return e, nil }

// requester returns the device that made a request to a back-channel
// resource, once the registry says it may: a device the registry does
// not know (one admitted by its manufacturer chain that has not enrolled)
// is answered 4.04, and one no longer active (suspended through another
// node while its session here lasted) 4.01.
func (n *Node) requester(ctx context.Context, r *transport.Request) (identity.ID, error) {
	d, err := n.store.Device(ctx, r.Device)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return identity.ID{}, transport.Errorf(transport.NotFound, "device not enrolled: POST %s first", protocol.EnrollPath)
	case err != nil:
		return identity.ID{}, err
	case d.Standing != store.Active:
		return identity.ID{}, transport.Errorf(transport.Unauthorized, "device refused")
	}
	return d.ID, nil
}

// answer maps what the store refused to the answer a device gets: a stale
// version 4.12, a document over its limit 4.13, no such thing 4.04, a
// conflict 4.09, an invalid value 4.00. Other errors are failures (5.00).
func answer(err error) error {
	var stale *store.StaleError
	var large *store.TooLargeError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &stale):
		return transport.Errorf(preconditionFailed, "%s is at version %d, not %d", stale.What, stale.Current, stale.Named)
	case errors.As(err, &large):
		return transport.Errorf(transport.RequestEntityTooLarge, "%s of %d bytes, limit %d", large.What, large.Size, large.Limit)
	case errors.Is(err, store.ErrNotFound):
		return transport.Errorf(transport.NotFound, "not found")
	case errors.Is(err, store.ErrConflict):
		return transport.Errorf(conflict, "conflicts with what is stored")
	case errors.Is(err, store.ErrInvalid):
		return transport.Errorf(transport.BadRequest, "cannot be stored")
	}
	return err
}
