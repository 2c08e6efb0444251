package wechatlogin

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"golang.org/x/sync/singleflight"
)

// appStates holds, per app_id, the state that must outlive a config reload:
// budgets (a reload must not refill a looping client's budget), the code
// cache and the exchanges in flight.
var appStates = caddy.NewUsagePool()

type appState struct {
	mu      sync.Mutex // serializes configure; the fields it sets are read lock-free
	players *budgetTable
	ips     *budgetTable
	codes   atomic.Pointer[memoryCodeCache]
	flights singleflight.Group // keyed by string(codeKey)
}

// Destruct satisfies caddy.Destructor; the state is garbage once unused.
func (*appState) Destruct() error { return nil }

// configure prepares the shared state for a handler. A handler provisioned
// later (a reload) resizes the tables; budgets keep their buckets (each
// handler applies its own limits); the cache keeps its entries unless its
// TTL changed, in which case later handlers get a new one.
func (s *appState) configure(h *Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, table := range []**budgetTable{&s.players, &s.ips} {
		if *table == nil {
			*table = newBudgetTable(h.BudgetSize)
		} else {
			(*table).buckets.Resize(h.BudgetSize)
		}
	}
	ttl := time.Duration(*h.CacheTTL)
	if ttl == 0 {
		return
	}
	if codes := s.codes.Load(); codes != nil && codes.ttl == ttl {
		codes.entries.Resize(h.CacheSize)
		return
	}
	s.codes.Store(newMemoryCodeCache(h.CacheSize, ttl))
}
