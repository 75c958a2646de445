package cloud

import (
	"context"
	"errors"
	"fmt"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/internal/codec"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// A DeviceState is a device's desired and reported state.
type DeviceState struct {
	// Desired is the desired state as the device gets it: its version (0
	// before the first) and settings.
	Desired protocol.Desired
	// Reported is the device's last report: the desired version it
	// answers, the settings in force, and per setting why a desired value
	// was not applied. Zero before the first report.
	Reported protocol.Reported
	// ReportedVersion counts the reports: 1 for the first, one more for
	// each after; 0 before the first.
	ReportedVersion uint64
}

// Delta returns the desired settings that the report does not hold with
// an equal value: what the device has yet to apply, or could not
// (Reported.Errors may say why). A setting the device reports but the
// cloud does not desire is not in it. An integer and a float of the same
// value are equal. Delta returns nil when the device is in the desired
// state.
func (s DeviceState) Delta() protocol.Settings {
	var d protocol.Settings
	for name, want := range s.Desired.Settings {
		if have, ok := s.Reported.Settings[name]; ok && sameSetting(want, have) {
			continue
		}
		if d == nil {
			d = protocol.Settings{}
		}
		d[name] = want
	}
	return d
}

// sameSetting reports whether two setting values, as decoded, are equal:
// of one type and equal, or an integer and a float of the same value (a
// device may write 22.0 for 22).
func sameSetting(a, b any) bool {
	if a == b {
		return true
	}
	switch x := a.(type) {
	case int64:
		f, ok := b.(float64)
		return ok && intFloat(x, f)
	case float64:
		i, ok := b.(int64)
		return ok && intFloat(i, x)
	}
	return false
}

// intFloat reports whether f is exactly the integer i.
func intFloat(i int64, f float64) bool {
	return f >= -(1<<63) && f < 1<<63 && int64(f) == i && float64(i) == f
}

// SetDesired replaces a device's desired state with settings and returns
// its new version, then notifies the device's observers of /v1/state at
// once (a value over protocol.MaxNotificationBody is notified with Fetch,
// and the device GETs it). With expected not 0 the current version must be
// expected, or the error matches store.ErrStale (a *store.StaleError says
// which version is current); 0 replaces whatever is there.
//
// Settings the device could not decode (a value that is no setting, a
// name or text that is not UTF-8, more than 256 settings) match
// store.ErrInvalid; settings that encode to more than store.MaxDocument
// bytes match store.ErrTooLarge (a *store.TooLargeError); an unknown
// device matches store.ErrNotFound.
func (n *Node) SetDesired(ctx context.Context, dev identity.ID, settings protocol.Settings, expected uint64) (uint64, error) {
	doc, err := encodeSettings("desired state", settings)
	if err != nil {
		return 0, err
	}
	v, err := n.store.SetDesired(ctx, dev, doc, expected)
	if err != nil {
		return 0, fmt.Errorf("cloud: desired state of device %s: %w", dev, err)
	}
	n.changed(ctx, protocol.StatePath, dev)
	return v, nil
}

// State returns a device's desired and reported state. An unknown device
// matches store.ErrNotFound.
func (n *Node) State(ctx context.Context, dev identity.ID) (DeviceState, error) {
	st, err := n.store.State(ctx, dev)
	if err != nil {
		return DeviceState{}, fmt.Errorf("cloud: state of device %s: %w", dev, err)
	}
	d, err := decodeDesired(st.Desired)
	if err != nil {
		return DeviceState{}, err
	}
	s := DeviceState{Desired: d, ReportedVersion: st.Reported.Version}
	if len(st.Reported.Body) > 0 {
		if err := codec.Unmarshal(st.Reported.Body, &s.Reported); err != nil {
			return DeviceState{}, fmt.Errorf("cloud: reported state %d of device %s: %w", st.Reported.Version, dev, err)
		}
	}
	return s, nil
}

// StateDelta returns the desired settings a device does not report in
// force with an equal value (DeviceState.Delta): nil when the device is in
// the desired state. An unknown device matches store.ErrNotFound.
func (n *Node) StateDelta(ctx context.Context, dev identity.ID) (protocol.Settings, error) {
	s, err := n.State(ctx, dev)
	if err != nil {
		return nil, err
	}
	return s.Delta(), nil
}

// encodeSettings encodes settings as the store keeps them, a CBOR map,
// refusing with store.ErrInvalid what a device could not decode: the
// encoding must decode again under the limits every decoder of the
// protocol has by default. A document too large for the store is left for
// the store to refuse with its typed error.
func encodeSettings(what string, s protocol.Settings) ([]byte, error) {
	b, err := codec.Marshal(s)
	if err == nil && len(b) <= store.MaxDocument {
		var back protocol.Settings
		err = codec.Unmarshal(b, &back)
	}
	if err != nil {
		return nil, fmt.Errorf("cloud: %s: %w: %w: %v", what, errSettings, store.ErrInvalid, err)
	}
	return b, nil
}

// errSettings marks settings a device could not decode; it matches
// store.ErrInvalid too.
var errSettings = errors.New("settings a device cannot decode")

// decodeDesired returns a stored desired state as the device gets it.
func decodeDesired(doc store.Document) (protocol.Desired, error) {
	d := protocol.Desired{Version: doc.Version}
	if len(doc.Body) > 0 {
		if err := codec.Unmarshal(doc.Body, &d.Settings); err != nil {
			return protocol.Desired{}, fmt.Errorf("cloud: desired state %d: %w", doc.Version, err)
		}
	}
	return d, nil
}

// desired returns a device's desired state as the device gets it.
func (n *Node) desired(ctx context.Context, dev identity.ID) (protocol.Desired, error) {
	st, err := n.store.State(ctx, dev)
	if err != nil {
		return protocol.Desired{}, err
	}
	return decodeDesired(st.Desired)
}

// serveState serves /v1/state: GET (observable) answers the desired state;
// POST takes a report, which must name the current desired version (4.12
// otherwise: the device GETs the desired state and applies it first).
func (n *Node) serveState(ctx context.Context, r *transport.Request) (any, error) {
	dev, err := n.requester(ctx, r)
	if err != nil {
		return nil, err
	}
	if r.Method == transport.GET {
		return n.desired(ctx, dev)
	}
	var rep protocol.Reported
	if err := r.Decode(&rep); err != nil {
		return nil, err
	}
	doc, err := codec.Marshal(rep)
	if err != nil {
		return nil, err
	}
	_, err = n.store.SetReported(ctx, dev, doc, rep.Version)
	return nil, answer(err)
}

// notifyState sends a device's desired state to its observers here.
func (n *Node) notifyState(ctx context.Context, dev identity.ID) error {
	d, err := n.desired(ctx, dev)
	if err != nil {
		return err
	}
	_, err = n.send(ctx, protocol.StatePath, dev, d, protocol.Desired{Version: d.Version, Fetch: true})
	return err
}
