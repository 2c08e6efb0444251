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

// configure applies a handler's settings to the shared state. A handler
// provisioned later (a reload) wins: budgets keep their buckets and adopt the
// new limits; the cache keeps its entries unless its TTL changed.
func (s *appState) configure(h *Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.players == nil {
		s.players = newBudgetTable(*h.Budget, h.BudgetSize)
	} else {
		s.players.configure(*h.Budget, h.BudgetSize)
	}
	if !h.IPBudget.Off {
		if s.ips == nil {
			s.ips = newBudgetTable(*h.IPBudget, h.BudgetSize)
		} else {
			s.ips.configure(*h.IPBudget, h.BudgetSize)
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
