package wechatlogin

import (
	"crypto/sha256"
	"encoding/hex"
	"sync"

	"github.com/caddyserver/caddy/v2"
	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"
)

// appStates holds, per configuration of an app, the state that must outlive
// a config reload: budgets (a reload must not refill a looping client's
// budget), the code cache and the WeChat calls in flight. The pool's count of
// users is the one count of the state's lifetime (the tables' leases count
// sizes, not lifetimes).
var appStates = caddy.NewUsagePool()

// stateKey names the state of one (app_id, endpoint, app_secret): a staging
// site on the simulator never shares what it proved with the production site
// of the same app_id. The secret is hashed so the pool's keys hold none.
func stateKey(appID, endpoint, secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return appID + "\x00" + endpoint + "\x00" + hex.EncodeToString(sum[:8])
}

// appState is the state one configuration's handlers share across reloads.
// What is shared: the budget windows, the cached codes and the calls in
// flight. What is per handler: the limits and TTL applied to them (each
// handler reads the shared tables through its own view), so a config that
// is provisioned and then abandoned changes nothing for the running one.
type appState struct {
	players *budgetTable
	ips     *budgetTable
	codes   *codeTable
	flights singleflight.Group // keyed by string(codeKey)
	// sessionKeys is read by the app's wechat_api handlers too.
	sessionKeys *sessionKeyCustody
}

func newAppState() *appState {
	return &appState{players: newBudgetTable(), ips: newBudgetTable(), codes: newCodeTable(), sessionKeys: newSessionKeyCustody()}
}

// Destruct satisfies caddy.Destructor; the state is garbage once unused.
func (*appState) Destruct() error { return nil }

// leasedLRU is an LRU table shared by several handlers, each of which leases
// the size it wants for as long as it lives: the table holds the largest
// size leased, so neither a newer config nor an abandoned one ever shrinks
// what the running handlers rely on.
type leasedLRU[K comparable, V any] struct {
	*lru.Cache[K, V]
	mu     sync.Mutex  // guards leases
	leases map[int]int // size -> handlers holding it
}

func newLeasedLRU[K comparable, V any]() *leasedLRU[K, V] {
	entries, _ := lru.New[K, V](1) // resized by the first lease
	return &leasedLRU[K, V]{Cache: entries, leases: map[int]int{}}
}

// lease holds size (at least 1) until the returned release is called.
func (t *leasedLRU[K, V]) lease(size int) (release func()) {
	size = max(size, 1)
	t.mu.Lock()
	t.leases[size]++
	t.resize()
	t.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			t.mu.Lock()
			defer t.mu.Unlock()
			if t.leases[size]--; t.leases[size] == 0 {
				delete(t.leases, size)
			}
			t.resize()
		})
	}
}

// resize fits the table to the largest lease. The caller holds t.mu.
func (t *leasedLRU[K, V]) resize() {
	largest := 0
	for size := range t.leases {
		largest = max(largest, size)
	}
	if largest > 0 {
		t.Resize(largest)
	}
}
