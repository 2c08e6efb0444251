package wechatlogin

import (
	"sync"
	"time"
)

// Custody of session_keys: after every exchange WeChat answers, the gateway
// keeps (app, openid) → session_key, so that wechat_api can decrypt, verify
// and sign for backends that never see the key.
const (
	// sessionKeyCapacity bounds the players whose keys are kept; the least
	// recently used go first.
	sessionKeyCapacity = 100000
	// sessionKeyLifetime: WeChat does not publish a session_key's life, and
	// a newer wx.login replaces it at once; its staff have said three days,
	// counted from the login and not renewed by use. A key kept longer
	// could only sign what WeChat refuses.
	sessionKeyLifetime = 72 * time.Hour
)

// keptSessionKey is one player's session_key, with the time WeChat issued
// it (its exchange answered), which orders keys: the newest login wins.
type keptSessionKey struct {
	key      string
	issuedAt time.Time
}

// sessionKeyCustody is an app's kept session_keys, shared by its
// wechat_login and wechat_api handlers through appState. Safe for
// concurrent use.
type sessionKeyCustody struct {
	mu      sync.Mutex // makes keep's compare-and-set one step
	entries *leasedLRU[string, keptSessionKey]
}

func newSessionKeyCustody() *sessionKeyCustody {
	return &sessionKeyCustody{entries: newLeasedLRU[string, keptSessionKey]()}
}

// keep records key for openid, issued at issuedAt, unless a key issued
// later is already kept: a result served late (a slow exchange, a cache)
// never replaces a newer login's key.
func (c *sessionKeyCustody) keep(openid, key string, issuedAt time.Time) {
	if key == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if kept, ok := c.entries.Peek(openid); ok && kept.issuedAt.After(issuedAt) {
		return
	}
	c.entries.Add(openid, keptSessionKey{key: key, issuedAt: issuedAt})
}

// replace swaps the key WeChat rotated (resetusersessionkey) for its
// successor, if old is still the one kept; the successor keeps the old
// key's issue time, since WeChat gives it the old expiry.
func (c *sessionKeyCustody) replace(openid, old, successor string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if kept, ok := c.entries.Peek(openid); ok && kept.key == old {
		c.entries.Add(openid, keptSessionKey{key: successor, issuedAt: kept.issuedAt})
	}
}

// lookup is openid's kept key, if one is kept and still within its
// lifetime at now.
func (c *sessionKeyCustody) lookup(openid string, now time.Time) (keptSessionKey, bool) {
	kept, ok := c.entries.Get(openid)
	if !ok || now.Sub(kept.issuedAt) >= sessionKeyLifetime {
		return keptSessionKey{}, false
	}
	return kept, true
}
