package transport

import (
	"crypto/hkdf"
	"crypto/sha256"
	"errors"

	"github.com/pion/logging"

	"github.com/sensible-iot/sensible/device/identity"
)

// PSKSize is the length of a derived DTLS pre-shared key: 128 bits, the
// key size of TLS_PSK_WITH_AES_128_CCM_8.
const PSKSize = 16

// DerivePSK derives a device's DTLS pre-shared key from a fleet secret with
// HKDF-SHA256 (RFC 5869), the device ID as info. The factory writes each
// device its own key; the cloud, holding only the fleet secret, derives it
// again when the device connects, so one leaked device key reveals no
// other. The secret should hold at least 32 random bytes.
func DerivePSK(fleetSecret []byte, id identity.ID) ([]byte, error) {
	if len(fleetSecret) < 16 {
		return nil, errors.New("transport: fleet secret shorter than 16 bytes")
	}
	return hkdf.Key(sha256.New, fleetSecret, []byte("sensible dtls psk v1"), id.String(), PSKSize)
}

// silentLogs keeps pion/dtls from writing to stderr.
type silentLogs struct{}

func (silentLogs) NewLogger(string) logging.LeveledLogger {
	return logging.NewDefaultLeveledLoggerForScope("", logging.LogLevelDisabled, discard{})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
