package store

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
)

// Limits of notifications, the same for every Notifier.
const (
	// MaxTopic is the most bytes of a topic.
	MaxTopic = 64
	// MaxPayload is the most bytes of a notification's payload. A
	// notification says what changed (a device ID and a version), not
	// the change; a larger payload is refused with a *TooLargeError.
	MaxPayload = 1024
	// SubscriptionBuffer is how many notifications a subscription holds
	// for its reader. A subscription that is full when another arrives
	// drops what it holds and tells its reader to resync, so that a slow
	// reader never holds up the notifier or other subscriptions.
	SubscriptionBuffer = 256
)

// A Notifier carries change notifications between the nodes that share
// a store's database, so that an observer on one node hears of a change
// made on another and re-reads what changed. Delivery is best effort,
// but never silently lost: a subscription that may have missed a
// notification says so with a resync (Notification.Resync), after
// which its reader re-reads whatever its topics cover.
//
// A store's Notifier is safe for concurrent use and lasts until the
// store is closed.
type Notifier interface {
	// Notify sends a notification on a topic to every subscription to
	// the topic, on every node, this one included. It returns once the
	// notification is sent, before it is delivered. A topic that
	// CheckNotification refuses is ErrInvalid, a payload over MaxPayload
	// a *TooLargeError.
	Notify(ctx context.Context, topic string, payload []byte) error
	// Listen subscribes to notifications on the topics: every
	// notification on them sent after Listen returns reaches the
	// subscription, or the subscription reports a resync. ctx bounds the
	// call, not the subscription, which lasts until it or the notifier
	// is closed. No topics, or a topic CheckNotification refuses, is
	// ErrInvalid.
	Listen(ctx context.Context, topics ...string) (*Subscription, error)
}

// A Notification is what a subscription delivers.
type Notification struct {
	// Topic is the topic the notification was sent on.
	Topic string
	// Payload is what the sender sent; each subscription gets its own
	// copy.
	Payload []byte
	// Resync means that notifications may have been lost before this
	// one: the reader should re-read whatever its subscription's topics
	// cover. A resync has no topic and no payload.
	Resync bool
}

// CheckNotification reports whether a notification can be sent:
// ErrInvalid for a topic that is empty, over MaxTopic bytes, or holds a
// byte other than an ASCII letter, a digit or one of "._-:/"; a
// *TooLargeError for a payload over MaxPayload. Every Notifier checks
// with it, so that each refuses the same.
func CheckNotification(topic string, payload []byte) error {
	if err := checkTopic(topic); err != nil {
		return err
	}
	if len(payload) > MaxPayload {
		return &TooLargeError{What: "notification payload", Size: len(payload), Limit: MaxPayload}
	}
	return nil
}

func checkTopic(topic string) error {
	if topic == "" || len(topic) > MaxTopic {
		return fmt.Errorf("%w: a topic has 1 to %d bytes, not %d", ErrInvalid, MaxTopic, len(topic))
	}
	for i := 0; i < len(topic); i++ {
		c := topic[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-' || c == ':' || c == '/') {
			return fmt.Errorf("%w: topic %q holds byte %#x", ErrInvalid, topic, c)
		}
	}
	return nil
}

// A LocalNotifier delivers notifications to the subscriptions of one
// process. It is the Notifier of a store whose nodes are one process
// (SQLite), and the fan-out behind a Notifier that carries notifications
// between processes: such a notifier hands what it receives to Notify
// and calls Resync when it may have missed some. Its zero value is
// ready to use; it is safe for concurrent use.
type LocalNotifier struct {
	mu     sync.Mutex
	subs   map[*Subscription]struct{}
	closed bool
}

var _ Notifier = (*LocalNotifier)(nil)

// Notify delivers a notification to every subscription to its topic. It
// never waits for a reader. After Close it returns ErrClosed.
func (n *LocalNotifier) Notify(ctx context.Context, topic string, payload []byte) error {
	if err := CheckNotification(topic, payload); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	for s := range n.subs {
		if slices.Contains(s.topics, topic) {
			s.deliver(Notification{Topic: topic, Payload: bytes.Clone(payload)})
		}
	}
	return nil
}

// Listen subscribes to notifications on the topics. After Close it
// returns ErrClosed.
func (n *LocalNotifier) Listen(ctx context.Context, topics ...string) (*Subscription, error) {
	if len(topics) == 0 {
		return nil, fmt.Errorf("%w: a subscription names at least one topic", ErrInvalid)
	}
	for _, t := range topics {
		if err := checkTopic(t); err != nil {
			return nil, err
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, ErrClosed
	}
	s := &Subscription{
		n:      n,
		topics: slices.Clone(topics),
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	if n.subs == nil {
		n.subs = make(map[*Subscription]struct{})
	}
	n.subs[s] = struct{}{}
	return s, nil
}

// Resync tells every subscription to resync: its reader's next
// notification is a resync. A notifier that carries notifications
// between processes calls it when it may have missed some, once it
// receives them again.
func (n *LocalNotifier) Resync() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for s := range n.subs {
		s.markResync()
	}
}

// Close ends every subscription and refuses later calls with ErrClosed.
// It is safe to call more than once.
func (n *LocalNotifier) Close() error {
	n.mu.Lock()
	subs := n.subs
	n.subs, n.closed = nil, true
	n.mu.Unlock()
	for s := range subs {
		s.end()
	}
	return nil
}

// A Subscription receives the notifications on its topics, in the order
// its notifier delivered them, through Next. It holds up to
// SubscriptionBuffer of them for its reader; when a notification arrives
// while it is full, it drops what it holds and delivers a resync next. It
// is safe for concurrent use.
type Subscription struct {
	n      *LocalNotifier
	topics []string
	wake   chan struct{} // holds a token when there may be something to read
	done   chan struct{} // closed when the subscription ends

	mu     sync.Mutex
	queue  []Notification
	resync bool
	ended  bool
}

// Next returns the next notification, waiting for one until ctx is done
// or the subscription ends, when it returns ErrClosed. A resync comes
// before anything else held.
func (s *Subscription) Next(ctx context.Context) (Notification, error) {
	for {
		s.mu.Lock()
		switch {
		case s.ended:
			s.mu.Unlock()
			return Notification{}, ErrClosed
		case s.resync:
			s.resync = false
			s.mu.Unlock()
			return Notification{Resync: true}, nil
		case len(s.queue) > 0:
			nt := s.queue[0]
			s.queue[0] = Notification{}
			s.queue = s.queue[1:]
			if len(s.queue) > 0 {
				s.signal() // for another reader
			}
			s.mu.Unlock()
			return nt, nil
		}
		s.mu.Unlock()
		select {
		case <-s.wake:
		case <-s.done:
		case <-ctx.Done():
			return Notification{}, ctx.Err()
		}
	}
}

// Close ends the subscription: Next returns ErrClosed from then on. It is
// safe to call more than once.
func (s *Subscription) Close() error {
	s.n.mu.Lock()
	delete(s.n.subs, s)
	s.n.mu.Unlock()
	s.end()
	return nil
}

// deliver queues a notification, or, when the queue is full, drops the
// queue and marks the subscription to resync.
func (s *Subscription) deliver(nt Notification) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	if len(s.queue) >= SubscriptionBuffer {
		clear(s.queue)
		s.queue = s.queue[:0]
		s.resync = true
	} else {
		s.queue = append(s.queue, nt)
	}
	s.signal()
}

// markResync drops what the subscription holds: a resync covers it.
func (s *Subscription) markResync() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	clear(s.queue)
	s.queue = s.queue[:0]
	s.resync = true
	s.signal()
}

// end ends the subscription, waking its readers.
func (s *Subscription) end() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ended {
		s.ended, s.queue = true, nil
		close(s.done)
	}
}

// signal wakes a reader, if none is woken already.
func (s *Subscription) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}
