package consent

import (
	"bytes"
	"context"
	"fmt"
	"sync"
)

// A LogStore keeps a consent log's entries and tree hashes. It is the
// truth about the log: several Logs, in one process or on several nodes,
// may append to one store, and each learns the log's size from it.
//
// The contract, which the conformance suite in package consent/logtest
// checks:
//
//   - Append is a compare-and-append. Append(ctx, start, entries, hashes)
//     stores entries as entries start, start+1, ..., and adds hashes to the
//     end of the store's sequence of hashes, but only if the store holds
//     exactly start entries and none of the entries' leaf hashes is stored
//     already or repeated among entries. Otherwise it stores nothing and
//     returns an error matching ErrLogConflict with errors.Is.
//   - Append is atomic and durable: when it returns nil, every entry and
//     hash is stored and survives a crash; when it returns an error, none
//     is stored, and a crash in the middle of Append leaves either all or
//     none. A Log hands out receipts as soon as Append returns.
//   - Nothing stored is ever changed or removed.
//   - A store does not keep or change the slices it is given, and may be
//     used from several goroutines at once.
//
// A SQL store implements Append in one transaction: check the number of
// entries, insert the entries (the leaf hash a unique key) and the hashes,
// commit; a unique-key violation or a serialization failure is a conflict.
//
// Implementations: FileLogStore, MemLogStore; the cloud's stores.
type LogStore interface {
	// Size returns how many entries the store holds.
	Size(ctx context.Context) (int64, error)
	// Append stores entries at start and their tree hashes, as above.
	// The hashes are those the entries add to the log's Merkle tree, in
	// the order the Log gives them; the store keeps them as a plain
	// sequence.
	Append(ctx context.Context, start int64, entries []LogEntry, hashes []Hash) error
	// ReadHashes returns the hashes at the given positions of the
	// store's sequence of hashes (0 is the first hash ever appended), in
	// the order asked, or an error if one is not stored.
	ReadHashes(ctx context.Context, indexes []int64) ([]Hash, error)
	// Entry returns the data of entry n.
	Entry(ctx context.Context, n int64) ([]byte, error)
	// Find returns the index of the entry whose leaf hash is leaf, and
	// false if the store holds none.
	Find(ctx context.Context, leaf Hash) (n int64, ok bool, err error)
}

// A LogEntry is one entry appended to a LogStore.
type LogEntry struct {
	Data []byte // the entry: a signed record, as received
	Leaf Hash   // LeafHash(Data): the key by which LogStore.Find finds it
}

// A MemLogStore keeps a log in memory: for tests, benchmarks and
// single-process demos where the log need not outlive the process. Its
// zero value is an empty log.
type MemLogStore struct {
	mu      sync.Mutex
	entries [][]byte
	hashes  []Hash
	leaves  map[Hash]int64
}

var _ LogStore = (*MemLogStore)(nil)

// Size implements LogStore.
func (m *MemLogStore) Size(context.Context) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int64(len(m.entries)), nil
}

// Append implements LogStore.
func (m *MemLogStore) Append(_ context.Context, start int64, entries []LogEntry, hashes []Hash) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := checkAppend(start, int64(len(m.entries)), entries, m.leaves); err != nil {
		return err
	}
	if m.leaves == nil {
		m.leaves = make(map[Hash]int64)
	}
	for i, e := range entries {
		m.entries = append(m.entries, bytes.Clone(e.Data))
		m.leaves[e.Leaf] = start + int64(i)
	}
	m.hashes = append(m.hashes, hashes...)
	return nil
}

// checkAppend checks an append of entries at start to a store of size
// entries holding leaves: a conflict unless start is size and the
// entries' leaves are new and distinct.
func checkAppend(start, size int64, entries []LogEntry, leaves map[Hash]int64) error {
	if start != size {
		return fmt.Errorf("%w: append at %d to a log of %d entries", ErrLogConflict, start, size)
	}
	for i, e := range entries {
		if n, ok := leaves[e.Leaf]; ok {
			return fmt.Errorf("%w: entry %d of the append is entry %d already", ErrLogConflict, i, n)
		}
		for _, f := range entries[:i] {
			if f.Leaf == e.Leaf {
				return fmt.Errorf("%w: entry %d of the append is in it twice", ErrLogConflict, i)
			}
		}
	}
	return nil
}

// ReadHashes implements LogStore.
func (m *MemLogStore) ReadHashes(_ context.Context, indexes []int64) ([]Hash, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return readHashes(m.hashes, indexes)
}

// readHashes returns hashes[i] for each index, as LogStore.ReadHashes.
func readHashes(hashes []Hash, indexes []int64) ([]Hash, error) {
	out := make([]Hash, len(indexes))
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
	return bytes.Clone(m.entries[n]), nil
}

// Find implements LogStore.
func (m *MemLogStore) Find(_ context.Context, leaf Hash) (int64, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.leaves[leaf]
	return n, ok, nil
}
