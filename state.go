package wechatlogin

import (
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"golang.org/x/sync/singleflight"
)

// appStates holds, per app_id, the state that must outlive a config reload:
// budgets (a reload must not refill a looping client's budget), the code
// cache and the exchanges in flight.
var appStates = caddy.NewUsagePool()

// appState is one app_id's shared state. Every live handler of the app
// (during a reload, the old config's and the new one's) is attached to it;
// sizes follow the largest of the attached handlers, so a config that is
// provisioned and then abandoned, or a newer one, never shrinks what the
// running handlers rely on.
type appState struct {
	mu       sync.Mutex // guards the fields below; the tables and caches lock themselves
	handlers map[*Handler]struct{}
	players  *budgetTable
	ips      *budgetTable
	codes    map[time.Duration]*memoryCodeCache // by cache_ttl, for the handlers with that TTL
	flights  singleflight.Group                 // keyed by string(codeKey)
}

func newAppState() *appState {
	return &appState{handlers: map[*Handler]struct{}{}, codes: map[time.Duration]*memoryCodeCache{}}
}

// Destruct satisfies caddy.Destructor; the state is garbage once unused.
func (*appState) Destruct() error { return nil }

// attach registers a handler and returns the tables it uses: the budgets
// keep their buckets across reloads (each handler applies its own limits),
// and the code cache is shared by the handlers with the same cache_ttl.
func (s *appState) attach(h *Handler) (players, ips *budgetTable, codes *memoryCodeCache) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers[h] = struct{}{}
	if s.players == nil {
		s.players, s.ips = newBudgetTable(h.BudgetSize), newBudgetTable(h.BudgetSize)
	}
	if ttl := time.Duration(*h.CacheTTL); ttl > 0 && s.codes[ttl] == nil {
		s.codes[ttl] = newMemoryCodeCache(h.CacheSize, ttl)
	}
	s.resize()
	return s.players, s.ips, s.codes[time.Duration(*h.CacheTTL)]
}

// detach forgets a handler that is being cleaned up.
func (s *appState) detach(h *Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.handlers, h)
	s.resize()
}

// resize fits the tables to the attached handlers and drops caches no
// handler uses any more. The caller holds s.mu.
func (s *appState) resize() {
	budgetSize := 0
	cacheSizes := map[time.Duration]int{}
	for h := range s.handlers {
		budgetSize = max(budgetSize, h.BudgetSize)
		if ttl := time.Duration(*h.CacheTTL); ttl > 0 {
			cacheSizes[ttl] = max(cacheSizes[ttl], h.CacheSize)
		}
	}
	if budgetSize > 0 {
		s.players.buckets.Resize(budgetSize)
		s.ips.buckets.Resize(budgetSize)
	}
	for ttl, codes := range s.codes {
		if size, used := cacheSizes[ttl]; used {
			codes.entries.Resize(size)
		} else {
			delete(s.codes, ttl)
		}
	}
}
