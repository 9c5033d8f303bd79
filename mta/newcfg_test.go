package mta

import (
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestWithDefaults(t *testing.T) {
	got := withDefaults(Config{SMTPPort: -1, IdleTimeout: time.Second})
	want := Config{ConcurrencyPerDomain: DefaultConcurrencyPerDomain, SMTPPort: DefaultSMTPPort,
		DialTimeout: 30 * time.Second, CommandTimeout: 5 * time.Minute, IdleTimeout: time.Second,
		MaxMessagesPerConnection: DefaultMaxMessagesPerConnection}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("withDefaults = %+v, want %+v", got, want)
	}
}

func TestRelayAddr(t *testing.T) {
	for _, tc := range []struct{ in, want, wantErr string }{
		{"smtp://relay.example", "relay.example:25", ""},
		{"smtp://relay.example:587", "relay.example:587", ""},
		{"smtp://[::1]:2525", "[::1]:2525", ""},
		{"smtps://relay.example", "", "want smtp://host:port"},
		{"smtp://user@relay.example", "", "want smtp://host:port"},
		{"smtp://relay.example/x", "", "want smtp://host:port"},
		{"smtp://", "", "want smtp://host:port"},
		{"relay.example:25", "", "want smtp://host:port"},
	} {
		got, err := relayAddr(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("relayAddr(%q) err = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("relayAddr(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestResolverFor(t *testing.T) {
	if r, err := resolverFor(nil, ""); err != nil || r == nil {
		t.Errorf("resolverFor(nil, \"\") = %v, %v; want the system's", r, err)
	}
	if r, err := resolverFor(nil, "127.0.0.1:53"); err != nil || r == nil {
		t.Errorf("resolverFor(nil, host:port) = %v, %v", r, err)
	}
	for _, bad := range []string{"127.0.0.1", "127.0.0.1:"} {
		if _, err := resolverFor(nil, bad); err == nil || !strings.Contains(err.Error(), "is not host:port") {
			t.Errorf("resolverFor(nil, %q) err = %v", bad, err)
		}
	}
}

func TestParseRoutes(t *testing.T) {
	got, err := parseRoutes(map[string]string{"Example.COM": "127.0.0.1:2525"})
	if err != nil || !reflect.DeepEqual(got, map[string]string{"example.com": "127.0.0.1:2525"}) {
		t.Errorf("parseRoutes = %v, %v", got, err)
	}
	for _, bad := range []map[string]string{{"example.com": "127.0.0.1"}, {"bad domain!": "127.0.0.1:25"}} {
		if _, err := parseRoutes(bad); err == nil || !strings.HasPrefix(err.Error(), "mta: route") {
			t.Errorf("parseRoutes(%v) err = %v", bad, err)
		}
	}
}

func TestParseTLSPolicies(t *testing.T) {
	got, err := parseTLSPolicies(nil)
	if err != nil || !reflect.DeepEqual(got, map[string]string{"default": TLSOpportunistic}) {
		t.Errorf("parseTLSPolicies(nil) = %v, %v", got, err)
	}
	got, err = parseTLSPolicies(map[string]string{"default": TLSRequired, "Example.com": TLSVerify})
	if err != nil || !reflect.DeepEqual(got, map[string]string{"default": TLSRequired, "example.com": TLSVerify}) {
		t.Errorf("parseTLSPolicies = %v, %v", got, err)
	}
	if _, err := parseTLSPolicies(map[string]string{"example.com": "sometimes"}); err == nil || !strings.Contains(err.Error(), "want none, opportunistic") {
		t.Errorf("parseTLSPolicies(bad policy) err = %v", err)
	}
}

func TestParseRates(t *testing.T) {
	got, err := parseRates(map[string]float64{"default": 5, "Example.com": 0.5})
	if err != nil || !reflect.DeepEqual(got, map[string]float64{"default": 5, "example.com": 0.5}) {
		t.Errorf("parseRates = %v, %v", got, err)
	}
	for _, r := range []float64{-1, math.NaN(), math.Inf(1)} {
		if _, err := parseRates(map[string]float64{"example.com": r}); err == nil || !strings.Contains(err.Error(), "not a number of messages per second") {
			t.Errorf("parseRates(%v) err = %v", r, err)
		}
	}
}
