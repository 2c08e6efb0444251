package wechatlogin

import (
	"bytes"
	"testing"
	"time"
)

func TestCodeKeyHidesTheCode(t *testing.T) {
	k := newCodeKey("wxapp", "alice.1")
	if bytes.Contains(k[:], []byte("alice")) {
		t.Fatal("the key holds the code")
	}
	if k != newCodeKey("wxapp", "alice.1") {
		t.Fatal("the key is not stable")
	}
	if k == newCodeKey("wxother", "alice.1") || newCodeKey("wx", "a1") == newCodeKey("wxa", "1") {
		t.Fatal("codes of different apps share a key")
	}
}

func TestMemoryCodeCacheExpiresAndIsBounded(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := newMemoryCodeCache(2, 5*time.Minute)
	alice, bob, carol := newCodeKey("wx", "alice"), newCodeKey("wx", "bob"), newCodeKey("wx", "carol")
	c.add(alice, Identity{OpenID: "oAlice"}, now)
	if id, ok := c.get(alice, now.Add(5*time.Minute-time.Nanosecond)); !ok || id.OpenID != "oAlice" {
		t.Fatalf("fresh entry missing: %+v %v", id, ok)
	}
	if _, ok := c.get(alice, now.Add(5*time.Minute)); ok {
		t.Fatal("an entry outlived cache_ttl")
	}
	if c.entries.Len() != 0 {
		t.Fatal("an expired entry was kept after being read")
	}
	c.add(alice, Identity{OpenID: "oAlice"}, now)
	c.add(bob, Identity{OpenID: "oBob"}, now)
	c.get(alice, now) // alice is now the most recently used
	c.add(carol, Identity{OpenID: "oCarol"}, now)
	if _, ok := c.get(bob, now); ok {
		t.Error("the least recently used entry was not dropped at cache_size")
	}
	if _, ok := c.get(alice, now); !ok {
		t.Error("a recently used entry was dropped")
	}
}

func TestNoCodeCacheRemembersNothing(t *testing.T) {
	var c codeCache = noCodeCache{}
	k := newCodeKey("wx", "alice")
	c.add(k, Identity{OpenID: "o"}, time.Now())
	if _, ok := c.get(k, time.Now()); ok {
		t.Fatal("cache_ttl 0 cached a result")
	}
}
