package wechatlogin

import (
	"context"
	"sync"
	"time"
)

// WeChat's limits on stable_token's force_refresh.
const (
	forcedRefreshSpacing  = 30 * time.Second
	forcedRefreshesPerDay = 20
)

// tokenStore holds an app's current access token where every gateway sharing
// it can see it, and decides which of them fetches the next one. The memory
// store serves the gateways of one process; a store shared by a fleet
// (Redis) is another implementation of the same two methods.
type tokenStore interface {
	// refresh returns a usable token other than stale (the token the caller
	// found expiring or refused): the stored one if another caller replaced
	// stale already, otherwise what fetch returns, which it stores.
	// Concurrent callers make one fetch between them.
	refresh(ctx context.Context, now time.Time, stale accessToken, fetch func(context.Context) (accessToken, error)) (accessToken, error)
	// allowForcedRefresh spends one of WeChat's force_refresh allowances (at
	// least 30 s apart, 20 a day) and reports whether one was left.
	allowForcedRefresh(ctx context.Context, now time.Time) (bool, error)
}

// memoryTokenStore is the tokenStore of a single gateway.
type memoryTokenStore struct {
	mu    sync.Mutex // held across a fetch, so that concurrent callers queue for its result
	token accessToken
	// forced is separate from mu: it is consulted during a fetch.
	forced forcedRefreshLedger
}

func newMemoryTokenStore() *memoryTokenStore { return new(memoryTokenStore) }

func (s *memoryTokenStore) refresh(ctx context.Context, now time.Time, stale accessToken, fetch func(context.Context) (accessToken, error)) (accessToken, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.token.value != stale.value && s.token.usable(now) {
		return s.token, nil
	}
	t, err := fetch(ctx)
	if err != nil {
		return accessToken{}, err
	}
	s.token = t
	return t, nil
}

func (s *memoryTokenStore) allowForcedRefresh(_ context.Context, now time.Time) (bool, error) {
	return s.forced.spend(now), nil
}

// forcedRefreshLedger counts forced refreshes against WeChat's limits. Its
// day is any 24 hours, not WeChat's calendar day: 20 in any 24 hours is never
// more than 20 in one calendar day.
type forcedRefreshLedger struct {
	mu    sync.Mutex
	spent []time.Time // in the last 24 hours, oldest first
}

// spend takes one allowance at now, reporting false (and taking nothing)
// when it is too soon after the last one or the day's are spent.
func (l *forcedRefreshLedger) spend(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	// Filter rather than trim a prefix: a test clock may move backwards.
	recent := l.spent[:0]
	for _, t := range l.spent {
		if now.Sub(t) < 24*time.Hour {
			recent = append(recent, t)
		}
	}
	l.spent = recent
	if len(recent) >= forcedRefreshesPerDay || (len(recent) > 0 && now.Sub(recent[len(recent)-1]) < forcedRefreshSpacing) {
		return false
	}
	l.spent = append(recent, now)
	return true
}
