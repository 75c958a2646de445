//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly || windows)

package consent

import (
	"errors"
	"os"
)

// errLocked is what lockFile returns when another open file holds the lock.
var errLocked = errors.New("file locked")

// lockFile does nothing here: this system has no flock, so a FileLogStore
// does not keep a second store off its file.
func lockFile(*os.File) error { return nil }
