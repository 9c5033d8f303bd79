package bounce

import (
	"strings"
	"testing"
)

func TestProviderOf(t *testing.T) {
	cases := []struct{ host, want string }{
		{"contoso-com.mail.protection.outlook.com", ProviderMicrosoft},
		{"AM8PR04MB7321.eurprd04.prod.outlook.com.", ProviderMicrosoft},
		{"eur.olc.protection.outlook.com", ProviderMicrosoft},
		{"aspmx.l.google.com", ProviderGoogle},
		{"GMAIL-SMTP-IN.L.GOOGLE.COM", ProviderGoogle},
		{"googlemail.com", ProviderGoogle},
		{"mta7.am0.yahoodns.net", ProviderYahoo},
		{"mx-aol.mail.gm0.yahoodns.net", ProviderYahoo},
		{"mx01.mail.icloud.com", ProviderApple},
		{"mx0a-00123456.pphosted.com", ProviderProofpoint},
		{"eu-smtp-inbound-1.mimecast.com", ProviderMimecast},
		{"esa1.example.iphmx.com", ProviderCisco},
		{"mx-in.gmx.net", ProviderGMX},
		{"in1-smtp.messagingengine.com", ProviderFastmail},
		{"notgoogle.com", ""},      // a label boundary, not any suffix
		{"google.com.example", ""}, // the suffix must end the name
		{"mx.example.org", ""},
		{"", ""},
	}
	for _, c := range cases {
		if got := ProviderOf(c.host); got != c.want {
			t.Errorf("ProviderOf(%q) = %q, want %q", c.host, got, c.want)
		}
	}
}

// A report's provider: the remote's own host first, then the reporter's,
// then the hosts that carried the report or received the original.
func TestReportProvider(t *testing.T) {
	dsn := func(reporting, remote, received string) string {
		return "From: MAILER-DAEMON@relay.example.net\nTo: " + fixtureVERP + "\n" + received +
			"Content-Type: multipart/report; report-type=delivery-status; boundary=XX\n\n" +
			"--XX\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; " + reporting + "\n\n" +
			"Final-Recipient: rfc822; one@example.com\nAction: failed\nStatus: 5.7.1\nRemote-MTA: dns; " + remote + "\n" +
			"Diagnostic-Code: smtp; 550 5.7.1 blocked\n--XX--\n"
	}
	cases := []struct{ name, msg, want string }{
		{"remote MTA", dsn("relay.example.net", "example-com.mail.protection.outlook.com", ""), ProviderMicrosoft},
		{"reporting MTA", dsn("mx.google.com", "mx.example.org", ""), ProviderGoogle},
		{"received", dsn("relay.example.net", "mx.example.org", "Received: from mta4.am0.yahoodns.net by relay.example.net; Mon, 3 Feb 2025 10:00:00 +0000\n"), ProviderYahoo},
		{"none", dsn("relay.example.net", "mx.example.org", ""), ""},
	}
	for _, c := range cases {
		reps, err := Parse(strings.NewReader(c.msg))
		if err != nil || len(reps) != 1 {
			t.Fatalf("%s: %+v, %v", c.name, reps, err)
		}
		if reps[0].Provider != c.want {
			t.Errorf("%s: provider %q, want %q", c.name, reps[0].Provider, c.want)
		}
	}
}
