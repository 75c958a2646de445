//go:build !unix

package device

// nearlyFull reports false: outside Unix a full disk is known only by the
// error of the write that failed.
func nearlyFull(string) bool { return false }
