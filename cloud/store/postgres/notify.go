package postgres

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sensible-iot/sensible/cloud/store"
)

// channel is the PostgreSQL notification channel that carries every
// topic. A notification on it is its topic, a space, and its payload in
// standard base64: under 1,500 bytes, well below NOTIFY's 8,000.
const channel = "sensible_store"

// How the listener keeps its connection.
const (
	// minBackoff and maxBackoff bound the wait before the listener
	// connects again after its connection failed; the wait doubles with
	// each failure in a row.
	minBackoff = 50 * time.Millisecond
	maxBackoff = 10 * time.Second
	// pingEvery is how long the listener waits for a notification before
	// it checks that its connection still works, and pingTimeout how
	// long that check may take.
	pingEvery   = 30 * time.Second
	pingTimeout = 10 * time.Second
	// connectTimeout bounds connecting and starting to listen.
	connectTimeout = 30 * time.Second
	// closeTimeout bounds saying goodbye to the server.
	closeTimeout = time.Second
)

// A notifier is a store.Notifier through PostgreSQL's LISTEN and NOTIFY.
// Notify sends with pg_notify through the store's connections. The first
// Listen starts the listener: a goroutine with a connection of its own
// that LISTENs on the channel and hands what arrives to a
// store.LocalNotifier, which delivers it to this node's subscriptions.
// When the connection fails, the listener connects again, waiting
// longer after each failure, and once it listens again it has every
// subscription resync.
type notifier struct {
	db    *sql.DB
	cc    *pgx.ConnConfig
	log   *slog.Logger
	local store.LocalNotifier

	mu      sync.Mutex
	started bool
	closed  bool
	up      chan struct{} // closed while the listener listens
	isUp    bool
	lastErr error              // why the listener last failed
	stop    context.CancelFunc // stops the listener
	done    chan struct{}      // closed when the listener has stopped
}

func newNotifier(db *sql.DB, cc *pgx.ConnConfig, log *slog.Logger) *notifier {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &notifier{db: db, cc: cc, log: log, up: make(chan struct{}), done: make(chan struct{})}
}

var _ store.Notifier = (*notifier)(nil)

// Notify implements store.Notifier: pg_notify, in a transaction of its
// own, so that the notification is sent when Notify returns.
func (n *notifier) Notify(ctx context.Context, topic string, payload []byte) error {
	if err := store.CheckNotification(topic, payload); err != nil {
		return err
	}
	n.mu.Lock()
	closed := n.closed
	n.mu.Unlock()
	if closed {
		return store.ErrClosed
	}
	_, err := n.db.ExecContext(ctx, `SELECT pg_notify($1, $2)`, channel, topic+" "+base64.StdEncoding.EncodeToString(payload))
	return err
}

// Listen implements store.Notifier. It subscribes and then waits until
// the listener listens, starting it if it has not started: a
// notification sent after that reaches the subscription, or the
// listener's next failure has it resync.
func (n *notifier) Listen(ctx context.Context, topics ...string) (*store.Subscription, error) {
	sub, err := n.local.Listen(ctx, topics...)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		sub.Close()
		return nil, store.ErrClosed
	}
	if !n.started {
		n.started = true
		var lctx context.Context
		lctx, n.stop = context.WithCancel(context.Background())
		go n.run(lctx)
	}
	up := n.up
	n.mu.Unlock()
	select {
	case <-up:
		return sub, nil
	case <-n.done:
		sub.Close()
		return nil, store.ErrClosed
	case <-ctx.Done():
		sub.Close()
		n.mu.Lock()
		last := n.lastErr
		n.mu.Unlock()
		if last != nil {
			return nil, fmt.Errorf("postgres: not listening: %w (the last attempt failed: %v)", ctx.Err(), last)
		}
		return nil, ctx.Err()
	}
}

// Close stops the listener, waits for it, and ends every subscription.
// It is safe to call more than once.
func (n *notifier) Close() error {
	n.mu.Lock()
	n.closed = true
	stop := n.stop
	n.mu.Unlock()
	if stop != nil {
		stop()
		<-n.done
	}
	return n.local.Close()
}

// run is the listener: it listens until ctx is done, connecting again
// after each failure.
func (n *notifier) run(ctx context.Context) {
	defer close(n.done)
	wait := minBackoff
	listened := false
	for {
		err := n.listen(ctx, func() {
			n.mu.Lock()
			n.isUp, n.lastErr = true, nil
			close(n.up)
			n.mu.Unlock()
			if listened {
				n.local.Resync()
			}
			listened, wait = true, minBackoff
		})
		n.mu.Lock()
		if n.isUp {
			n.isUp, n.up = false, make(chan struct{})
		}
		n.lastErr = err
		n.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		// Half the wait, plus up to as much again at random, so that
		// nodes do not all connect at once.
		d := wait/2 + rand.N(wait/2+1)
		n.log.Warn("postgres: the listener's connection failed; connecting again", "err", err, "after", d)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, maxBackoff)
	}
}

// listen connects, LISTENs, calls listening, and hands every
// notification to the local notifier until the connection fails or ctx
// is done. It returns why it stopped.
func (n *notifier) listen(ctx context.Context, listening func()) error {
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, n.cc)
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		conn.Close(ctx)
	}()
	if _, err := conn.Exec(cctx, "LISTEN "+channel); err != nil {
		return err
	}
	listening()
	for {
		wctx, cancel := context.WithTimeout(ctx, pingEvery)
		nt, err := conn.WaitForNotification(wctx)
		idle := wctx.Err() != nil && ctx.Err() == nil
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil && idle:
			pctx, cancel := context.WithTimeout(ctx, pingTimeout)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return err
			}
		case err != nil:
			return err
		case nt.Channel == channel:
			n.deliver(nt.Payload)
		}
	}
}

// deliver hands a notification from the channel to the local notifier,
// ignoring one that this package did not write.
func (n *notifier) deliver(msg string) {
	topic, enc, ok := strings.Cut(msg, " ")
	payload, err := base64.StdEncoding.DecodeString(enc)
	if !ok || err != nil {
		n.log.Debug("postgres: ignoring a notification not in this package's form", "payload", msg)
		return
	}
	if err := n.local.Notify(context.Background(), topic, payload); err != nil && !errors.Is(err, store.ErrClosed) {
		n.log.Debug("postgres: ignoring a notification", "err", err)
	}
}
