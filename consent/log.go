package consent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Log errors.
var (
	// ErrBadProof means an inclusion or consistency proof does not check
	// out against the checkpoint it is for.
	ErrBadProof = errors.New("consent: log proof does not verify")
	// ErrBadCheckpoint means a checkpoint is malformed, signed by another
	// key, or for another log.
	ErrBadCheckpoint = errors.New("consent: bad log checkpoint")
	// ErrLogShrunk means a checkpoint is smaller than one seen before: the
	// log did not only grow.
	ErrLogShrunk = errors.New("consent: log checkpoint smaller than one seen before")
	// ErrLogConflict means a LogStore refused an append because it no
	// longer ends where the appender expected (another writer appended
	// first) or already holds one of the entries. A LogStore returns it,
	// wrapped or not, and stores nothing; a Log re-reads the store and
	// tries again. Log.Append returns it only after many conflicts in a
	// row.
	ErrLogConflict = errors.New("consent: log store changed under an append")
)

// maxTreeSize is the largest tree size a checkpoint may claim: 2^62
// entries, far beyond any consent log, and the limit of tlog's proof
// arithmetic, which never returns for larger trees.
const maxTreeSize = 1 << 62

// maxBatch is the most entries one group commit stores.
const maxBatch = 256

// maxConflicts is how many store conflicts in a row an append takes before
// it gives up with ErrLogConflict. Each conflict means another writer
// appended, so the log as a whole makes progress; the bound only keeps one
// writer from retrying forever.
const maxConflicts = 100

// A Hash is a SHA-256 hash in the log's Merkle tree (RFC 6962 §2.1,
// RFC 9162 §2.1.1): the leaf hash of an entry, an interior node, or the
// root of a tree. As text (and so in JSON) it is standard base64 with
// padding, as in checkpoints; in CBOR it is a 32-byte byte string.
type Hash [32]byte

// String returns h in standard base64.
func (h Hash) String() string { return base64.StdEncoding.EncodeToString(h[:]) }

// MarshalText returns h in standard base64 with padding.
func (h Hash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText sets h from its standard base64 form, refusing anything
// that is not exactly 32 bytes in canonical base64 with padding. On error
// h is unchanged.
func (h *Hash) UnmarshalText(text []byte) error {
	// Decode wants room for 33 bytes: 44 characters without padding.
	var buf [33]byte
	if len(text) != base64.StdEncoding.EncodedLen(len(h)) {
		return fmt.Errorf("consent: hash of %d base64 characters, want 44", len(text))
	}
	n, err := base64.StdEncoding.Strict().Decode(buf[:], text)
	if err != nil || n != len(h) {
		return fmt.Errorf("consent: hash %q is not base64 of 32 bytes", text)
	}
	*h = Hash(buf[:32])
	return nil
}

// LeafHash returns the RFC 6962 leaf hash of data, SHA-256(0x00 || data):
// the hash by which a LogStore finds an entry.
func LeafHash(data []byte) Hash { return Hash(tlog.RecordHash(data)) }

// emptyRoot returns the root hash of the empty tree: the SHA-256 of no
// bytes (RFC 9162 §2.1.1).
func emptyRoot() Hash { return sha256.Sum256(nil) }

func toTlog(hs []Hash) []tlog.Hash {
	out := make([]tlog.Hash, len(hs))
	for i, h := range hs {
		out[i] = tlog.Hash(h)
	}
	return out
}

func fromTlog(hs []tlog.Hash) []Hash {
	if hs == nil {
		return nil
	}
	out := make([]Hash, len(hs))
	for i, h := range hs {
		out[i] = Hash(h)
	}
	return out
}

// A Checkpoint is a signed statement of the log's size and root hash, in
// the C2SP tlog-checkpoint format: origin, size and base64 root hash on
// three lines, signed as a note.
type Checkpoint struct {
	Origin string // the log's name: its key's name
	Size   int64  // entries in the tree
	Hash   Hash   // the tree's root hash
	// Signed is the signed note, as handed out.
	Signed []byte
}

// A Receipt proves that an entry is in the log: its index, the inclusion
// proof, and the signed checkpoint the proof leads to.
type Receipt struct {
	Index      int64  `json:"index" cbor:"1,keyasint"`      // the entry's index
	Proof      []Hash `json:"proof" cbor:"2,keyasint"`      // its inclusion proof
	Checkpoint []byte `json:"checkpoint" cbor:"3,keyasint"` // the signed checkpoint the proof leads to
}

// A Log is an append-only Merkle log of accepted consent events, with RFC
// 6962 hashing, kept in a LogStore and signed with a note key. It is safe
// for concurrent use, and several Logs, in one process or on several
// nodes, may share one store: the store, not the Log, knows the log's
// size, and an append that loses a race to another writer is retried.
// Concurrent appends to one Log are committed together (see Append).
type Log struct {
	store  LogStore
	signer note.Signer
	origin string

	signMu sync.Mutex // one signature at a time: a hardware key may need it

	mu      sync.Mutex
	pending []*appendReq // waiting appends; while busy, pending[0] may lead
	busy    bool         // an append is leading a commit
}

// OpenLog opens the log kept in store, signing checkpoints with signer: a
// note.Signer from note.NewSigner, or a NoteSigner for an Ed25519 key
// behind a crypto.Signer. The signer's name is the log's origin; Logs
// sharing a store must share the signer's key and name.
func OpenLog(ctx context.Context, store LogStore, signer note.Signer) (*Log, error) {
	if store == nil || signer == nil {
		return nil, errors.New("consent: OpenLog needs a store and a signer")
	}
	if !validNoteName(signer.Name()) {
		return nil, fmt.Errorf("consent: log signer name %q is not a note key name", signer.Name())
	}
	if _, err := store.Size(ctx); err != nil {
		return nil, fmt.Errorf("consent: opening the log: %w", err)
	}
	return &Log{store: store, signer: signer, origin: signer.Name()}, nil
}

// validNoteName reports whether name can name a note key, as the note
// package requires: not empty, UTF-8, no spaces and no '+'.
func validNoteName(name string) bool {
	return name != "" && utf8.ValidString(name) && strings.IndexFunc(name, unicode.IsSpace) < 0 && !strings.Contains(name, "+")
}

func (l *Log) hashReader(ctx context.Context) tlog.HashReader {
	return tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		hs, err := l.store.ReadHashes(ctx, idx)
		if err != nil {
			return nil, err
		}
		if len(hs) != len(idx) {
			return nil, fmt.Errorf("consent: log store returned %d hashes for %d indexes", len(hs), len(idx))
		}
		return toTlog(hs), nil
	})
}

// The states of an append waiting in a Log.
const (
	queued  = iota // in pending, waiting
	leading        // pending[0], told to commit a batch
	taken          // in a batch being committed
	done           // receipt or err set
)

// An appendReq is one Append waiting to be committed.
type appendReq struct {
	data []byte
	leaf Hash
	wake chan struct{} // told once: leading or done

	// Guarded by Log.mu.
	state     int
	abandoned bool // its caller's context ended while it was taken
	receipt   *Receipt
	err       error
}

// Append adds data (a signed record) to the log and returns its receipt
// once the entry is durable in the store.
//
// Appending data the log already holds stores nothing and returns a fresh
// receipt for the entry already there, so an Append that failed (the
// checkpoint could not be signed, the connection dropped) may simply be
// retried: the entry is never lost once stored, and never stored twice.
//
// Appends that arrive while another is being committed wait and are then
// committed together, in one store append (one fsync for a
// FileLogStore) and under one signed checkpoint; each caller gets its own
// receipt. If ctx ends first, Append returns its error; the entry may or
// may not be in the log, and retrying is safe.
func (l *Log) Append(ctx context.Context, data []byte) (*Receipt, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r := &appendReq{data: bytes.Clone(data), leaf: LeafHash(data), wake: make(chan struct{}, 1)}
	if r.data == nil {
		r.data = []byte{}
	}
	l.mu.Lock()
	l.pending = append(l.pending, r)
	if !l.busy {
		l.busy = true
		r.state = leading
	}
	l.mu.Unlock()
	for {
		l.mu.Lock()
		state := r.state
		l.mu.Unlock()
		switch state {
		case done:
			return r.receipt, r.err
		case leading:
			return l.lead(ctx, r)
		}
		select {
		case <-r.wake:
		case <-ctx.Done():
			l.mu.Lock()
			defer l.mu.Unlock()
			switch r.state {
			case done:
				return r.receipt, r.err
			case queued:
				l.removeLocked(r)
			case leading:
				l.removeLocked(r)
				l.handOffLocked()
			case taken:
				r.abandoned = true
			}
			return nil, ctx.Err()
		}
	}
}

// removeLocked takes r out of pending.
func (l *Log) removeLocked(r *appendReq) {
	for i, p := range l.pending {
		if p == r {
			l.pending = append(l.pending[:i:i], l.pending[i+1:]...)
			return
		}
	}
}

// handOffLocked lets the first waiting append lead the next commit, or
// marks the log idle.
func (l *Log) handOffLocked() {
	if len(l.pending) == 0 {
		l.busy = false
		return
	}
	next := l.pending[0]
	next.state = leading
	wake(next)
}

func wake(r *appendReq) {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// lead commits self and the appends waiting with it, hands each its
// result, and passes the lead on.
func (l *Log) lead(ctx context.Context, self *appendReq) (*Receipt, error) {
	l.mu.Lock()
	n := min(len(l.pending), maxBatch)
	batch := append([]*appendReq(nil), l.pending[:n]...)
	l.pending = append([]*appendReq(nil), l.pending[n:]...)
	for _, r := range batch {
		r.state = taken
	}
	l.mu.Unlock()

	receipts, errs := l.commit(ctx, batch)

	l.mu.Lock()
	defer l.mu.Unlock()
	var again []*appendReq
	for i, r := range batch {
		if r != self && errs[i] != nil && ctx.Err() != nil {
			// Our context ended, not theirs: they wait for the next
			// commit (which finds them if this one stored them).
			if !r.abandoned {
				r.state = queued
				again = append(again, r)
			}
			continue
		}
		r.receipt, r.err, r.state = receipts[i], errs[i], done
		if r != self {
			wake(r)
		}
	}
	l.pending = append(again, l.pending...)
	l.handOffLocked()
	return self.receipt, self.err
}

// commit stores the batch's entries and returns each one's receipt or
// error. If the store refuses the batch for a reason other than a
// conflict or the context, each entry is tried alone, so that one entry
// the store cannot take fails alone.
func (l *Log) commit(ctx context.Context, batch []*appendReq) ([]*Receipt, []error) {
	receipts := make([]*Receipt, len(batch))
	errs := make([]error, len(batch))
	idx, size, err := l.insert(ctx, batch)
	if err != nil {
		if len(batch) > 1 && ctx.Err() == nil && !errors.Is(err, ErrLogConflict) {
			for i := range batch {
				r, e := l.commit(ctx, batch[i:i+1])
				receipts[i], errs[i] = r[0], e[0]
			}
			return receipts, errs
		}
		for i := range errs {
			errs[i] = err
		}
		return receipts, errs
	}
	for _, n := range idx {
		size = max(size, n+1)
	}
	ck, err := l.checkpoint(ctx, size)
	if err != nil {
		for i := range errs {
			errs[i] = err
		}
		return receipts, errs
	}
	for i, n := range idx {
		p, err := tlog.ProveRecord(size, n, l.hashReader(ctx))
		if err != nil {
			errs[i] = fmt.Errorf("consent: proving log entry %d: %w", n, err)
			continue
		}
		receipts[i] = &Receipt{Index: n, Proof: fromTlog(p), Checkpoint: ck.Signed}
	}
	return receipts, errs
}

// insert appends the batch's entries that the store does not hold yet in
// one compare-and-append at the store's size, retrying on conflicts, and
// returns the index of every entry of the batch and a size the store has
// reached, for the checkpoint: the freshest it knows.
func (l *Log) insert(ctx context.Context, batch []*appendReq) (idx []int64, size int64, err error) {
	idx = make([]int64, len(batch))
	first := make(map[Hash]int, len(batch)) // leaf → its first place in batch
	for i, r := range batch {
		if _, ok := first[r.leaf]; !ok {
			first[r.leaf] = i
		}
	}
	for conflicts := 0; ; conflicts++ {
		size, err = l.store.Size(ctx)
		if err != nil {
			return nil, 0, fmt.Errorf("consent: log size: %w", err)
		}
		var entries []LogEntry
		for i, r := range batch {
			if first[r.leaf] != i {
				continue
			}
			n, ok, err := l.store.Find(ctx, r.leaf)
			if err != nil {
				return nil, 0, fmt.Errorf("consent: log lookup: %w", err)
			}
			if ok {
				idx[i] = n
				continue
			}
			idx[i] = size + int64(len(entries))
			entries = append(entries, LogEntry{Data: r.data, Leaf: r.leaf})
		}
		if len(entries) == 0 {
			break
		}
		hashes, err := l.newHashes(ctx, size, entries)
		if err != nil {
			return nil, 0, err
		}
		err = l.store.Append(ctx, size, entries, hashes)
		if err == nil {
			size += int64(len(entries))
			break
		}
		if !errors.Is(err, ErrLogConflict) {
			return nil, 0, fmt.Errorf("consent: log append: %w", err)
		}
		if conflicts+1 >= maxConflicts {
			return nil, 0, fmt.Errorf("consent: log append: %d conflicts in a row: %w", maxConflicts, err)
		}
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
	}
	for i, r := range batch {
		idx[i] = idx[first[r.leaf]]
	}
	return idx, size, nil
}

// newHashes returns the tree hashes that entries add to a tree of size
// entries. The hashes it needs from the store (the roots of complete
// subtrees left of the new entries) are read once each, those one entry
// needs in one call.
func (l *Log) newHashes(ctx context.Context, size int64, entries []LogEntry) ([]Hash, error) {
	base := tlog.StoredHashCount(size)
	stored := make(map[int64]tlog.Hash)
	var out []tlog.Hash
	r := tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		var missing []int64
		for _, x := range indexes {
			if _, ok := stored[x]; !ok && x < base {
				missing = append(missing, x)
			}
		}
		if len(missing) > 0 {
			hs, err := l.store.ReadHashes(ctx, missing)
			if err != nil {
				return nil, fmt.Errorf("consent: reading log hashes: %w", err)
			}
			if len(hs) != len(missing) {
				return nil, fmt.Errorf("consent: log store returned %d hashes for %d indexes", len(hs), len(missing))
			}
			for i, x := range missing {
				stored[x] = tlog.Hash(hs[i])
			}
		}
		hs := make([]tlog.Hash, len(indexes))
		for i, x := range indexes {
			if x >= base {
				if x-base >= int64(len(out)) {
					return nil, fmt.Errorf("consent: log hash %d is not computed yet", x)
				}
				hs[i] = out[x-base]
			} else {
				hs[i] = stored[x]
			}
		}
		return hs, nil
	})
	for i, e := range entries {
		hs, err := tlog.StoredHashesForRecordHash(size+int64(i), tlog.Hash(e.Leaf), r)
		if err != nil {
			return nil, fmt.Errorf("consent: hashing log entry %d: %w", size+int64(i), err)
		}
		out = append(out, hs...)
	}
	return fromTlog(out), nil
}

// Checkpoint returns a signed checkpoint of the log as the store holds it
// now.
func (l *Log) Checkpoint(ctx context.Context) (*Checkpoint, error) {
	size, err := l.store.Size(ctx)
	if err != nil {
		return nil, fmt.Errorf("consent: log size: %w", err)
	}
	return l.checkpoint(ctx, size)
}

// checkpoint signs a checkpoint of the tree of the given size.
func (l *Log) checkpoint(ctx context.Context, size int64) (*Checkpoint, error) {
	th, err := tlog.TreeHash(size, l.hashReader(ctx))
	if err != nil {
		return nil, fmt.Errorf("consent: log tree hash: %w", err)
	}
	text := fmt.Sprintf("%s\n%d\n%s\n", l.origin, size, base64.StdEncoding.EncodeToString(th[:]))
	l.signMu.Lock()
	signed, err := note.Sign(&note.Note{Text: text}, l.signer)
	l.signMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("consent: signing a log checkpoint: %w", err)
	}
	return &Checkpoint{Origin: l.origin, Size: size, Hash: Hash(th), Signed: signed}, nil
}

// Prove returns a fresh inclusion proof for entry n in the tree of size t,
// which the log must have reached.
func (l *Log) Prove(ctx context.Context, n, t int64) ([]Hash, error) {
	if err := l.checkSize(ctx, t); err != nil {
		return nil, err
	}
	if n < 0 || n >= t {
		return nil, fmt.Errorf("consent: no entry %d in a tree of %d", n, t)
	}
	p, err := tlog.ProveRecord(t, n, l.hashReader(ctx))
	if err != nil {
		return nil, fmt.Errorf("consent: proving log entry %d: %w", n, err)
	}
	return fromTlog(p), nil
}

// ProveConsistency returns a proof that the tree of size newSize, which
// the log must have reached, extends the tree of size oldSize. The proof
// from the empty tree (oldSize 0) is empty: every tree extends it (RFC
// 9162 §2.1.4).
func (l *Log) ProveConsistency(ctx context.Context, oldSize, newSize int64) ([]Hash, error) {
	if err := l.checkSize(ctx, newSize); err != nil {
		return nil, err
	}
	if oldSize < 0 || oldSize > newSize {
		return nil, fmt.Errorf("consent: no consistency proof from a tree of %d to one of %d", oldSize, newSize)
	}
	if oldSize == 0 {
		return []Hash{}, nil
	}
	p, err := tlog.ProveTree(newSize, oldSize, l.hashReader(ctx))
	if err != nil {
		return nil, fmt.Errorf("consent: proving log consistency: %w", err)
	}
	return fromTlog(p), nil
}

// checkSize refuses a tree larger than the log, before tlog's arithmetic
// (which never returns for sizes over maxTreeSize) sees it.
func (l *Log) checkSize(ctx context.Context, t int64) error {
	size, err := l.store.Size(ctx)
	if err != nil {
		return fmt.Errorf("consent: log size: %w", err)
	}
	if t < 0 || t > size {
		return fmt.Errorf("consent: no tree of size %d: the log holds %d entries", t, size)
	}
	return nil
}

// OpenCheckpoint checks a signed checkpoint with the log's public key (a
// note verifier key) and parses it. A checkpoint claiming more than 2^62
// entries, or an empty tree with a root other than the empty tree's, is
// refused (ErrBadCheckpoint), even when the log signed it.
func OpenCheckpoint(signed []byte, vkey string) (*Checkpoint, error) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, err
	}
	n, err := note.Open(signed, note.VerifierList(v))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCheckpoint, err)
	}
	lines := strings.SplitN(n.Text, "\n", 4)
	if len(lines) < 4 || lines[0] != v.Name() {
		return nil, fmt.Errorf("%w: not a checkpoint of %s", ErrBadCheckpoint, v.Name())
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || size > maxTreeSize || strconv.FormatInt(size, 10) != lines[1] {
		return nil, fmt.Errorf("%w: size %q", ErrBadCheckpoint, lines[1])
	}
	hb, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(hb) != len(Hash{}) {
		return nil, fmt.Errorf("%w: root hash", ErrBadCheckpoint)
	}
	h := Hash(hb)
	if size == 0 && h != emptyRoot() {
		return nil, fmt.Errorf("%w: an empty tree with root %s", ErrBadCheckpoint, h)
	}
	return &Checkpoint{Origin: lines[0], Size: size, Hash: h, Signed: signed}, nil
}

// VerifyReceipt checks that data is entry r.Index of the log whose public
// key is vkey, needing nothing else.
func VerifyReceipt(r *Receipt, data []byte, vkey string) error {
	ck, err := OpenCheckpoint(r.Checkpoint, vkey)
	if err != nil {
		return err
	}
	if r.Index < 0 || r.Index >= ck.Size {
		return fmt.Errorf("%w: index %d in a tree of %d", ErrBadProof, r.Index, ck.Size)
	}
	if err := tlog.CheckRecord(toTlog(r.Proof), ck.Size, tlog.Hash(ck.Hash), r.Index, tlog.RecordHash(data)); err != nil {
		return fmt.Errorf("%w: %v", ErrBadProof, err)
	}
	return nil
}

// VerifyConsistency checks that the log at checkpoint newer only grew
// from older: same origin, not smaller, no more than 2^62 entries, and the
// proof links the roots. Every tree extends the empty one (RFC 9162
// §2.1.4): from an older checkpoint of size 0, whose root must be the
// empty tree's, only the empty proof is accepted.
func VerifyConsistency(older, newer *Checkpoint, proof []Hash) error {
	if older.Origin != newer.Origin {
		return fmt.Errorf("%w: origins %q and %q", ErrBadCheckpoint, older.Origin, newer.Origin)
	}
	if older.Size < 0 || newer.Size > maxTreeSize {
		return fmt.Errorf("%w: sizes %d and %d, not within 0 to %d", ErrBadCheckpoint, older.Size, newer.Size, int64(maxTreeSize))
	}
	if newer.Size < older.Size {
		return fmt.Errorf("%w: %d after %d", ErrLogShrunk, newer.Size, older.Size)
	}
	if older.Size == 0 {
		switch {
		case len(proof) != 0:
			return fmt.Errorf("%w: %d hashes in a proof from the empty tree", ErrBadProof, len(proof))
		case older.Hash != emptyRoot():
			return fmt.Errorf("%w: an empty tree with root %s", ErrBadProof, older.Hash)
		case newer.Size == 0 && newer.Hash != emptyRoot():
			return fmt.Errorf("%w: an empty tree with root %s", ErrBadProof, newer.Hash)
		}
		return nil
	}
	if err := tlog.CheckTree(toTlog(proof), newer.Size, tlog.Hash(newer.Hash), older.Size, tlog.Hash(older.Hash)); err != nil {
		return fmt.Errorf("%w: %v", ErrBadProof, err)
	}
	return nil
}

// A Monitor remembers the largest checkpoint it has seen of one log and
// accepts a new one only if a consistency proof shows the log grew from
// it.
type Monitor struct {
	vkey string

	mu     sync.Mutex
	latest *Checkpoint
}

// NewMonitor returns a monitor of the log with public key vkey.
func NewMonitor(vkey string) *Monitor { return &Monitor{vkey: vkey} }

// Update checks a signed checkpoint and the proof that it extends the
// latest one seen (nil for the first, and after a checkpoint of the empty
// log), and remembers it.
func (m *Monitor) Update(signed []byte, proof []Hash) (*Checkpoint, error) {
	ck, err := OpenCheckpoint(signed, m.vkey)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.latest != nil {
		if err := VerifyConsistency(m.latest, ck, proof); err != nil {
			return nil, err
		}
	}
	m.latest = ck
	return ck, nil
}
