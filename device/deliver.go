package device

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// dialTimeout bounds one attempt to connect to the cloud.
const dialTimeout = 30 * time.Second

// batchBudget is what the readings of a batch may take, encoded, before
// the batch is encoded and measured against protocol.MaxBatchBody: room
// for its header.
const batchBudget = protocol.MaxBatchBody - 512

// A sendable is a formed batch, as the outbox keeps it.
type sendable struct {
	seq uint64
	rec *batchRecord
}

// An outcome is what became of one attempt to send a batch.
type outcome struct {
	acked      bool
	drop       DropReason    // the cloud refused it for good
	err        error         // why it is to be tried again, or dropped
	retryAfter time.Duration // the cloud's Max-Age
}

// deliver sends the outbox's batches, oldest first, one at a time, so
// that each stream's readings reach the cloud in the order recorded,
// until ctx ends.
func (a *Agent) deliver(ctx context.Context) {
	defer a.wg.Done()
	failures := 0
	// retry counts a failure, remembers it for Health, logs it and waits
	// before the next attempt, at least atLeast.
	retry := func(err error, atLeast time.Duration, msg string, args ...any) {
		failures++
		a.failed(err)
		a.logFailure(ctx, failures, msg, append(args, "err", err)...)
		a.sleep(ctx, max(a.backoff(failures), atLeast))
	}
	outboxFailed := func(err error) {
		failures++
		a.failed(err)
		a.log.Error("device: the outbox failed", "err", err)
		a.sleep(ctx, a.backoff(failures))
	}
	var ready time.Time // when the rate allows the next post
	for ctx.Err() == nil {
		if wait := time.Until(ready); wait > 0 {
			a.sleep(ctx, wait)
		}
		// Consent captured on the device goes first: the readings may
		// need it.
		if err := a.postUnposted(ctx); err != nil {
			if ctx.Err() == nil {
				retry(err, 0, "device: posting consent failed, trying again")
			}
			continue
		}
		b, err := a.next(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			outboxFailed(err)
			continue
		}
		if b == nil {
			select {
			case <-a.wake:
			case <-ctx.Done():
			}
			continue
		}
		sctx, ok := a.beginSend(ctx, b.seq)
		if !ok {
			continue // withdrawn meanwhile
		}
		ready = time.Now().Add(a.pace(len(b.rec.body)))
		out := a.send(sctx, b)
		if a.endSend(sctx) {
			continue // withdrawn while it was on its way: it left the outbox
		}
		key := protocol.Key{Epoch: a.box.epoch, Seq: b.seq}
		switch {
		case out.acked:
			err = a.box.submit(context.WithoutCancel(ctx), a.box.finish(b.seq, "", a.now()), false)
		case out.drop != "":
			a.log.Warn("device: batch refused by the cloud, dropped", "reason", string(out.drop), "key", key,
				"readings", b.rec.readings, "err", out.err)
			if out.drop == DropUnknownManifest && a.shapedByRunning(b) {
				a.refetch() // the cloud has another manifest: run it
			}
			err = a.box.submit(context.WithoutCancel(ctx), a.box.finish(b.seq, out.drop, a.now()), false)
		default:
			if ctx.Err() == nil {
				retry(out.err, out.retryAfter, "device: delivery failed, trying again", "key", key)
			}
			continue
		}
		if err != nil {
			outboxFailed(err)
			continue
		}
		failures = 0
		a.mu.Lock()
		a.lastErr = ""
		a.mu.Unlock()
	}
}

// failed remembers why delivery failed, for Health.
func (a *Agent) failed(err error) {
	a.mu.Lock()
	a.lastErr = err.Error()
	a.mu.Unlock()
}

// pace returns delivery's share of time for posting a body of n bytes
// at Config.SendRate: one request, or over UDP and DTLS one for each
// block of it.
func (a *Agent) pace(n int) time.Duration {
	if a.cfg.SendRate <= 0 {
		return 0
	}
	requests := 1
	if strings.HasPrefix(a.cfg.URL, "coap://") || strings.HasPrefix(a.cfg.URL, "coaps://") {
		requests = max(1, (n+blockSize-1)/blockSize)
	}
	return time.Duration(float64(requests) / a.cfg.SendRate * float64(time.Second))
}

// blockSize is the size of a block of a block-wise upload (Block1, SZX
// 6), docs/protocol.md 9.
const blockSize = 1024

// backoff returns the wait after the nth failure in a row: RetryBase
// doubled n-1 times, capped at RetryMax, less a random part of up to
// half of it.
func (a *Agent) backoff(n int) time.Duration {
	d := a.cfg.RetryMax
	if n-1 < 32 {
		if e := a.cfg.RetryBase << (n - 1); e > 0 && e < d {
			d = e
		}
	}
	return d - rand.N(d/2+1)
}

// sleep waits d or until ctx ends.
func (a *Agent) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// next returns the batch to send: the formed batch with the lowest
// sequence number, or a new one formed from the queue whose oldest
// reading is the oldest; nil when the outbox is empty.
func (a *Agent) next(ctx context.Context) (*sendable, error) {
	for ctx.Err() == nil {
		st, _ := a.box.snapshot()
		if len(st.batches) > 0 {
			seq := st.batches[0].seq
			rec, err := a.readBatch(seq)
			if err != nil {
				var oe *OutboxError
				if errors.As(err, &oe) {
					return nil, err
				}
				a.log.Warn("device: a formed batch does not decrypt, dropped", "seq", seq, "err", err)
				if err := a.box.submit(context.WithoutCancel(ctx), a.box.finish(seq, DropUnreadable, a.now()), false); err != nil {
					return nil, err
				}
				continue
			}
			return &sendable{seq: seq, rec: rec}, nil
		}
		queue, found := uint32(0), false
		for id, q := range st.queues {
			if q.readings > 0 && (!found || q.head < st.queues[queue].head) {
				queue, found = id, true
			}
		}
		if !found {
			return nil, nil
		}
		f, err := a.formation(queue, st.queues[queue].key, st.seq)
		if err != nil {
			return nil, err
		}
		if err := a.box.submit(context.WithoutCancel(ctx), a.box.form(f), false); err != nil {
			return nil, err
		}
		if f.stale || f.rec == nil {
			continue
		}
		return &sendable{seq: f.seq, rec: f.rec}, nil
	}
	return nil, ctx.Err()
}

// readBatch reads the formed batch seq.
func (a *Agent) readBatch(seq uint64) (*batchRecord, error) {
	var rec *batchRecord
	err := a.box.view(func(tx *bbolt.Tx) error {
		v := tx.Bucket([]byte(bucketBatches)).Get(u64(seq))
		if v == nil {
			return fmt.Errorf("device: batch %d is not in the outbox", seq)
		}
		plain, err := a.box.seal.open(nil, a.box.seal.ad(adBatch, 0, seq), v)
		if err != nil {
			return err
		}
		rec, err = decodeBatchRecord(plain)
		return err
	})
	return rec, err
}

// formation reads the oldest readings of a queue, as many as a batch
// takes (protocol.MaxReadings, protocol.MaxBatchBody), and encodes them
// as the batch seq. Readings that cannot be read, or are too large for a
// batch of their own, leave the queue with it, dropped.
func (a *Agent) formation(queue uint32, key queueKey, seq uint64) (*formation, error) {
	f := &formation{queue: queue, seq: seq}
	var readings []policy.Reading
	var ats []time.Time // when each was recorded
	err := a.box.view(func(tx *bbolt.Tx) error {
		qb := tx.Bucket([]byte(bucketReadings)).Bucket(u32(queue))
		if qb == nil {
			return nil
		}
		size := 0
		c := qb.Cursor()
		for k, v := c.First(); k != nil && len(readings) < protocol.MaxReadings; k, v = c.Next() {
			id := binary.BigEndian.Uint64(k)
			plain, err := a.box.seal.open(nil, a.box.seal.ad(adReading, queue, id), v)
			var e entry
			if err == nil {
				e, err = decodeEntry(plain)
			}
			if err != nil {
				f.ids = append(f.ids, id)
				f.dropped = append(f.dropped, DropUnreadable)
				continue
			}
			if size += len(plain); size > batchBudget && len(readings) > 0 {
				break
			}
			f.ids = append(f.ids, id)
			f.dropped = append(f.dropped, "")
			readings = append(readings, e.fields)
			ats = append(ats, e.at)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(readings) == 0 {
		return f, nil
	}
	b := protocol.Batch{Manifest: key.Manifest, Stream: key.Stream, Key: protocol.Key{Epoch: a.box.epoch, Seq: seq}, Partner: key.Partner}
	n := len(readings)
	for {
		b.Readings = readings[:n]
		body, err := b.MarshalCBOR()
		if err == nil && len(body) <= protocol.MaxBatchBody {
			f.rec = &batchRecord{queue: queue, readings: n, oldest: slices.MinFunc(ats[:n], time.Time.Compare), body: body}
			break
		}
		if n > 1 {
			n /= 2
			continue
		}
		// A reading that cannot travel even alone leaves the queue,
		// dropped; the next formation takes the rest.
		reason := DropTooLarge
		if err != nil {
			reason = DropUnreadable
		}
		a.log.Warn("device: a reading cannot be sent, dropped", "stream", key.Stream, "reason", string(reason), "err", err)
		first := 0
		for f.dropped[first] != "" {
			first++
		}
		f.dropped[first] = reason
		f.ids, f.dropped = f.ids[:first+1], f.dropped[:first+1]
		return f, nil
	}
	// Keep the readings in the batch and the unreadable ones before
	// them; the rest stay queued.
	in, cut := 0, len(f.ids)
	for i, d := range f.dropped {
		if d == "" {
			if in == n {
				cut = i
				break
			}
			in++
		}
	}
	f.ids, f.dropped = f.ids[:cut], f.dropped[:cut]
	f.val = a.box.seal.seal(nil, a.box.seal.ad(adBatch, 0, seq), appendBatchRecord(nil, f.rec))
	return f, nil
}

// send posts a batch to the cloud and says what came of it.
func (a *Agent) send(ctx context.Context, b *sendable) outcome {
	c, err := a.conn(ctx)
	if err != nil {
		return outcome{err: err}
	}
	var ack protocol.Ack
	err = c.DoRaw(ctx, transport.POST, protocol.TelemetryPath, protocol.FormatCBOR, b.rec.body, &ack)
	if err == nil {
		if want := (protocol.Key{Epoch: a.box.epoch, Seq: b.seq}); ack.Key != want {
			return outcome{err: fmt.Errorf("device: the cloud acknowledged %v for the batch %v", ack.Key, want)}
		}
		return outcome{acked: true}
	}
	var te *transport.Error
	if !errors.As(err, &te) {
		return outcome{err: err}
	}
	switch te.Code {
	case transport.BadRequest:
		if te.Diagnostic == protocol.DiagnosticUnknownManifest {
			return outcome{drop: DropUnknownManifest, err: err}
		}
		return outcome{drop: DropBadRequest, err: err}
	case transport.Forbidden:
		return outcome{drop: DropForbidden, err: err}
	case transport.RequestEntityTooLarge:
		return outcome{drop: DropTooLarge, err: err}
	case transport.UnsupportedFormat:
		return outcome{drop: DropUnsupported, err: err}
	}
	return outcome{err: err, retryAfter: te.RetryAfter}
}

// errWithdrawn stops the sending of a batch whose readings a withdrawal
// deleted.
var errWithdrawn = errors.New("device: the batch's consent was withdrawn")

// beginSend marks the batch seq as on its way, unless it has left the
// outbox, and returns the context of its sending, which stopSends
// cancels if a withdrawal deletes the batch meanwhile.
func (a *Agent) beginSend(ctx context.Context, seq uint64) (context.Context, bool) {
	a.sendMu.Lock()
	defer a.sendMu.Unlock()
	st, _ := a.box.snapshot()
	if !slices.ContainsFunc(st.batches, func(b batchState) bool { return b.seq == seq }) {
		return nil, false
	}
	sctx, cancel := context.WithCancelCause(ctx)
	a.sending, a.stopSend = seq, cancel
	return sctx, true
}

// endSend ends the sending begun by beginSend, reporting whether a
// withdrawal stopped it.
func (a *Agent) endSend(sctx context.Context) bool {
	a.sendMu.Lock()
	defer a.sendMu.Unlock()
	a.stopSend(nil)
	a.sending, a.stopSend = 0, nil
	return context.Cause(sctx) == errWithdrawn
}

// stopSends stops the sending of a batch among seqs, which a withdrawal
// deleted: the request may have reached the cloud, but nothing is sent
// for it after this returns.
func (a *Agent) stopSends(seqs []uint64) {
	a.sendMu.Lock()
	defer a.sendMu.Unlock()
	if a.stopSend != nil && slices.Contains(seqs, a.sending) {
		a.stopSend(errWithdrawn)
	}
}

// shapedByRunning reports whether the batch's readings were shaped by
// the manifest the agent runs.
func (a *Agent) shapedByRunning(b *sendable) bool {
	st, _ := a.box.snapshot()
	q, ok := st.queues[b.rec.queue]
	return ok && q.key.Manifest == a.run.Load().hash
}
