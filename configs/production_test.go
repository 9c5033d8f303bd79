package configs

import (
	"testing"
	"time"
)

// The shipped production sample loads and says what it promises.
func TestShippedProductionServer(t *testing.T) {
	s, err := LoadServer("postwarden.production.yaml")
	if err != nil {
		t.Fatal(err)
	}
	d := s.Delivery
	switch {
	case d.Mode != ModeMX, s.PublicURL != "https://mail.example.com", s.DataDir != "/var/lib/postwarden":
		t.Errorf("mode %q, public_url %q, data_dir %q", d.Mode, s.PublicURL, s.DataDir)
	case s.SMTPListen == "" || s.BounceDomain != "bounce.example.com":
		t.Errorf("smtp_listen %q, bounce_domain %q", s.SMTPListen, s.BounceDomain)
	case s.MetricsListen != "127.0.0.1:9464":
		t.Errorf("metrics_listen %q, want loopback", s.MetricsListen)
	case d.Rates["gmail.com"] != 20 || d.Rates["yahoo.com"] != 10 || d.Rates["default"] != 5:
		t.Errorf("rates %v", d.Rates)
	case d.TLS["partner.example.net"] != TLSVerify || !d.MTASTS:
		t.Errorf("tls %v, mta_sts %v", d.TLS, d.MTASTS)
	case d.MaxAge != 5*24*time.Hour || len(s.DKIM) != 2 || s.DKIM[0].Type != "rsa":
		t.Errorf("max_age %v, dkim %+v", d.MaxAge, s.DKIM)
	}
}
