//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package consent

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// errLocked is what lockFile returns when another open file holds the lock.
var errLocked = errors.New("file locked")

// lockFile takes an exclusive flock on f without waiting. The lock belongs
// to this open file: another open of the same path, in this process or
// another, cannot take it until f is closed.
func lockFile(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EWOULDBLOCK):
			return errLocked
		default:
			return err
		}
	}
}
