//go:build windows

package consent

import (
	"errors"
	"os"

	"golang.org/x/sys/windows"
)

// errLocked is what lockFile returns when another open file holds the lock.
var errLocked = errors.New("file locked")

// lockFile locks a byte range of f far past any data, exclusively and
// without waiting: another open of the same path cannot take it until f is
// closed, and reads and writes of the data are not affected.
func lockFile(f *os.File) error {
	ol := &windows.Overlapped{Offset: 0, OffsetHigh: 0x7fffffff}
	err := windows.LockFileEx(windows.Handle(f.Fd()), windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, ol)
	if errors.Is(err, windows.ERROR_LOCK_VIOLATION) {
		return errLocked
	}
	return err
}
