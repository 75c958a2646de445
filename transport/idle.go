package transport

import (
	"sync/atomic"
	"time"

	tcpclient "github.com/plgd-dev/go-coap/v3/tcp/client"
	tcpserver "github.com/plgd-dev/go-coap/v3/tcp/server"
)

// tcpIdleTimeout is a go-coap option that closes a coap+tcp:// or
// coaps+tcp:// connection, the server's or the client's, once no message
// has come on it for that long. It does what options.WithInactivityMonitor
// with a closing callback does, with a monitor that records the time of
// each message without an allocation (go-coap's stores a time.Time in an
// atomic.Value, one allocation per message).
type tcpIdleTimeout time.Duration

func (d tcpIdleTimeout) TCPServerApply(cfg *tcpserver.Config) {
	cfg.CreateInactivityMonitor = d.monitor
}

func (d tcpIdleTimeout) TCPClientApply(cfg *tcpclient.Config) {
	cfg.CreateInactivityMonitor = d.monitor
}

func (d tcpIdleTimeout) monitor() tcpclient.InactivityMonitor {
	return &idleMonitor{timeout: time.Duration(d), start: time.Now()}
}

var (
	_ tcpserver.Option            = tcpIdleTimeout(0)
	_ tcpclient.InactivityMonitor = (*idleMonitor)(nil)
)

// idleMonitor closes a connection that has been silent for longer than
// timeout. go-coap calls Notify for each message received, and
// CheckInactivity from its periodic runner.
type idleMonitor struct {
	timeout time.Duration
	start   time.Time    // with its monotonic reading: the clock's origin
	last    atomic.Int64 // when the last message came, as a time.Duration since start
}

func (m *idleMonitor) Notify() { m.last.Store(int64(time.Since(m.start))) }

func (m *idleMonitor) CheckInactivity(now time.Time, cc *tcpclient.Conn) {
	if now.Sub(m.start)-time.Duration(m.last.Load()) > m.timeout {
		cc.Close()
	}
}
