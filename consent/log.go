package consent

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

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
)

// LogStore keeps a consent log's entries and tree hashes. Append must be
// durable when it returns: the log hands out a receipt right after.
// Implementations: FileLogStore here; the cloud store later.
type LogStore interface {
	// Size returns how many entries the store holds.
	Size(ctx context.Context) (int64, error)
	// Append stores entry n with the tree hashes tlog.StoredHashes gives
	// for it, atomically: after a crash either both are there or neither.
	Append(ctx context.Context, n int64, data []byte, hashes []tlog.Hash) error
	// ReadHashes returns the stored hashes at the given indexes.
	ReadHashes(ctx context.Context, indexes []int64) ([]tlog.Hash, error)
	// Entry returns entry n.
	Entry(ctx context.Context, n int64) ([]byte, error)
}

// maxTreeSize is the largest tree size a checkpoint may claim: 2^62
// entries, far beyond any consent log, and the limit of tlog's proof
// arithmetic, which never returns for larger trees.
const maxTreeSize = 1 << 62

// A Checkpoint is a signed statement of the log's size and root hash, in
// the C2SP tlog-checkpoint format: origin, size and base64 root hash on
// three lines, signed as a note.
type Checkpoint struct {
	Origin string    // the log's name: its key's name
	Size   int64     // entries in the tree
	Hash   tlog.Hash // the tree's root hash
	// Signed is the signed note, as handed out.
	Signed []byte
}

// A Receipt proves that an entry is in the log: its index, the inclusion
// proof, and the signed checkpoint the proof leads to.
type Receipt struct {
	Index      int64       `json:"index" cbor:"1,keyasint"`      // the entry's index
	Proof      []tlog.Hash `json:"proof" cbor:"2,keyasint"`      // its inclusion proof
	Checkpoint []byte      `json:"checkpoint" cbor:"3,keyasint"` // the signed checkpoint the proof leads to
}

// A Log is an append-only Merkle log of accepted consent events, with RFC
// 6962 hashing. It is safe for concurrent use; appends are serialized.
type Log struct {
	store  LogStore
	signer note.Signer
	origin string

	mu   sync.Mutex
	size int64
}

// OpenLog opens the log kept in store, signing checkpoints with skey, a
// note signer key (note.GenerateKey); the key's name is the log's origin.
func OpenLog(ctx context.Context, store LogStore, skey string) (*Log, error) {
	s, err := note.NewSigner(skey)
	if err != nil {
		return nil, err
	}
	n, err := store.Size(ctx)
	if err != nil {
		return nil, err
	}
	return &Log{store: store, signer: s, origin: s.Name(), size: n}, nil
}

func (l *Log) hashReader(ctx context.Context) tlog.HashReader {
	return tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) { return l.store.ReadHashes(ctx, idx) })
}

// Append adds data (a signed record) and returns its receipt.
func (l *Log) Append(ctx context.Context, data []byte) (*Receipt, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.size
	hashes, err := tlog.StoredHashes(n, data, l.hashReader(ctx))
	if err != nil {
		return nil, err
	}
	if err := l.store.Append(ctx, n, data, hashes); err != nil {
		return nil, fmt.Errorf("consent: log append: %w", err)
	}
	l.size = n + 1
	ck, err := l.checkpointLocked(ctx)
	if err != nil {
		return nil, err
	}
	proof, err := tlog.ProveRecord(l.size, n, l.hashReader(ctx))
	if err != nil {
		return nil, err
	}
	return &Receipt{Index: n, Proof: proof, Checkpoint: ck.Signed}, nil
}

// Checkpoint returns a signed checkpoint of the log as it is now.
func (l *Log) Checkpoint(ctx context.Context) (*Checkpoint, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.checkpointLocked(ctx)
}

func (l *Log) checkpointLocked(ctx context.Context) (*Checkpoint, error) {
	h, err := tlog.TreeHash(l.size, l.hashReader(ctx))
	if err != nil {
		return nil, err
	}
	text := fmt.Sprintf("%s\n%d\n%s\n", l.origin, l.size, base64.StdEncoding.EncodeToString(h[:]))
	signed, err := note.Sign(&note.Note{Text: text}, l.signer)
	if err != nil {
		return nil, err
	}
	return &Checkpoint{Origin: l.origin, Size: l.size, Hash: h, Signed: signed}, nil
}

// Prove returns a fresh inclusion proof for entry n in a tree of size t,
// which the log must have reached.
func (l *Log) Prove(ctx context.Context, n, t int64) ([]tlog.Hash, error) {
	if err := l.checkSize(t); err != nil {
		return nil, err
	}
	return tlog.ProveRecord(t, n, l.hashReader(ctx))
}

// ProveConsistency returns a proof that the tree of size newSize, which
// the log must have reached, extends the tree of size oldSize.
func (l *Log) ProveConsistency(ctx context.Context, oldSize, newSize int64) ([]tlog.Hash, error) {
	if err := l.checkSize(newSize); err != nil {
		return nil, err
	}
	return tlog.ProveTree(newSize, oldSize, l.hashReader(ctx))
}

// checkSize refuses a tree larger than the log, before tlog's arithmetic
// (which never returns for sizes over maxTreeSize) sees it.
func (l *Log) checkSize(t int64) error {
	l.mu.Lock()
	size := l.size
	l.mu.Unlock()
	if t > size {
		return fmt.Errorf("consent: no tree of size %d: the log holds %d entries", t, size)
	}
	return nil
}

// OpenCheckpoint checks a signed checkpoint with the log's public key (a
// note verifier key) and parses it. A checkpoint claiming more than 2^62
// entries is refused (ErrBadCheckpoint), even when the log signed it.
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
	if err != nil || len(hb) != tlog.HashSize {
		return nil, fmt.Errorf("%w: root hash", ErrBadCheckpoint)
	}
	var h tlog.Hash
	copy(h[:], hb)
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
	if err := tlog.CheckRecord(r.Proof, ck.Size, ck.Hash, r.Index, tlog.RecordHash(data)); err != nil {
		return fmt.Errorf("%w: %v", ErrBadProof, err)
	}
	return nil
}

// VerifyConsistency checks that the log at checkpoint newer only grew
// from older: same origin, not smaller, no more than 2^62 entries, and the
// proof links the roots.
func VerifyConsistency(older, newer *Checkpoint, proof []tlog.Hash) error {
	if older.Origin != newer.Origin {
		return fmt.Errorf("%w: origins %q and %q", ErrBadCheckpoint, older.Origin, newer.Origin)
	}
	if newer.Size > maxTreeSize {
		return fmt.Errorf("%w: size %d over %d", ErrBadCheckpoint, newer.Size, int64(maxTreeSize))
	}
	if newer.Size < older.Size {
		return fmt.Errorf("%w: %d after %d", ErrLogShrunk, newer.Size, older.Size)
	}
	if err := tlog.CheckTree(proof, newer.Size, newer.Hash, older.Size, older.Hash); err != nil {
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
// latest one seen (nil for the first), and remembers it.
func (m *Monitor) Update(signed []byte, proof []tlog.Hash) (*Checkpoint, error) {
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

// A MemLogStore keeps a log in memory: for tests, benchmarks and
// single-process demos where the log need not outlive the process.
type MemLogStore struct {
	mu      sync.Mutex
	entries [][]byte
	hashes  []tlog.Hash
}

var _ LogStore = (*MemLogStore)(nil)

// Size implements LogStore.
func (m *MemLogStore) Size(context.Context) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int64(len(m.entries)), nil
}

// Append implements LogStore.
func (m *MemLogStore) Append(_ context.Context, n int64, data []byte, hashes []tlog.Hash) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n != int64(len(m.entries)) {
		return fmt.Errorf("consent: append of entry %d to a log of %d", n, len(m.entries))
	}
	m.entries = append(m.entries, append([]byte(nil), data...))
	m.hashes = append(m.hashes, hashes...)
	return nil
}

// ReadHashes implements LogStore.
func (m *MemLogStore) ReadHashes(_ context.Context, indexes []int64) ([]tlog.Hash, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return readHashes(m.hashes, indexes)
}

// readHashes returns hashes[i] for each index, as LogStore.ReadHashes.
func readHashes(hashes []tlog.Hash, indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(hashes)) {
			return nil, fmt.Errorf("consent: no stored hash %d", x)
		}
		out[i] = hashes[x]
	}
	return out, nil
}

// Entry implements LogStore.
func (m *MemLogStore) Entry(_ context.Context, n int64) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n < 0 || n >= int64(len(m.entries)) {
		return nil, fmt.Errorf("consent: no log entry %d", n)
	}
	return m.entries[n], nil
}
