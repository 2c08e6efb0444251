package wechatlogin

import (
	"crypto/sha256"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// codeKey names a code in the cache and among calls in flight: a hash of
// (app_id, code), so the code itself is never kept.
type codeKey [sha256.Size]byte

func newCodeKey(appID, code string) codeKey {
	h := sha256.New()
	h.Write([]byte(appID))
	h.Write([]byte{0})
	h.Write([]byte(code))
	var k codeKey
	h.Sum(k[:0])
	return k
}

// codeCache remembers what a code proved, so a repeated login with the same
// code (a client retry, a double tap) gets the same identity without spending
// the code twice at WeChat. It is an interface so that several gateways can
// later share it; implementations are safe for concurrent use.
type codeCache interface {
	get(key codeKey, now time.Time) (Identity, bool)
	add(key codeKey, id Identity, now time.Time)
}

// memoryCodeCache is the in-memory codeCache: an LRU bounded by size whose
// entries also expire after ttl. Expiry is checked on read rather than by a
// sweeper goroutine (golang-lru's expirable LRU starts one it never stops,
// which would leak one per config reload); an expired entry costs memory only
// until the LRU pushes it out.
type memoryCodeCache struct {
	entries *lru.Cache[codeKey, cachedIdentity]
	ttl     time.Duration
}

type cachedIdentity struct {
	Identity
	expires time.Time
}

func newMemoryCodeCache(size int, ttl time.Duration) *memoryCodeCache {
	entries, _ := lru.New[codeKey, cachedIdentity](size) // size > 0 is checked in Validate
	return &memoryCodeCache{entries: entries, ttl: ttl}
}

func (c *memoryCodeCache) get(key codeKey, now time.Time) (Identity, bool) {
	entry, ok := c.entries.Get(key)
	if !ok {
		return Identity{}, false
	}
	if !now.Before(entry.expires) {
		c.entries.Remove(key)
		return Identity{}, false
	}
	return entry.Identity, true
}

func (c *memoryCodeCache) add(key codeKey, id Identity, now time.Time) {
	c.entries.Add(key, cachedIdentity{Identity: id, expires: now.Add(c.ttl)})
}

// noCodeCache is the cache when cache_ttl is 0.
type noCodeCache struct{}

func (noCodeCache) get(codeKey, time.Time) (Identity, bool) { return Identity{}, false }
func (noCodeCache) add(codeKey, Identity, time.Time)        {}
