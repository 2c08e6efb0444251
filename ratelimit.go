package wechatlogin

import (
	"fmt"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"

	"github.com/caddyserver/caddy/v2"
)

// Budget is a number of logins allowed per window, as a token bucket: a full
// bucket of Events, refilled at Events per Window.
type Budget struct {
	// Events allowed per window; also the largest burst.
	Events int `json:"events,omitempty"`
	// Window over which Events refill.
	Window caddy.Duration `json:"window,omitempty"`
	// Off disables the budget (ip_budget only).
	Off bool `json:"off,omitempty"`
}

// wechatMinuteQuota is WeChat's own limit: 100 jscode2session calls per user
// per minute (errcode 45011 past it).
const wechatMinuteQuota = 100

// withinWechatQuota refuses a player budget that would let a client exceed
// WeChat's quota: more than 100 in one burst, or more than 100 per minute as
// a rate (so 200 per 2m is refused too).
func (b Budget) withinWechatQuota() error {
	if b.Events > wechatMinuteQuota || float64(b.Events)/time.Duration(b.Window).Minutes() > wechatMinuteQuota {
		return fmt.Errorf("%d per %s is more than WeChat allows (%d per player per minute; past it WeChat answers 45011)",
			b.Events, time.Duration(b.Window), wechatMinuteQuota)
	}
	return nil
}

// tokenBudgetStore holds one budget per key. It is an interface so that several
// gateways can later share budgets (e.g. through Redis); the in-memory
// budgetTable is the default. Implementations are safe for concurrent use.
type tokenBudgetStore interface {
	// take spends one event of key's budget. When none is left it spends
	// nothing and reports how long until one is.
	take(key string, now time.Time) (wait time.Duration, ok bool)
	// check reports whether key has an event left, without spending it.
	check(key string, now time.Time) (wait time.Duration, ok bool)
}

// budgetTable is the in-memory store behind budgetStore: a token bucket per
// key in an LRU bounded by size, so memory stays flat however many players
// arrive. Dropping the least recently used key can only forgive a client,
// never punish one wrongly. It is shared by every handler of an app_id
// across reloads; each handler applies its own limits through a budgetView.
type budgetTable struct {
	buckets *lru.Cache[string, *rate.Limiter]
}

func newBudgetTable(size int) *budgetTable {
	buckets, _ := lru.New[string, *rate.Limiter](size) // size > 0 is checked in Validate
	return &budgetTable{buckets: buckets}
}

// bucketLimits is a Budget as a token bucket's parameters.
type bucketLimits struct {
	every rate.Limit
	burst int
}

func (b Budget) limits() bucketLimits {
	return bucketLimits{every: rate.Limit(float64(b.Events) / time.Duration(b.Window).Seconds()), burst: b.Events}
}

// budgetView is one handler's budget: the shared table under the handler's
// own limits. Buckets keep their tokens and adopt the limits of whichever
// handler uses them next, so a reload never refills a looping client, and a
// reload that fails leaves the running handlers' limits alone.
type budgetView struct {
	*budgetTable
	limits bucketLimits
}

func newBudgetView(t *budgetTable, b Budget) budgetView {
	return budgetView{budgetTable: t, limits: b.limits()}
}

func (v budgetView) bucket(key string, now time.Time) *rate.Limiter {
	lim, ok := v.buckets.Get(key)
	if !ok {
		lim = rate.NewLimiter(v.limits.every, v.limits.burst)
		// Two first requests for one key may race here; the loser's bucket
		// is dropped, which at worst lets one extra login through.
		if prev, found, _ := v.buckets.PeekOrAdd(key, lim); found {
			lim = prev
		}
		return lim
	}
	if lim.Limit() != v.limits.every {
		lim.SetLimitAt(now, v.limits.every)
	}
	if lim.Burst() != v.limits.burst {
		lim.SetBurstAt(now, v.limits.burst)
	}
	return lim
}

func (v budgetView) take(key string, now time.Time) (time.Duration, bool) {
	lim := v.bucket(key, now)
	r := lim.ReserveN(now, 1)
	if !r.OK() {
		return time.Duration(0), false
	}
	wait := r.DelayFrom(now)
	if wait == 0 {
		return 0, true
	}
	r.CancelAt(now)
	return wait, false
}

func (v budgetView) check(key string, now time.Time) (time.Duration, bool) {
	lim := v.bucket(key, now)
	tokens := lim.TokensAt(now)
	if tokens >= 1 {
		return 0, true
	}
	return time.Duration((1 - tokens) / float64(lim.Limit()) * float64(time.Second)), false
}
