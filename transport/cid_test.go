package transport

import (
	"context"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sensible-iot/sensible/device/identity"
)

// udpRelay forwards datagrams between one client and a server, from an
// upstream socket that rebind replaces, so the server sees the client's
// source port change, as behind a NAT that drops its binding.
type udpRelay struct {
	down   *net.UDPConn
	server *net.UDPAddr
	client atomic.Pointer[net.UDPAddr]
	up     atomic.Pointer[net.UDPConn]
	drop   atomic.Int32 // client datagrams still to drop
	wg     sync.WaitGroup
}

func newUDPRelay(t *testing.T, server string) *udpRelay {
	t.Helper()
	sa, err := net.ResolveUDPAddr("udp", server)
	must(t, err)
	down, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	must(t, err)
	r := &udpRelay{down: down, server: sa}
	r.rebind(t)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := down.ReadFromUDP(buf)
			if err != nil {
				return
			}
			r.client.Store(from)
			if r.drop.Load() > 0 && r.drop.Add(-1) >= 0 {
				continue // lost on the way
			}
			r.up.Load().WriteToUDP(buf[:n], r.server)
		}
	}()
	t.Cleanup(func() {
		down.Close()
		r.up.Load().Close()
		r.wg.Wait()
	})
	return r
}

// rebind moves upstream traffic to a new socket with a new source port.
func (r *udpRelay) rebind(t *testing.T) {
	up, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	must(t, err)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, err := up.Read(buf)
			if err != nil {
				return
			}
			if c := r.client.Load(); c != nil {
				r.down.WriteToUDP(buf[:n], c)
			}
		}
	}()
	if old := r.up.Swap(up); old != nil {
		old.Close()
	}
}

func (r *udpRelay) port() int { return r.up.Load().LocalAddr().(*net.UDPAddr).Port }

// TestDTLSConnectionIDSurvivesPortChange: with DTLS connection IDs a
// device whose source port changes mid-session keeps its session, with no
// new handshake.
func TestDTLSConnectionIDSurvivesPortChange(t *testing.T) {
	var handshakes atomic.Int32
	f := newFixture(t, "coaps", ServerConfig{PSK: func(_ context.Context, id identity.ID) ([]byte, error) {
		handshakes.Add(1)
		return DerivePSK(fleetSecret, id)
	}})
	u, _ := url.Parse(f.url)
	relay := newUDPRelay(t, u.Host)
	c, err := Dial(ctx5(t), "coaps://"+relay.down.LocalAddr().String(), f.config(t, true))
	must(t, err)
	defer c.Close()
	var a ack
	must(t, c.Post(ctx5(t), "/v1/telemetry", []reading{{"p", 1}}, &a))
	before := relay.port()
	relay.rebind(t)
	if relay.port() == before {
		t.Fatal("relay kept its port")
	}
	for i := range 3 {
		a = ack{}
		if err := c.Post(ctx5(t), "/v1/telemetry", []reading{{"p", float64(i)}}, &a); err != nil {
			t.Fatalf("request %d after the port change: %v", i, err)
		}
		if a.Device != f.dev.String() {
			t.Fatalf("served as %q, want %s", a.Device, f.dev)
		}
	}
	if n := handshakes.Load(); n != 1 {
		t.Fatalf("%d handshakes, want 1: the session did not survive the port change", n)
	}
}

// TestDroppedDatagram: a request lost on the way is retransmitted (CoAP
// confirmable messages) and answered, over UDP and DTLS.
func TestDroppedDatagram(t *testing.T) {
	for _, scheme := range []string{"coap", "coaps"} {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{})
			u, _ := url.Parse(f.url)
			relay := newUDPRelay(t, u.Host)
			c, err := Dial(ctx5(t), scheme+"://"+relay.down.LocalAddr().String(), f.config(t, true))
			must(t, err)
			defer c.Close()
			relay.drop.Store(1)
			var a ack
			if err := c.Post(ctx5(t), "/v1/telemetry", []reading{{"p", 1}}, &a); err != nil {
				t.Fatalf("request whose first datagram was lost: %v", err)
			}
			if relay.drop.Load() > 0 || a.Count != 1 {
				t.Fatalf("nothing was dropped, or the answer is wrong: %+v", a)
			}
		})
	}
}
