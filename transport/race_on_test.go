//go:build race

package transport

// raceEnabled reports whether the race detector is on: it makes the
// server several times slower, so floods meant to stay within what the
// server can take are sent slower.
const raceEnabled = true
