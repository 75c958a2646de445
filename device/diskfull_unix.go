//go:build unix

package device

import "golang.org/x/sys/unix"

// lowSpace is the free space under which a failed write is taken for a
// full disk, whatever error bbolt gave: it does not always keep the
// cause (its file resize reports the error as text).
const lowSpace = 1 << 20

// nearlyFull reports whether the file system of dir has less than
// lowSpace left for the user.
func nearlyFull(dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	return uint64(st.Bavail)*uint64(st.Bsize) < lowSpace
}
