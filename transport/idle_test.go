package transport

import (
	"net"
	"testing"
	"time"
)

// TestTCPIdleMonitor: the server's own idle monitor closes a silent
// coap+tcp connection after IdleTimeout, and keeps one that pings.
func TestTCPIdleMonitor(t *testing.T) {
	f := newFixture(t, "coap+tcp", ServerConfig{IdleTimeout: 1500 * time.Millisecond})
	c, err := net.Dial("tcp", hostPort(t, f.url))
	must(t, err)
	defer c.Close()
	csm := []byte{0x00, 0xe1}
	_, err = c.Write(csm)
	must(t, err)
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(6 * time.Second))
	buf := make([]byte, 512)
	for {
		if _, err := c.Read(buf); err != nil {
			break
		}
	}
	d := time.Since(start)
	t.Log("closed after", d)
	if d < 1500*time.Millisecond || d > 3*time.Second {
		t.Fatal(d)
	}
	// a connection that keeps talking stays
	c2, err := net.Dial("tcp", hostPort(t, f.url))
	must(t, err)
	defer c2.Close()
	_, err = c2.Write(csm)
	must(t, err)
	ping := []byte{0x00, 0xe2}
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := c2.Read(buf); err != nil {
				done <- err
				return
			}
		}
	}()
	for range 8 {
		time.Sleep(500 * time.Millisecond)
		if _, err := c2.Write(ping); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-done:
		t.Fatal("closed while talking", err)
	default:
	}
}
