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

// ErrLogCorrupt means a log file is damaged somewhere other than a torn
// final append.
var ErrLogCorrupt = errors.New("consent: log file corrupt")

// A frame is a header of the data length (4 bytes), the entry index (8),
// the CRC-32C of those 12 bytes (4) and the CRC-32C of the data (4),
// followed by the data. The header CRC lets a damaged length be told from
// a torn final write.
const frameHeader = 20

// maxEntry bounds one log entry.
const maxEntry = 1 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// A FileLogStore keeps a log in one append-only file of checksummed
// frames, synced before each Append returns, and its tree hashes in
// memory, rebuilt when the file is opened. A crash during an append
// leaves a torn final frame, which OpenFileLogStore cuts off: every
// receipt handed out before the crash still verifies.
type FileLogStore struct {
	mu      sync.Mutex
	f       *os.File
	broken  error       // set when a failed append could not be undone
	end     int64       // file offset after the last good frame
	offsets []int64     // frame offset of each entry
	hashes  []tlog.Hash // stored hashes, by stored hash index
}

var _ LogStore = (*FileLogStore)(nil)

// OpenFileLogStore opens or creates the log file at path.
func OpenFileLogStore(path string) (*FileLogStore, error) {
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if errors.Is(statErr, os.ErrNotExist) {
		// Make the new file's directory entry durable.
		if d, err := os.Open(filepath.Dir(path)); err == nil {
			d.Sync()
			d.Close()
		}
	}
	s := &FileLogStore{f: f}
	if err := s.load(); err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// load replays the file, rebuilding hashes, and cuts off a torn final
// append: a partial header, a whole header whose data runs past the end,
// a last frame whose data does not match its CRC, or a tail of zeros (as a
// file system leaves after a power cut). Any other damage is
// ErrLogCorrupt, and nothing is cut.
func (s *FileLogStore) load() error {
	fi, err := s.f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	var off int64
	var hdr [frameHeader]byte
	for off < size {
		if size-off < frameHeader {
			break // torn header
		}
		if _, err := s.f.ReadAt(hdr[:], off); err != nil {
			return err
		}
		if crc32.Checksum(hdr[:12], castagnoli) != binary.BigEndian.Uint32(hdr[12:]) {
			if zeros, err := s.allZero(off, size); err != nil {
				return err
			} else if zeros {
				break // the file system zero-filled a torn append
			}
			return fmt.Errorf("%w: bad frame header at offset %d", ErrLogCorrupt, off)
		}
		length := int64(binary.BigEndian.Uint32(hdr[0:]))
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
			if off+frameHeader+length == size {
				break // a torn final frame
			}
			return fmt.Errorf("%w: bad frame data at offset %d", ErrLogCorrupt, off)
		}
		hs, err := tlog.StoredHashes(n, data, s.reader())
		if err != nil {
			return err
		}
		s.offsets = append(s.offsets, off)
		s.hashes = append(s.hashes, hs...)
		off += frameHeader + length
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

// allZero reports whether the file holds only zero bytes from off to size.
func (s *FileLogStore) allZero(off, size int64) (bool, error) {
	buf := make([]byte, 64<<10)
	for off < size {
		n, err := s.f.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
		for _, b := range buf[:n] {
			if b != 0 {
				return false, nil
			}
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return false, err
		}
		off += int64(n)
		if n == 0 {
			break
		}
	}
	return true, nil
}

func (s *FileLogStore) reader() tlog.HashReader {
	return tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) { return s.read(idx) })
}

func (s *FileLogStore) read(indexes []int64) ([]tlog.Hash, error) {
	return readHashes(s.hashes, indexes)
}

// Size implements LogStore.
func (s *FileLogStore) Size(context.Context) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int64(len(s.offsets)), nil
}

// ReadHashes implements LogStore.
func (s *FileLogStore) ReadHashes(_ context.Context, indexes []int64) ([]tlog.Hash, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.read(indexes)
}

// Append implements LogStore: the frame is written and synced before it
// returns; on failure (a full disk, say) the file is cut back to where it
// was, so the log stays as it was.
func (s *FileLogStore) Append(_ context.Context, n int64, data []byte, hashes []tlog.Hash) error {
	if len(data) > maxEntry {
		return fmt.Errorf("consent: log entry of %d bytes, limit %d", len(data), maxEntry)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if n != int64(len(s.offsets)) {
		return fmt.Errorf("consent: append of entry %d to a log of %d", n, len(s.offsets))
	}
	if want := tlog.StoredHashCount(n + 1); int64(len(s.hashes)+len(hashes)) != want {
		return fmt.Errorf("consent: %d hashes for entry %d", len(hashes), n)
	}
	if s.broken != nil {
		return fmt.Errorf("consent: log store needs reopening after a failed append: %w", s.broken)
	}
	frame := make([]byte, frameHeader+len(data))
	binary.BigEndian.PutUint32(frame[0:], uint32(len(data)))
	binary.BigEndian.PutUint64(frame[4:], uint64(n))
	binary.BigEndian.PutUint32(frame[12:], crc32.Checksum(frame[:12], castagnoli))
	binary.BigEndian.PutUint32(frame[16:], crc32.Checksum(data, castagnoli))
	copy(frame[frameHeader:], data)
	undo := func(err error) error {
		// Cut the file back; if that fails too, refuse appends until the
		// store is reopened (load then cuts the torn frame).
		if terr := s.f.Truncate(s.end); terr != nil {
			s.broken = err
		} else if serr := s.f.Sync(); serr != nil {
			s.broken = err
		}
		return err
	}
	if _, err := s.f.WriteAt(frame, s.end); err != nil {
		return undo(err)
	}
	if err := s.f.Sync(); err != nil {
		return undo(err)
	}
	s.offsets = append(s.offsets, s.end)
	s.hashes = append(s.hashes, hashes...)
	s.end += int64(len(frame))
	return nil
}

// Entry implements LogStore.
func (s *FileLogStore) Entry(_ context.Context, n int64) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n < 0 || n >= int64(len(s.offsets)) {
		return nil, fmt.Errorf("consent: no log entry %d", n)
	}
	var hdr [frameHeader]byte
	if _, err := s.f.ReadAt(hdr[:], s.offsets[n]); err != nil {
		return nil, err
	}
	data := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := s.f.ReadAt(data, s.offsets[n]+frameHeader); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return data, nil
}

// Close closes the file.
func (s *FileLogStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f.Close()
}
