package transport

import (
	"errors"
	"net"
	"net/netip"
	"sync"
)

var (
	errTooManyConns  = errors.New("transport: connection limit reached")
	errPrefixFull    = errors.New("transport: connection limit for the source network reached")
	errHandshakeRate = errors.New("transport: handshake rate limit reached")
)

// admission counts live connections across every listener of a server,
// in all and per source prefix (IPv4 /24, IPv6 /56), so that neither a
// flood nor one network can take every slot. It is safe for concurrent
// use.
type admission struct {
	max       int
	perPrefix int

	mu       sync.Mutex
	total    int
	prefixes map[netip.Prefix]int
}

func newAdmission(max, perPrefix int) *admission {
	return &admission{max: max, perPrefix: perPrefix, prefixes: make(map[netip.Prefix]int)}
}

// prefixOf returns the source network an address counts against.
func prefixOf(a net.Addr) netip.Prefix {
	var ap netip.AddrPort
	switch v := a.(type) {
	case *net.UDPAddr:
		ap = v.AddrPort()
	case *net.TCPAddr:
		ap = v.AddrPort()
	default:
		var err error
		if ap, err = netip.ParseAddrPort(a.String()); err != nil {
			return netip.Prefix{}
		}
	}
	return addrPrefix(ap.Addr())
}

// addrPrefix returns the source network of ip: its IPv4 /24 or IPv6 /56.
func addrPrefix(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap()
	bits := 24
	if ip.Is6() {
		bits = 56
	}
	p, _ := ip.Prefix(bits)
	return p
}

// enter admits a connection from addr, or says why not. leave gives the
// slot back; it may be called more than once.
func (a *admission) enter(addr net.Addr) (leave func(), err error) {
	p := prefixOf(addr)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.total >= a.max {
		return nil, errTooManyConns
	}
	if a.prefixes[p] >= a.perPrefix {
		return nil, errPrefixFull
	}
	a.total++
	a.prefixes[p]++
	var once sync.Once
	return func() { once.Do(func() { a.leave(p) }) }, nil
}

func (a *admission) leave(p netip.Prefix) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.total--
	if a.prefixes[p]--; a.prefixes[p] <= 0 {
		delete(a.prefixes, p)
	}
}

// full reports whether no connection at all would be admitted now.
func (a *admission) full() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.total >= a.max
}

// live returns the number of admitted connections.
func (a *admission) live() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.total
}
