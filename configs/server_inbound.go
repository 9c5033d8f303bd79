package configs

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Inbound limits the inbound SMTP listener. A zero field takes the
// listener's own default (mta/inbound), listed in README.md.
type Inbound struct {
	MaxConnections      int           // all clients together; default 100
	MaxConnectionsPerIP int           // one client address; default 10
	MaxBytesInFlight    int64         // message bytes held in memory at once; default 128 MiB
	MaxMessageBytes     int64         // one message; default 10 MiB
	ReadTimeout         time.Duration // waiting for a command, or for more message data; default 5m
}

// fields decodes the inbound section.
func (in *Inbound) fields(d *decoder) map[string]func(string, *yaml.Node) {
	return map[string]func(string, *yaml.Node){
		"max_connections":        d.integer(&in.MaxConnections),
		"max_connections_per_ip": d.integer(&in.MaxConnectionsPerIP),
		"max_bytes_in_flight":    d.byteSize(&in.MaxBytesInFlight),
		"max_message_bytes":      d.byteSize(&in.MaxMessageBytes),
		"read_timeout":           d.duration(&in.ReadTimeout),
	}
}

// check checks the inbound listener's bounds.
func (in Inbound) check(d *decoder) {
	for _, n := range []struct {
		key string
		v   int64
	}{{"inbound.max_connections", int64(in.MaxConnections)}, {"inbound.max_connections_per_ip", int64(in.MaxConnectionsPerIP)},
		{"inbound.max_bytes_in_flight", in.MaxBytesInFlight}, {"inbound.max_message_bytes", in.MaxMessageBytes}} {
		if n.v < 0 {
			d.fieldErr(n.key, "must not be negative")
		}
	}
	if in.MaxMessageBytes > 32<<20 { // mta/bounce reads at most 32 MiB of a report
		d.fieldErr("inbound.max_message_bytes", "%d is over 32 MiB", in.MaxMessageBytes)
	}
	if in.MaxBytesInFlight > 0 && in.MaxMessageBytes > 0 && in.MaxBytesInFlight < in.MaxMessageBytes {
		d.fieldErr("inbound.max_bytes_in_flight", "%d is less than inbound.max_message_bytes %d: no message that size could ever be taken", in.MaxBytesInFlight, in.MaxMessageBytes)
	}
}

// byteSize decodes a byte count: an integer, or a number with a unit KB,
// MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024); null leaves it
// zero.
func (d *decoder) byteSize(dst *int64) func(string, *yaml.Node) {
	return func(path string, v *yaml.Node) {
		if null(v) {
			return
		}
		n, err := parseByteSize(v.Value)
		if v.Kind != yaml.ScalarNode || err != nil {
			d.failed[path] = true
			d.errf(v.Line, "%s: %s is not a byte count (use e.g. 10485760, 10MiB, 256MB)", path, Quote(v.Value))
			return
		}
		*dst = n
	}
}

// byteUnits are the units byteSize accepts, longest first.
var byteUnits = []struct {
	suffix string
	mult   int64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}

// parseByteSize reads "1048576", "1MiB" or "1 MB".
func parseByteSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("bad byte count %s", Quote(s))
	}
	return n * mult, nil
}

// MailtoDomain is the domain of mailto unsubscribe URIs: bounce_domain when
// smtp_listen receives its mail, else none ("").
func (s *Server) MailtoDomain() string {
	if s.SMTPListen == "" {
		return ""
	}
	return s.BounceDomain
}
