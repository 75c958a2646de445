//go:build !unix

package transport

// clampToFileLimit returns max: this platform has no RLIMIT_NOFILE.
func clampToFileLimit(max int) int { return max }
