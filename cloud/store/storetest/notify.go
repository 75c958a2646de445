package storetest

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
)

// NotifyTimeout is how long the suite waits for a notification.
const NotifyTimeout = 10 * time.Second

// Next returns sub's next notification, failing the test if none comes
// within NotifyTimeout.
func Next(t testing.TB, sub *store.Subscription) store.Notification {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), NotifyTimeout)
	defer cancel()
	nt, err := sub.Next(ctx)
	if err != nil {
		t.Fatalf("waiting for a notification: %v", err)
	}
	return nt
}

// Expect fails the test unless sub's next notification is one on topic
// with payload.
func Expect(t testing.TB, sub *store.Subscription, topic, payload string) {
	t.Helper()
	nt := Next(t, sub)
	if nt.Resync || nt.Topic != topic || !bytes.Equal(nt.Payload, []byte(payload)) {
		t.Fatalf("got notification %+v, want %q on %s", nt, payload, topic)
	}
}

// listen subscribes to the topics through n, failing the test on an
// error, and closes the subscription when the test ends.
func listen(t *testing.T, n store.Notifier, topics ...string) *store.Subscription {
	t.Helper()
	sub, err := n.Listen(t.Context(), topics...)
	ok(t, err, "Listen")
	t.Cleanup(func() { sub.Close() })
	return sub
}

func testNotify(t *testing.T, s store.Store) {
	ctx := t.Context()
	n := s.Notifier()
	sub := listen(t, n, "devices", "commands")
	other := listen(t, n, "claims", "devices")
	binary := string([]byte{0, 0xff, ' ', '\n'})
	big := strings.Repeat("x", store.MaxPayload)
	for _, m := range []struct{ topic, payload string }{
		{"devices", "d1 v2"},
		{"claims", ""},
		{"commands", binary},
		{"unheard", "x"},
		{"devices", big},
	} {
		ok(t, n.Notify(ctx, m.topic, []byte(m.payload)), "Notify on "+m.topic)
	}
	Expect(t, sub, "devices", "d1 v2")
	Expect(t, sub, "commands", binary)
	Expect(t, sub, "devices", big)
	Expect(t, other, "devices", "d1 v2")
	Expect(t, other, "claims", "")
	Expect(t, other, "devices", big)

	// Each subscription has its own copy of a payload.
	ok(t, n.Notify(ctx, "devices", []byte("shared")), "Notify")
	a, b := Next(t, sub), Next(t, other)
	a.Payload[0] = 'X'
	same(t, string(b.Payload), "shared", "a payload after another subscription changed its copy")

	for _, topic := range []string{"", "a b", "ünicode", "nul\x00", strings.Repeat("t", store.MaxTopic+1)} {
		is(t, n.Notify(ctx, topic, nil), store.ErrInvalid, "Notify on topic "+strconv.Quote(topic))
		_, err := n.Listen(ctx, "ok", topic)
		is(t, err, store.ErrInvalid, "Listen to topic "+strconv.Quote(topic))
	}
	ok(t, n.Notify(ctx, strings.Repeat("t", store.MaxTopic), nil), "Notify on the longest topic")
	ok(t, n.Notify(ctx, "a-Z_0.9:/x", nil), "Notify on a topic of every kind of byte")
	is(t, n.Notify(ctx, "devices", make([]byte, store.MaxPayload+1)), store.ErrTooLarge, "Notify of a payload over MaxPayload")
	_, err := n.Listen(ctx)
	is(t, err, store.ErrInvalid, "Listen to no topics")

	// Next waits no longer than its context.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err = other.Next(short)
	is(t, err, context.DeadlineExceeded, "Next with nothing sent")

	ok(t, sub.Close(), "Close")
	ok(t, sub.Close(), "Close again")
	_, err = sub.Next(ctx)
	is(t, err, store.ErrClosed, "Next after Close")
	ok(t, n.Notify(ctx, "devices", []byte("after")), "Notify")
	Expect(t, other, "devices", "after")
}

// testSlowSubscriber sends more than a subscription holds: a subscriber
// that does not read is told to resync and holds up no one, and one that
// reads each as it comes gets every notification in order.
func testSlowSubscriber(t *testing.T, s store.Store) {
	ctx := t.Context()
	n := s.Notifier()
	slow, fast := listen(t, n, "t"), listen(t, n, "t")
	const total = store.SubscriptionBuffer + 10
	for i := range total {
		ok(t, n.Notify(ctx, "t", []byte(strconv.Itoa(i))), "Notify")
		Expect(t, fast, "t", strconv.Itoa(i))
	}
	if nt := Next(t, slow); !nt.Resync {
		t.Fatalf("a subscription that overflowed delivered %+v first, want a resync", nt)
	}
	// It goes on: a later notification arrives, after at most what it
	// holds now.
	ok(t, n.Notify(ctx, "t", []byte("later")), "Notify")
	for i := 0; ; i++ {
		nt := Next(t, slow)
		if nt.Resync || i > total {
			t.Fatalf("after a resync: %+v", nt)
		}
		if string(nt.Payload) == "later" {
			break
		}
	}
}

// testNotifierClose checks that closing the store ends its
// subscriptions and notifier.
func testNotifierClose(t *testing.T, s store.Store) {
	ctx := t.Context()
	n := s.Notifier()
	sub := listen(t, n, "t")
	waiting := make(chan error, 1)
	go func() {
		_, err := sub.Next(ctx)
		waiting <- err
	}()
	ok(t, s.Close(), "Close")
	select {
	case err := <-waiting:
		is(t, err, store.ErrClosed, "Next waiting when the store closed")
	case <-time.After(NotifyTimeout):
		t.Fatal("Next still waits after the store closed")
	}
	_, err := sub.Next(ctx)
	is(t, err, store.ErrClosed, "Next after the store closed")
	is(t, n.Notify(ctx, "t", nil), store.ErrClosed, "Notify after the store closed")
	_, err = n.Listen(ctx, "t")
	is(t, err, store.ErrClosed, "Listen after the store closed")
}
