package mta

import "testing"

func TestRemoteQueueID(t *testing.T) {
	for _, c := range []struct{ reply, want string }{
		{"2.0.0 Ok: queued as 4Bq1xY2ZzPz1xyz", "4Bq1xY2ZzPz1xyz"},
		{"250 2.0.0 Ok: queued as 9F3A21C0B7", "9F3A21C0B7"},
		{"2.0.0 OK  1765051234 d2e1a72fcca58-7f1c5d4a3b2si1234567b3a.512 - gsmtp", "d2e1a72fcca58-7f1c5d4a3b2si1234567b3a.512"},
		{"2.6.0 <20261206.abc@mail.sender.example> [InternalId=61942018473112, Hostname=AM0PR02MB1234.eurprd02.prod.outlook.com] 10452 bytes in 0.123, 82.914 KB/sec Queued mail for delivery", "61942018473112"},
		{"OK id=1tJ5xY-000ABC-1Z", "1tJ5xY-000ABC-1Z"},
		{"2.0.0 4B6LxAbC012345 Message accepted for delivery", "4B6LxAbC012345"},
		{"2.0.0 OK: queued", ""},
		{"Ok", ""},
		{"", ""},
	} {
		if got := RemoteQueueID(c.reply); got != c.want {
			t.Errorf("RemoteQueueID(%q) = %q, want %q", c.reply, got, c.want)
		}
	}
}
