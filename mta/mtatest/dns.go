package mtatest

import (
	"fmt"
	"net"

	"github.com/miekg/dns"
)

// StartDNS serves h as a real DNS server over UDP on 127.0.0.1, for tests
// that point delivery.resolver (or a resolver's server) at it; stop shuts it
// down.
func StartDNS(h dns.Handler) (addr string, stop func(), err error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("mtatest: dns listen: %w", err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: h, NotifyStartedFunc: func() { close(started) }}
	go srv.ActivateAndServe()
	<-started
	return pc.LocalAddr().String(), func() { srv.Shutdown() }, nil
}
