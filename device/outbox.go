package device

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// The outbox is one bbolt file. Its buckets:
//
//	meta      version, epoch (8 bytes), seq (the next batch's, 8 bytes),
//	          check (a sealed canary that proves the key)
//	queues    queue ID (4 bytes) → sealed queueKey
//	readings  one sub-bucket per queue, named by its ID: reading ID
//	          (8 bytes, increasing) → sealed entry
//	batches   seq (8 bytes) → sealed batchRecord
//	consent   number (8 bytes, in the order added) → sealed signed record
//
// Everything but the epoch, the next seq and the version is sealed
// (seal.go). Keys are counters: they tell how many readings were queued,
// not what they hold or when they were taken.
const (
	bucketMeta     = "meta"
	bucketQueues   = "queues"
	bucketReadings = "readings"
	bucketBatches  = "batches"
	bucketConsent  = "consent"

	metaVersion = "version"
	metaEpoch   = "epoch"
	metaSeq     = "seq"
	metaCheck   = "check"

	outboxVersion = 1
	canary        = "sensible outbox"

	// lockTimeout is how long Open waits for another agent to let go of
	// the file.
	lockTimeout = time.Second
)

// OutboxFile is the name of the outbox file in Config.Dir.
const OutboxFile = "outbox.db"

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// A queueState is what the agent knows of one queue without reading it.
type queueState struct {
	key      queueKey
	priority int
	readings int
	bytes    int64     // keys and sealed values
	head     uint64    // the lowest reading ID queued; 0 when empty
	headAt   time.Time // when the head was recorded; zero if unknown
}

// A batchState is what the agent knows of one formed batch.
type batchState struct {
	seq      uint64
	queue    uint32
	readings int
	bytes    int64
	oldest   time.Time
}

// A dropEvent is a drop a commit made durable, to be logged after it.
type dropEvent struct {
	reason   DropReason
	stream   string
	readings int
}

// The state is what the committer knows of the outbox: each commit works
// on a copy and publishes it once durable, after which it is never
// changed, so readers need no lock beyond the one that hands it out.
type state struct {
	queues       map[uint32]queueState
	batches      []batchState // formed batches, by seq
	seq          uint64       // the next batch's
	readings     int          // queued readings, in batches or not
	bytes        int64
	drops        map[DropReason]uint64
	delivered    uint64
	lastDelivery time.Time
	commits      uint64

	events []dropEvent // of this commit only; not copied
}

func (s *state) clone() *state {
	c := *s
	c.queues = maps.Clone(s.queues)
	c.batches = slices.Clone(s.batches)
	c.drops = maps.Clone(s.drops)
	c.events = nil
	return &c
}

func (s *state) drop(reason DropReason, stream string, n int) {
	if n <= 0 {
		return
	}
	s.drops[reason] += uint64(n)
	for i := range s.events {
		if e := &s.events[i]; e.reason == reason && e.stream == stream {
			e.readings += n
			return
		}
	}
	s.events = append(s.events, dropEvent{reason, stream, n})
}

// An op is a change to the outbox, run by the committer in a write
// transaction with others. apply must leave the transaction and st as it
// found them when it returns an error, and an error must concern that op
// alone: the others are then committed without it.
type op struct {
	apply func(tx *bbolt.Tx, st *state) error
	done  chan error
}

// An outbox is the agent's durable queue.
type outbox struct {
	path        string
	dir         string
	db          *bbolt.DB
	seal        *sealer
	epoch       uint64
	maxReadings int
	maxBytes    int64
	priority    func(stream string) int
	log         *slog.Logger

	// The committer's queue.
	mu      sync.Mutex
	pending []*op
	steady  int   // of pending, ops of callers that come straight back
	spare   []*op // the slice last taken, for reuse
	closed  bool
	signal  chan struct{}
	stopped chan struct{}

	st *state // the committer's own

	smu     sync.Mutex
	pub     *state
	changed chan struct{} // closed when pub changes

	nextID atomic.Uint64 // the next reading ID

	qmu     sync.Mutex
	qids    map[queueKey]uint32
	nextQID uint32

	consent [][2][]byte // stored consent records (key, sealed), as loaded
}

// openOutbox opens the outbox file at path, creating it with a fresh
// epoch if it does not exist, and checks it.
func openOutbox(path, dir string, key []byte, maxReadings int, maxBytes int64, priority func(string) int, log *slog.Logger) (o *outbox, err error) {
	corrupt := func(detail string, cause error) error {
		return &OutboxError{Path: path, Kind: ErrOutboxCorrupt, Detail: detail, Err: cause}
	}
	defer func() {
		// bbolt panics on some damaged pages.
		if r := recover(); r != nil {
			if o != nil && o.db != nil {
				o.db.Close()
			}
			o, err = nil, corrupt(fmt.Sprint("bbolt: ", r), nil)
		}
	}()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout: lockTimeout,
		// The freelist is synced (bbolt's default): without it bbolt
		// rebuilds the list on open, and after a failed commit, by
		// walking the pages in a goroutine of its own, where a damaged
		// page would crash the process rather than fail the open.
		FreelistType: bbolt.FreelistMapType,
	})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, &OutboxError{Path: path, Kind: ErrOutboxLocked}
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum),
		errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrInvalidMapping):
		return nil, corrupt("not a readable bbolt file", err)
	case err != nil && !isSystem(err):
		// bbolt says what it found wrong in words: a file too small, a
		// page of the wrong type.
		return nil, corrupt("not a readable bbolt file", err)
	case err != nil:
		return nil, classify(path, dir, err)
	}
	o = &outbox{
		path: path, dir: dir, db: db, maxReadings: maxReadings, maxBytes: maxBytes, priority: priority, log: log,
		signal: make(chan struct{}, 1), stopped: make(chan struct{}), changed: make(chan struct{}),
		qids: map[queueKey]uint32{}, nextQID: 1,
		st: &state{queues: map[uint32]queueState{}, drops: map[DropReason]uint64{}, seq: 1},
	}
	if err := o.load(key); err != nil {
		db.Close()
		var oe *OutboxError
		if errors.As(err, &oe) {
			return nil, err
		}
		return nil, corrupt("", err)
	}
	o.pub = o.st
	go o.run()
	return o, nil
}

// load reads the outbox, initializing a new one, and checks what it reads.
func (o *outbox) load(key []byte) error {
	fresh := false
	if err := o.db.View(func(tx *bbolt.Tx) error {
		fresh = tx.Bucket([]byte(bucketMeta)) == nil
		if k, _ := tx.Cursor().First(); fresh && k != nil {
			return fmt.Errorf("device: a bbolt file with bucket %q but no outbox metadata", k)
		}
		return nil
	}); err != nil {
		return err
	}
	if fresh {
		if err := o.create(key); err != nil {
			return err
		}
	}
	return o.db.View(func(tx *bbolt.Tx) error {
		meta := tx.Bucket([]byte(bucketMeta))
		if meta == nil {
			return errors.New("device: no metadata")
		}
		if v := meta.Get([]byte(metaVersion)); len(v) != 1 || v[0] != outboxVersion {
			return fmt.Errorf("device: outbox version %x, want %d", v, outboxVersion)
		}
		ev, sv := meta.Get([]byte(metaEpoch)), meta.Get([]byte(metaSeq))
		if len(ev) != 8 || len(sv) != 8 {
			return errors.New("device: no epoch or sequence number")
		}
		o.epoch, o.st.seq = binary.BigEndian.Uint64(ev), binary.BigEndian.Uint64(sv)
		if o.epoch == 0 || o.st.seq == 0 {
			return errors.New("device: zero epoch or sequence number")
		}
		var err error
		if o.seal, err = newSealer(key, o.epoch); err != nil {
			return err
		}
		if c, err := o.seal.open(nil, o.seal.ad(adCheck, 0, 0), meta.Get([]byte(metaCheck))); err != nil || string(c) != canary {
			return errors.New("device: the outbox does not decrypt with the device's secret")
		}
		var problems []error
		for err := range tx.Check() {
			problems = append(problems, err)
		}
		if len(problems) > 0 {
			return fmt.Errorf("device: consistency check: %w", errors.Join(problems...))
		}
		return o.scan(tx)
	})
}

// create initializes a new outbox with a new epoch.
func (o *outbox) create(key []byte) error {
	var e [8]byte
	for binary.BigEndian.Uint64(e[:]) == 0 {
		rand.Read(e[:])
	}
	epoch := binary.BigEndian.Uint64(e[:])
	s, err := newSealer(key, epoch)
	if err != nil {
		return err
	}
	err = o.db.Update(func(tx *bbolt.Tx) error {
		for _, name := range []string{bucketMeta, bucketQueues, bucketReadings, bucketBatches, bucketConsent} {
			if _, err := tx.CreateBucket([]byte(name)); err != nil {
				return err
			}
		}
		meta := tx.Bucket([]byte(bucketMeta))
		for k, v := range map[string][]byte{
			metaVersion: {outboxVersion},
			metaEpoch:   e[:],
			metaSeq:     u64(1),
			metaCheck:   s.seal(nil, s.ad(adCheck, 0, 0), []byte(canary)),
		} {
			if err := meta.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return classify(o.path, o.dir, err)
	}
	o.log.Info("device: new outbox", "path", o.path, "epoch", epoch)
	return nil
}

// scan builds the state from what the outbox holds.
func (o *outbox) scan(tx *bbolt.Tx) error {
	queues, readings, batches, cons := tx.Bucket([]byte(bucketQueues)), tx.Bucket([]byte(bucketReadings)),
		tx.Bucket([]byte(bucketBatches)), tx.Bucket([]byte(bucketConsent))
	if queues == nil || readings == nil || batches == nil || cons == nil {
		return errors.New("device: a bucket is missing")
	}
	st := o.st
	err := queues.ForEach(func(k, v []byte) error {
		if len(k) != 4 {
			return fmt.Errorf("device: queue ID %x", k)
		}
		id := binary.BigEndian.Uint32(k)
		plain, err := o.seal.open(nil, o.seal.ad(adQueue, id, 0), v)
		if err != nil {
			return fmt.Errorf("device: queue %d: %w", id, err)
		}
		qk, err := decodeQueueKey(plain)
		if err != nil {
			return fmt.Errorf("device: queue %d: %w", id, err)
		}
		o.qids[qk] = id
		o.nextQID = max(o.nextQID, id+1)
		st.queues[id] = queueState{key: qk, priority: o.priority(qk.Stream)}
		return nil
	})
	if err != nil {
		return err
	}
	var maxID uint64
	err = readings.ForEachBucket(func(k []byte) error {
		if len(k) != 4 {
			return fmt.Errorf("device: readings bucket %x", k)
		}
		id := binary.BigEndian.Uint32(k)
		q, ok := st.queues[id]
		if !ok {
			return fmt.Errorf("device: readings of unknown queue %d", id)
		}
		c := readings.Bucket(k).Cursor()
		for rk, rv := c.First(); rk != nil; rk, rv = c.Next() {
			if len(rk) != 8 || rv == nil {
				return fmt.Errorf("device: queue %d: reading key %x", id, rk)
			}
			q.readings++
			q.bytes += int64(len(rk) + len(rv))
			rid := binary.BigEndian.Uint64(rk)
			maxID = max(maxID, rid)
			if q.head == 0 {
				q.head, q.headAt = rid, o.recordedAt(id, rid, rv)
			}
		}
		st.queues[id] = q
		st.readings += q.readings
		st.bytes += q.bytes
		return nil
	})
	if err != nil {
		return err
	}
	o.nextID.Store(maxID + 1)
	err = batches.ForEach(func(k, v []byte) error {
		if len(k) != 8 {
			return fmt.Errorf("device: batch key %x", k)
		}
		seq := binary.BigEndian.Uint64(k)
		if seq >= st.seq {
			return fmt.Errorf("device: batch %d at or after the next sequence number %d", seq, st.seq)
		}
		b := batchState{seq: seq, bytes: int64(len(k) + len(v)), readings: 1}
		if plain, err := o.seal.open(nil, o.seal.ad(adBatch, 0, seq), v); err == nil {
			if rec, err := decodeBatchRecord(plain); err == nil {
				b.queue, b.readings, b.oldest = rec.queue, rec.readings, rec.oldest
			}
		}
		// A batch that does not open is dropped when its turn to be sent
		// comes, and counted then.
		st.batches = append(st.batches, b)
		st.readings += b.readings
		st.bytes += b.bytes
		return nil
	})
	if err != nil {
		return err
	}
	return cons.ForEach(func(k, v []byte) error {
		if len(k) != 8 {
			return fmt.Errorf("device: consent key %x", k)
		}
		o.consent = append(o.consent, [2][]byte{slices.Clone(k), slices.Clone(v)})
		return nil
	})
}

// recordedAt returns when the reading sealed in v was recorded, or the
// zero time if it does not open.
func (o *outbox) recordedAt(queue uint32, id uint64, v []byte) time.Time {
	plain, err := o.seal.open(nil, o.seal.ad(adReading, queue, id), v)
	if err != nil {
		return time.Time{}
	}
	r := reader{b: plain}
	r.version()
	at := r.time()
	if r.bad {
		return time.Time{}
	}
	return at
}

// queue returns the ID of the queue named k, allocating one if it is
// new; the first op that puts a reading in it creates it in the file.
func (o *outbox) queue(k queueKey) uint32 {
	o.qmu.Lock()
	defer o.qmu.Unlock()
	id, ok := o.qids[k]
	if !ok {
		id = o.nextQID
		o.nextQID++
		o.qids[k] = id
	}
	return id
}

// run is the committer: it takes the ops waiting and commits them in one
// transaction, one sync, until the outbox closes.
//
// The callers whose readings a commit carried usually come straight back
// with their next one, while the commit that follows has already begun
// with the ops that arrived during the last: two half-full commits in
// turn. So before it begins a commit, the committer waits for as many
// readings as the last commit carried plus those that arrived meanwhile,
// but no longer than half the last commit took (and a millisecond): at
// worst a commit is that much later, once, when callers go away.
func (o *outbox) run() {
	const maxGather = time.Millisecond
	defer close(o.stopped)
	want, took := 0, time.Duration(0)
	var timer *time.Timer
	for {
		o.mu.Lock()
		for len(o.pending) == 0 && !o.closed {
			o.mu.Unlock()
			<-o.signal
			o.mu.Lock()
		}
		if o.steady < want && !o.closed {
			deadline := time.Now().Add(min(took/2, maxGather))
			for o.steady < want && !o.closed {
				wait := time.Until(deadline)
				if wait <= 0 {
					break
				}
				o.mu.Unlock()
				if timer == nil {
					timer = time.NewTimer(wait)
				} else {
					timer.Reset(wait)
				}
				select {
				case <-o.signal:
				case <-timer.C:
				}
				timer.Stop()
				o.mu.Lock()
			}
		}
		if len(o.pending) == 0 {
			o.mu.Unlock()
			return
		}
		ops, steady := o.pending, o.steady
		o.pending, o.steady = o.spare[:0], 0
		o.mu.Unlock()
		start := time.Now()
		o.commit(ops)
		took = time.Since(start)
		clear(ops)
		o.mu.Lock()
		o.spare = ops
		want = steady + o.steady
		o.mu.Unlock()
	}
}

// submit hands an op to the committer and waits until it is durable. If
// ctx ends first, the op may still be committed. steady says that the
// caller is likely to submit another op as soon as this one returns, as
// a producer of readings is.
func (o *outbox) submit(ctx context.Context, apply func(*bbolt.Tx, *state) error, steady bool) error {
	p, err := o.enqueue(apply, steady)
	if err != nil {
		return err
	}
	return o.await(ctx, p)
}

// enqueue hands an op to the committer, which applies ops in the order
// they were handed to it.
func (o *outbox) enqueue(apply func(*bbolt.Tx, *state) error, steady bool) (*op, error) {
	p := &op{apply: apply, done: make(chan error, 1)}
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return nil, ErrClosed
	}
	o.pending = append(o.pending, p)
	if steady {
		o.steady++
	}
	o.mu.Unlock()
	select {
	case o.signal <- struct{}{}:
	default:
	}
	return p, nil
}

// await waits until the op p is durable, or failed.
func (o *outbox) await(ctx context.Context, p *op) error {
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// commit runs ops in one transaction. An op that fails is left out and
// the others are committed without it.
func (o *outbox) commit(ops []*op) {
	st := o.st.clone()
	failed, ferr := -1, error(nil)
	err := o.update(func(tx *bbolt.Tx) error {
		for i, p := range ops {
			if err := p.apply(tx, st); err != nil {
				failed, ferr = i, err
				return err
			}
		}
		return nil
	})
	switch {
	case err == nil:
		st.commits++
		o.st = st
		o.smu.Lock()
		o.pub = st
		close(o.changed)
		o.changed = make(chan struct{})
		o.smu.Unlock()
		for _, p := range ops {
			p.done <- nil
		}
		for _, e := range st.events {
			o.log.Warn("device: readings dropped", "reason", string(e.reason), "stream", e.stream, "readings", e.readings)
		}
	case failed >= 0:
		ops[failed].done <- ferr
		rest := slices.Delete(slices.Clone(ops), failed, failed+1)
		if len(rest) > 0 {
			o.commit(rest)
		}
	default:
		err = classify(o.path, o.dir, err)
		for _, p := range ops {
			p.done <- err
		}
	}
}

// update runs fn in a write transaction, taking a panic of bbolt's (a
// damaged page) for corruption.
func (o *outbox) update(fn func(*bbolt.Tx) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &OutboxError{Path: o.path, Kind: ErrOutboxCorrupt, Detail: fmt.Sprint("bbolt: ", r)}
		}
	}()
	return o.db.Update(fn)
}

// view runs fn in a read transaction, as update does.
func (o *outbox) view(fn func(*bbolt.Tx) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &OutboxError{Path: o.path, Kind: ErrOutboxCorrupt, Detail: fmt.Sprint("bbolt: ", r)}
		}
	}()
	return o.db.View(fn)
}

// classify turns a failed write into an *OutboxError, telling a full disk
// from other failures.
func classify(path, dir string, err error) error {
	var oe *OutboxError
	if errors.As(err, &oe) {
		return err
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, berrors.ErrMaxSizeReached) || nearlyFull(dir) {
		return &OutboxError{Path: path, Kind: ErrDiskFull, Err: err}
	}
	return &OutboxError{Path: path, Err: err}
}

// isSystem reports whether err comes from the operating system, rather
// than from what bbolt read.
func isSystem(err error) bool {
	var pe *fs.PathError
	var errno syscall.Errno
	return errors.As(err, &pe) || errors.As(err, &errno)
}

// snapshot returns the state last made durable, and a channel closed
// when a newer one is.
func (o *outbox) snapshot() (*state, <-chan struct{}) {
	o.smu.Lock()
	defer o.smu.Unlock()
	return o.pub, o.changed
}

// close stops the committer, once the ops submitted are committed, and
// closes the file.
func (o *outbox) close() error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return nil
	}
	o.closed = true
	o.mu.Unlock()
	select {
	case o.signal <- struct{}{}:
	default:
	}
	<-o.stopped
	return o.db.Close()
}

// An item is one reading for one destination, sealed, on its way into a
// queue.
type item struct {
	queue    uint32
	key      queueKey
	priority int
	id       uint64
	at       time.Time
	val      []byte
	refused  bool // set by the op: the outbox is full
}

// putReadings returns the op that queues items, making room for each by
// dropping readings of lower priority, then the oldest of the same
// priority; an item for which there is no room is refused.
func (o *outbox) putReadings(items []*item) func(*bbolt.Tx, *state) error {
	return func(tx *bbolt.Tx, st *state) error {
		readings := tx.Bucket([]byte(bucketReadings))
		for _, it := range items {
			it.refused = false
			size := int64(8 + len(it.val))
			if !o.makeRoom(tx, st, it.priority, size) {
				it.refused = true
				st.drop(DropOutboxFull, it.key.Stream, 1)
				continue
			}
			name := u32(it.queue)
			qb := readings.Bucket(name)
			if qb == nil {
				var err error
				if qb, err = readings.CreateBucket(name); err != nil {
					return err
				}
				if tx.Bucket([]byte(bucketQueues)).Get(name) == nil {
					desc := o.seal.seal(nil, o.seal.ad(adQueue, it.queue, 0), appendQueueKey(nil, it.key))
					if err := tx.Bucket([]byte(bucketQueues)).Put(name, desc); err != nil {
						return err
					}
				}
			}
			if err := qb.Put(u64(it.id), it.val); err != nil {
				return err
			}
			q, ok := st.queues[it.queue]
			if !ok {
				q = queueState{key: it.key, priority: it.priority}
			}
			q.readings++
			q.bytes += size
			if q.head == 0 || it.id < q.head {
				q.head, q.headAt = it.id, it.at
			}
			st.queues[it.queue] = q
			st.readings++
			st.bytes += size
		}
		return nil
	}
}

// makeRoom drops queued readings until one more of size bytes fits:
// those of the lowest priority first, the oldest first within a
// priority, never one of a higher priority than prio and never one in a
// formed batch. It reports whether the reading fits.
func (o *outbox) makeRoom(tx *bbolt.Tx, st *state, prio int, size int64) bool {
	if size > o.maxBytes {
		return false
	}
	for st.readings+1 > o.maxReadings || st.bytes+size > o.maxBytes {
		victim, found := uint32(0), false
		for id, q := range st.queues {
			if q.readings == 0 || q.priority > prio {
				continue
			}
			if v := st.queues[victim]; !found || q.priority < v.priority || q.priority == v.priority && q.head < v.head {
				victim, found = id, true
			}
		}
		if !found {
			return false
		}
		q := st.queues[victim]
		c := tx.Bucket([]byte(bucketReadings)).Bucket(u32(victim)).Cursor()
		k, v := c.First()
		if k == nil {
			// The state and the file disagree: trust the file.
			st.readings -= q.readings
			st.bytes -= q.bytes
			q.readings, q.bytes, q.head, q.headAt = 0, 0, 0, time.Time{}
			st.queues[victim] = q
			continue
		}
		n := int64(len(k) + len(v))
		if err := c.Delete(); err != nil {
			return false
		}
		q.readings--
		q.bytes -= n
		st.readings--
		st.bytes -= n
		o.refreshHead(tx, victim, &q)
		st.queues[victim] = q
		st.drop(DropEvicted, q.key.Stream, 1)
	}
	return true
}

// refreshHead sets q's head to the first reading left in its bucket.
func (o *outbox) refreshHead(tx *bbolt.Tx, id uint32, q *queueState) {
	q.head, q.headAt = 0, time.Time{}
	qb := tx.Bucket([]byte(bucketReadings)).Bucket(u32(id))
	if qb == nil {
		return
	}
	if k, v := qb.Cursor().First(); k != nil {
		q.head = binary.BigEndian.Uint64(k)
		q.headAt = o.recordedAt(id, q.head, v)
	}
}

// A formation takes readings out of a queue: into a new batch, or
// dropped because they cannot be sent.
type formation struct {
	queue   uint32
	ids     []uint64     // every reading leaving the queue
	dropped []DropReason // why, for those not in the batch (parallel to ids; "" for those in it)
	seq     uint64       // the batch's
	rec     *batchRecord // nil when there is no batch
	val     []byte       // rec, sealed
	stale   bool         // set by the op: a reading left the queue meanwhile
}

// form returns the op that makes a formation durable: the readings leave
// their queue and the batch, with its sequence number, is written in the
// same transaction, before it is first sent.
func (o *outbox) form(f *formation) func(*bbolt.Tx, *state) error {
	return func(tx *bbolt.Tx, st *state) error {
		f.stale = false
		qb := tx.Bucket([]byte(bucketReadings)).Bucket(u32(f.queue))
		if qb == nil || f.rec != nil && f.seq != st.seq {
			f.stale = true
			return nil
		}
		for _, id := range f.ids {
			if qb.Get(u64(id)) == nil {
				f.stale = true
				return nil
			}
		}
		q := st.queues[f.queue]
		var freed int64
		for i, id := range f.ids {
			k := u64(id)
			freed += int64(len(k) + len(qb.Get(k)))
			if err := qb.Delete(k); err != nil {
				return err
			}
			if f.dropped[i] != "" {
				st.drop(f.dropped[i], q.key.Stream, 1)
			}
		}
		q.readings -= len(f.ids)
		q.bytes -= freed
		st.readings -= len(f.ids)
		st.bytes -= freed
		o.refreshHead(tx, f.queue, &q)
		st.queues[f.queue] = q
		if f.rec == nil {
			return nil
		}
		if err := tx.Bucket([]byte(bucketBatches)).Put(u64(f.seq), f.val); err != nil {
			return err
		}
		if err := tx.Bucket([]byte(bucketMeta)).Put([]byte(metaSeq), u64(f.seq+1)); err != nil {
			return err
		}
		b := batchState{seq: f.seq, queue: f.queue, readings: f.rec.readings, bytes: int64(8 + len(f.val)), oldest: f.rec.oldest}
		st.batches = append(st.batches, b)
		st.seq = f.seq + 1
		st.readings += b.readings
		st.bytes += b.bytes
		return nil
	}
}

// finish returns the op that removes the batch seq from the outbox:
// delivered when reason is empty, else dropped for reason.
func (o *outbox) finish(seq uint64, reason DropReason, at time.Time) func(*bbolt.Tx, *state) error {
	return func(tx *bbolt.Tx, st *state) error {
		i := slices.IndexFunc(st.batches, func(b batchState) bool { return b.seq == seq })
		if i < 0 {
			return nil
		}
		if err := tx.Bucket([]byte(bucketBatches)).Delete(u64(seq)); err != nil {
			return err
		}
		b := st.batches[i]
		st.batches = slices.Delete(st.batches, i, i+1)
		st.readings -= b.readings
		st.bytes -= b.bytes
		if reason == "" {
			st.delivered += uint64(b.readings)
			st.lastDelivery = at
		} else {
			stream := ""
			if q, ok := st.queues[b.queue]; ok {
				stream = q.key.Stream
			}
			st.drop(reason, stream, b.readings)
		}
		return nil
	}
}

// putConsent returns the op that keeps a consent record, or replaces it
// (with its receipt, say).
func (o *outbox) putConsent(c *keptConsent) func(*bbolt.Tx, *state) error {
	val := o.seal.seal(nil, o.seal.ad(adConsent, 0, c.n), appendKeptConsent(nil, c))
	return func(tx *bbolt.Tx, st *state) error {
		return tx.Bucket([]byte(bucketConsent)).Put(u64(c.n), val)
	}
}

// purge returns the op that deletes the readings of every queue for
// which gone reports true, queued or in formed batches, counting them as
// dropped for reason. It leaves the sequence numbers of the batches it
// deletes in *removed.
func (o *outbox) purge(gone func(queueKey) bool, reason DropReason, removed *[]uint64) func(*bbolt.Tx, *state) error {
	return func(tx *bbolt.Tx, st *state) error {
		*removed = (*removed)[:0]
		readings := tx.Bucket([]byte(bucketReadings))
		for id, q := range st.queues {
			if q.readings == 0 || !gone(q.key) {
				continue
			}
			if err := readings.DeleteBucket(u32(id)); err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
				return err
			}
			st.drop(reason, q.key.Stream, q.readings)
			st.readings -= q.readings
			st.bytes -= q.bytes
			q.readings, q.bytes, q.head, q.headAt = 0, 0, 0, time.Time{}
			st.queues[id] = q
		}
		batches := tx.Bucket([]byte(bucketBatches))
		kept := st.batches[:0] // st is this commit's own copy
		for _, b := range st.batches {
			q, ok := st.queues[b.queue]
			if !ok || !gone(q.key) {
				kept = append(kept, b)
				continue
			}
			if err := batches.Delete(u64(b.seq)); err != nil {
				return err
			}
			st.drop(reason, q.key.Stream, b.readings)
			st.readings -= b.readings
			st.bytes -= b.bytes
			*removed = append(*removed, b.seq)
		}
		st.batches = kept
		return nil
	}
}
