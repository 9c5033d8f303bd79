package queue

import (
	"path/filepath"
	"sync"
	"testing"
)

// Notes survive a reopen; nil deletes; another campaign's note is apart.
func TestCampaignNotes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, Config{Path: path})
	if v, err := s.CampaignNote("c1", "brake"); v != nil || err != nil {
		t.Fatalf("note before any = %q, %v", v, err)
	}
	if err := s.PutCampaignNote("c1", "brake", []byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.PutCampaignNote("", "brake", []byte("x")); err == nil {
		t.Error("a note of no campaign was stored")
	}
	s.Close()
	s = openTest(t, Config{Path: path})
	if v, err := s.CampaignNote("c1", "brake"); string(v) != `{"a":1}` || err != nil {
		t.Fatalf("note after reopen = %q, %v", v, err)
	}
	if v, _ := s.CampaignNote("c2", "brake"); v != nil {
		t.Errorf("c2's note = %q", v)
	}
	if err := s.PutCampaignNote("c1", "brake", nil); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.CampaignNote("c1", "brake"); v != nil {
		t.Errorf("deleted note = %q", v)
	}
}

// OnCampaignEvent hears each event counted, once per person, and no repeat.
func TestOnCampaignEvent(t *testing.T) {
	var mu sync.Mutex
	var heard []string
	s := openTest(t, Config{OnCampaignEvent: func(c, kind string) {
		mu.Lock()
		heard = append(heard, c+" "+kind)
		mu.Unlock()
	}})
	enqueue(t, s, msg("c1", "ana@acme.example"), msg("c1", "bob@acme.example"))
	for _, to := range []string{"ana@acme.example", "ana@acme.example", "bob@acme.example", "nobody@acme.example"} {
		if _, err := s.CountCampaignEvent("c1", to, "complained"); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(heard) != 2 || heard[0] != "c1 complained" || heard[1] != "c1 complained" {
		t.Errorf("heard %q, want two c1 complained", heard)
	}
}
