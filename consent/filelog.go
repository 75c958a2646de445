package consent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/mod/sumdb/tlog"
)

// FileLogStore errors.
var (
	// ErrLogCorrupt means a log file is damaged somewhere other than a
	// torn final append.
	ErrLogCorrupt = errors.New("consent: log file corrupt")
	// ErrLogLocked means another FileLogStore, in this process or
	// another, has the log file open.
	ErrLogLocked = errors.New("consent: log file in use by another store")
)

// A frame is a header of the data length (4 bytes), the entry index (8),
// the CRC-32C of those 12 bytes (4) and the CRC-32C of the data (4),
// followed by the data. The header CRC lets a damaged length be told from
// a torn final write. The length's top bit (frameMore) marks every frame
// of a batch but its last, so that opening can cut a batch that is not
// whole; a file written one entry per append has it clear everywhere.
const (
	frameHeader = 20
	frameMore   = 1 << 31
)

// maxEntry bounds one log entry.
const maxEntry = 1 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// A FileLogStore keeps a log in one append-only file of checksummed
// frames, and its tree hashes and leaf index in memory, rebuilt when the
// file is opened.
//
// Each Append writes its whole batch of entries and then syncs the file
// once, before it returns. A batch is atomic across a crash: a crash
// during an append leaves a torn final batch, which OpenFileLogStore cuts
// off as a whole (see OpenFileLogStore); a Log hands out receipts only
// after the sync, so every receipt handed out before the crash still
// verifies, and no entry of a cut batch was acknowledged.
//
// The store holds an exclusive lock on the file (flock on Linux, macOS
// and the BSDs, LockFileEx on Windows; no lock elsewhere) from opening to
// Close, so that no two stores, in one process or two, append to one
// file: a second open fails with ErrLogLocked. Several nodes share a log
// through a database store instead.
type FileLogStore struct {
	mu      sync.Mutex
	f       *os.File
	closed  bool
	broken  error          // set when a failed append could not be undone
	end     int64          // file offset after the last good frame
	offsets []int64        // frame offset of each entry
	hashes  []Hash         // stored hashes, by stored hash index
	leaves  map[Hash]int64 // each leaf hash's first entry
}

var _ LogStore = (*FileLogStore)(nil)

// OpenFileLogStore opens or creates the log file at path, locks it (or
// fails with ErrLogLocked), and replays it. It cuts off a torn final
// batch: after the last whole batch, the frames of a batch whose last
// frame never came, then at most one frame that is cut short or does not
// match its CRCs, beyond which the file holds only zeros (as a file
// system leaves after a power cut). Any other damage fails with
// ErrLogCorrupt, and nothing is cut. This assumes what common file
// systems do with a write torn by a crash: what reaches the disk is a
// prefix of it, possibly followed by zeros.
func OpenFileLogStore(path string) (*FileLogStore, error) {
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := lockFile(f); err != nil {
		f.Close()
		if errors.Is(err, errLocked) {
			return nil, fmt.Errorf("%w: %s", ErrLogLocked, path)
		}
		return nil, fmt.Errorf("consent: locking %s: %w", path, err)
	}
	if errors.Is(statErr, os.ErrNotExist) {
		// Make the new file's directory entry durable.
		if d, err := os.Open(filepath.Dir(path)); err == nil {
			d.Sync()
			d.Close()
		}
	}
	s := &FileLogStore{f: f, leaves: make(map[Hash]int64)}
	if err := s.load(); err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// load replays the file, rebuilding hashes and leaves, and cuts off a
// torn final batch as OpenFileLogStore says.
func (s *FileLogStore) load() error {
	fi, err := s.f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	var off int64
	var hdr [frameHeader]byte
	// The final batch so far: where it starts, and whether its last frame
	// said more follow.
	var batchOff int64
	var batchEntries, batchHashes int
	more := false
	// A frame that is not whole or not valid is a torn write if nothing
	// but zeros follows it; nonZeroEnd is where those zeros start.
	nonZeroEnd := int64(-1)
	torn := func(frameEnd int64) (bool, error) {
		if nonZeroEnd < 0 {
			var err error
			if nonZeroEnd, err = s.nonZeroEnd(size); err != nil {
				return false, err
			}
		}
		return nonZeroEnd <= frameEnd, nil
	}
	for off < size {
		if size-off < frameHeader {
			break // torn header
		}
		if _, err := s.f.ReadAt(hdr[:], off); err != nil {
			return err
		}
		if crc32.Checksum(hdr[:12], castagnoli) != binary.BigEndian.Uint32(hdr[12:]) {
			if ok, err := torn(off + frameHeader); err != nil {
				return err
			} else if ok {
				break // a torn header, zero-filled after
			}
			return fmt.Errorf("%w: bad frame header at offset %d", ErrLogCorrupt, off)
		}
		word := binary.BigEndian.Uint32(hdr[0:])
		length := int64(word &^ frameMore)
		n := int64(binary.BigEndian.Uint64(hdr[4:]))
		if length > maxEntry || n != int64(len(s.offsets)) {
			return fmt.Errorf("%w: frame at offset %d holds entry %d of %d bytes, want entry %d", ErrLogCorrupt, off, n, length, len(s.offsets))
		}
		if off+frameHeader+length > size {
			break // torn data
		}
		data := make([]byte, length)
		if _, err := s.f.ReadAt(data, off+frameHeader); err != nil {
			return err
		}
		if crc32.Checksum(data, castagnoli) != binary.BigEndian.Uint32(hdr[16:]) {
			if ok, err := torn(off + frameHeader + length); err != nil {
				return err
			} else if ok {
				break // torn data, zero-filled after
			}
			return fmt.Errorf("%w: bad frame data at offset %d", ErrLogCorrupt, off)
		}
		if !more {
			batchOff, batchEntries, batchHashes = off, len(s.offsets), len(s.hashes)
		}
		leaf := LeafHash(data)
		hs, err := tlog.StoredHashesForRecordHash(n, tlog.Hash(leaf), s.reader())
		if err != nil {
			return err
		}
		s.offsets = append(s.offsets, off)
		s.hashes = append(s.hashes, fromTlog(hs)...)
		if _, dup := s.leaves[leaf]; !dup {
			// A log written before appends were idempotent may hold an
			// entry twice; Find gives the first.
			s.leaves[leaf] = n
		}
		off += frameHeader + length
		more = word&frameMore != 0
	}
	if more {
		// The final batch never got its last frame: cut it whole.
		for n := batchEntries; n < len(s.offsets); n++ {
			data, err := s.entry(int64(n))
			if err != nil {
				return err
			}
			if leaf := LeafHash(data); s.leaves[leaf] == int64(n) {
				delete(s.leaves, leaf)
			}
		}
		off, s.offsets, s.hashes = batchOff, s.offsets[:batchEntries], s.hashes[:batchHashes]
	}
	if off < size {
		if err := s.f.Truncate(off); err != nil {
			return err
		}
		if err := s.f.Sync(); err != nil {
			return err
		}
	}
	s.end = off
	return nil
}

// nonZeroEnd returns the offset just after the file's last non-zero
// byte before size: 0 for a file of zeros.
func (s *FileLogStore) nonZeroEnd(size int64) (int64, error) {
	buf := make([]byte, 64<<10)
	for end := size; end > 0; {
		start := max(0, end-int64(len(buf)))
		chunk := buf[:end-start]
		if _, err := s.f.ReadAt(chunk, start); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		for i := len(chunk) - 1; i >= 0; i-- {
			if chunk[i] != 0 {
				return start + int64(i) + 1, nil
			}
		}
		end = start
	}
	return 0, nil
}

func (s *FileLogStore) reader() tlog.HashReader {
	return tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		hs, err := readHashes(s.hashes, idx)
		return toTlog(hs), err
	})
}

// errClosed is returned by every method of a closed store.
var errClosed = fmt.Errorf("consent: log store closed: %w", os.ErrClosed)

// Size implements LogStore.
func (s *FileLogStore) Size(context.Context) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, errClosed
	}
	return int64(len(s.offsets)), nil
}

// ReadHashes implements LogStore.
func (s *FileLogStore) ReadHashes(_ context.Context, indexes []int64) ([]Hash, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errClosed
	}
	return readHashes(s.hashes, indexes)
}

// Find implements LogStore.
func (s *FileLogStore) Find(_ context.Context, leaf Hash) (int64, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, false, errClosed
	}
	n, ok := s.leaves[leaf]
	return n, ok, nil
}

// Append implements LogStore: the batch's frames are written and the file
// synced once before it returns; on failure (a full disk, say) the file
// is cut back to where it was, so the log stays as it was. An entry over
// 1 MiB, or whose Leaf is not its LeafHash, is refused.
func (s *FileLogStore) Append(ctx context.Context, start int64, entries []LogEntry, hashes []Hash) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var total int
	for i, e := range entries {
		if len(e.Data) > maxEntry {
			return fmt.Errorf("consent: log entry of %d bytes, limit %d", len(e.Data), maxEntry)
		}
		if LeafHash(e.Data) != e.Leaf {
			return fmt.Errorf("consent: entry %d of a log append has a wrong leaf hash", i)
		}
		total += frameHeader + len(e.Data)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	if err := checkAppend(start, int64(len(s.offsets)), entries, s.leaves); err != nil {
		return err
	}
	k := int64(len(entries))
	if want := tlog.StoredHashCount(start+k) - tlog.StoredHashCount(start); int64(len(hashes)) != want {
		return fmt.Errorf("consent: %d hashes for %d entries at %d, want %d", len(hashes), k, start, want)
	}
	if s.broken != nil {
		return fmt.Errorf("consent: log store needs reopening after a failed append: %w", s.broken)
	}
	if k == 0 {
		return nil
	}
	buf := make([]byte, 0, total)
	offsets := make([]int64, k)
	for i, e := range entries {
		offsets[i] = s.end + int64(len(buf))
		word := uint32(len(e.Data))
		if int64(i) < k-1 {
			word |= frameMore
		}
		buf = appendFrame(buf, word, start+int64(i), e.Data)
	}
	undo := func(err error) error {
		// Cut the file back; if that fails too, refuse appends until the
		// store is reopened (load then cuts the torn batch).
		if terr := s.f.Truncate(s.end); terr != nil {
			s.broken = err
		} else if serr := s.f.Sync(); serr != nil {
			s.broken = err
		}
		return err
	}
	if _, err := s.f.WriteAt(buf, s.end); err != nil {
		return undo(err)
	}
	if err := s.f.Sync(); err != nil {
		return undo(err)
	}
	s.offsets = append(s.offsets, offsets...)
	s.hashes = append(s.hashes, hashes...)
	for i, e := range entries {
		s.leaves[e.Leaf] = start + int64(i)
	}
	s.end += int64(len(buf))
	return nil
}

// appendFrame appends the frame of entry n to buf; word is the data length
// with frameMore set for all but a batch's last frame.
func appendFrame(buf []byte, word uint32, n int64, data []byte) []byte {
	var hdr [frameHeader]byte
	binary.BigEndian.PutUint32(hdr[0:], word)
	binary.BigEndian.PutUint64(hdr[4:], uint64(n))
	binary.BigEndian.PutUint32(hdr[12:], crc32.Checksum(hdr[:12], castagnoli))
	binary.BigEndian.PutUint32(hdr[16:], crc32.Checksum(data, castagnoli))
	return append(append(buf, hdr[:]...), data...)
}

// Entry implements LogStore.
func (s *FileLogStore) Entry(_ context.Context, n int64) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errClosed
	}
	return s.entry(n)
}

func (s *FileLogStore) entry(n int64) ([]byte, error) {
	if n < 0 || n >= int64(len(s.offsets)) {
		return nil, fmt.Errorf("consent: no log entry %d", n)
	}
	var hdr [frameHeader]byte
	if _, err := s.f.ReadAt(hdr[:], s.offsets[n]); err != nil {
		return nil, err
	}
	data := make([]byte, binary.BigEndian.Uint32(hdr[:])&^frameMore)
	if _, err := s.f.ReadAt(data, s.offsets[n]+frameHeader); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return data, nil
}

// Close releases the lock and closes the file. Closing a closed store
// does nothing and returns nil; every other method of a closed store
// fails with an error matching os.ErrClosed.
func (s *FileLogStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.f.Close()
}
