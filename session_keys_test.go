package wechatlogin

import (
	"testing"
	"time"
)

// TestCustodyKeepsTheNewestLogin: a key issued earlier never replaces one
// issued later, whatever order they arrive in; a rotation replaces only
// the key it was made from, keeping its expiry; a key past its lifetime is
// not used.
func TestCustodyKeepsTheNewestLogin(t *testing.T) {
	custody := newSessionKeyCustody()
	defer custody.entries.lease(10)()
	t0 := time.Unix(1_700_000_000, 0)

	custody.keep("alice", "newer", t0.Add(time.Second))
	custody.keep("alice", "older", t0) // a slow exchange answering late
	if got, _ := custody.lookup("alice", t0); got.key != "newer" {
		t.Errorf("kept %q; want the newer login's key", got.key)
	}
	custody.replace("alice", "older", "rotated-from-older")
	if got, _ := custody.lookup("alice", t0); got.key != "newer" {
		t.Errorf("a rotation of a replaced key took effect: %q", got.key)
	}
	custody.replace("alice", "newer", "rotated")
	if got, _ := custody.lookup("alice", t0); got.key != "rotated" {
		t.Errorf("kept %q after a rotation; want its successor", got.key)
	}
	if _, ok := custody.lookup("alice", t0.Add(time.Second+sessionKeyLifetime)); ok {
		t.Error("a key past its lifetime (counted from its login, not its rotation) is still used")
	}
	if _, ok := custody.lookup("bob", t0); ok {
		t.Error("a player never seen has a key")
	}
}

// TestCustodyIsBoundedByCount: the least recently used player's key goes
// when the table is full.
func TestCustodyIsBoundedByCount(t *testing.T) {
	custody := newSessionKeyCustody()
	defer custody.entries.lease(2)()
	now := time.Unix(1_700_000_000, 0)
	custody.keep("a", "ka", now)
	custody.keep("b", "kb", now)
	custody.lookup("a", now)
	custody.keep("c", "kc", now)
	if _, ok := custody.lookup("b", now); ok {
		t.Error("the least recently used key was kept beyond the bound")
	}
	if _, ok := custody.lookup("a", now); !ok {
		t.Error("a recently used key was dropped")
	}
}
