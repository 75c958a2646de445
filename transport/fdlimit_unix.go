//go:build unix

package transport

import "syscall"

// fdReserve is how many file descriptors are kept for everything but
// connections: listeners, files, the database, logs.
const fdReserve = 64

// clampToFileLimit lowers max so that connections cannot exhaust the
// process's file descriptors (RLIMIT_NOFILE), where an accept loop would
// otherwise fail on every call. Each TCP or TLS connection holds one
// descriptor; UDP and DTLS peers share their listener's.
func clampToFileLimit(max int) int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return max
	}
	avail := int64(rl.Cur) - fdReserve
	if avail < 1 {
		avail = 1
	}
	if int64(max) > avail {
		return int(avail)
	}
	return max
}
