package configs

import "testing"

func TestMailtoDomain(t *testing.T) {
	for _, tc := range []struct {
		smtpListen, bounceDomain, want string
	}{
		{":25", "bounce.example.com", "bounce.example.com"},
		{"", "bounce.example.com", ""},
		{":25", "", ""},
	} {
		s := &Server{SMTPListen: tc.smtpListen, BounceDomain: tc.bounceDomain}
		if got := s.MailtoDomain(); got != tc.want {
			t.Errorf("smtp_listen %q bounce_domain %q: MailtoDomain() = %q, want %q", tc.smtpListen, tc.bounceDomain, got, tc.want)
		}
	}
}

func TestOneClickUnsubscribe(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want bool
	}{
		{"https://mail.example.com", true},
		{"http://localhost:8025", false},
		{"HTTPS://mail.example.com", false}, // public_url is written lower case; as before, only "https://" counts
		{"", false},
	} {
		if got := (&Server{PublicURL: tc.url}).OneClickUnsubscribe(); got != tc.want {
			t.Errorf("public_url %q: OneClickUnsubscribe() = %v, want %v", tc.url, got, tc.want)
		}
	}
}
