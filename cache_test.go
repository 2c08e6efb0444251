package wechatlogin

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

func TestCodeKeyHidesTheCode(t *testing.T) {
	k := newCodeKey("wxapp", credentials{code: "alice.1"})
	if bytes.Contains(k[:], []byte("alice")) {
		t.Fatal("the key holds the code")
	}
	if k != newCodeKey("wxapp", credentials{code: "alice.1"}) {
		t.Fatal("the key is not stable")
	}
	if k == newCodeKey("wxother", credentials{code: "alice.1"}) || newCodeKey("wx", credentials{code: "a1"}) == newCodeKey("wxa", credentials{code: "1"}) {
		t.Fatal("codes of different apps share a key")
	}
}

// redeemWith redeems key with an exchange that proves id and counts its
// calls.
func redeemWith(c codeStore, key codeKey, id Identity, calls *atomic.Int32) (Identity, redeemOutcome, error) {
	res, outcome, err := c.redeem(context.Background(), key, func(chargeFunc) codeResult {
		calls.Add(1)
		return codeResult{id: id}
	})
	return res.id, outcome, err
}

func TestCodeStoreCachesForTTLAndIsBounded(t *testing.T) {
	clock := newTestClock()
	c := memoryCodesAt(clock, 5*time.Minute, 2)
	alice, bob, carol := newCodeKey("wx", credentials{code: "alice"}), newCodeKey("wx", credentials{code: "bob"}), newCodeKey("wx", credentials{code: "carol"})
	var calls atomic.Int32
	if _, outcome, _ := redeemWith(c, alice, Identity{OpenID: "oAlice"}, &calls); outcome != redeemedByCall {
		t.Fatalf("first redeem: outcome %v, want a call", outcome)
	}
	clock.Advance(5*time.Minute - time.Nanosecond)
	if id, outcome, _ := redeemWith(c, alice, Identity{OpenID: "other"}, &calls); outcome != redeemedFromCache || id.OpenID != "oAlice" {
		t.Fatalf("within cache_ttl: %+v %v, want oAlice from the cache", id, outcome)
	}
	clock.Advance(time.Nanosecond)
	if _, outcome, _ := redeemWith(c, alice, Identity{OpenID: "oAlice"}, &calls); outcome != redeemedByCall {
		t.Fatal("an entry outlived cache_ttl")
	}
	redeemWith(c, bob, Identity{OpenID: "oBob"}, &calls)
	redeemWith(c, alice, Identity{}, &calls) // alice is now the most recently used
	redeemWith(c, carol, Identity{OpenID: "oCarol"}, &calls)
	if _, outcome, _ := redeemWith(c, alice, Identity{}, &calls); outcome != redeemedFromCache {
		t.Error("a recently used entry was dropped")
	}
	if _, outcome, _ := redeemWith(c, bob, Identity{OpenID: "oBob"}, &calls); outcome != redeemedByCall {
		t.Error("the least recently used entry was not dropped at cache_size")
	}
}

func TestCodeStoreWithoutTTLRemembersNothing(t *testing.T) {
	c := memoryCodesAt(newTestClock(), 0, 10)
	var calls atomic.Int32
	k := newCodeKey("wx", credentials{code: "alice"})
	redeemWith(c, k, Identity{OpenID: "o"}, &calls)
	redeemWith(c, k, Identity{OpenID: "o"}, &calls)
	if calls.Load() != 2 {
		t.Fatalf("cache_ttl 0: %d calls for two redeems, want 2", calls.Load())
	}
}

// An identity whose player is over budget is still cached: the code is
// spent at WeChat, and the client's retry must not get 40163.
func TestCodeStoreCachesTheIdentityOfARefusedLogin(t *testing.T) {
	c := memoryCodesAt(newTestClock(), time.Minute, 10)
	k := newCodeKey("wx", credentials{code: "alice"})
	res, _, _ := c.redeem(context.Background(), k, func(chargeFunc) codeResult {
		return codeResult{id: Identity{OpenID: "oAlice"}, budgetWait: time.Second}
	})
	if res.budgetWait != time.Second {
		t.Fatalf("got %+v, want the budget's wait", res)
	}
	var calls atomic.Int32
	if id, outcome, _ := redeemWith(c, k, Identity{}, &calls); outcome != redeemedFromCache || id.OpenID != "oAlice" {
		t.Errorf("retry: %+v %v, want oAlice from the cache", id, outcome)
	}
}

// A lead that fails with code_used while another flight cached the code
// (here: stored just before) is answered from the cache, not with 40163.
func TestCodeStoreLooksAgainOnCodeUsed(t *testing.T) {
	c := memoryCodesAt(newTestClock(), time.Minute, 10)
	k := newCodeKey("wx", credentials{code: "alice"})
	res, outcome, _ := c.redeem(context.Background(), k, func(chargeFunc) codeResult {
		c.add(k, Identity{OpenID: "oAlice"}) // another flight finished meanwhile
		return codeResult{failure: wechatErrcodes.failure(errcodeCodeUsed, "")}
	})
	if res.failure != nil || res.id.OpenID != "oAlice" || outcome != redeemedFromCache {
		t.Errorf("got %+v %v, want oAlice from the cache", res, outcome)
	}
}

func TestCodeStoreJoinersShareOneCall(t *testing.T) {
	c := memoryCodesAt(newTestClock(), time.Minute, 10)
	k := newCodeKey("wx", credentials{code: "alice"})
	release := make(chan struct{})
	var calls atomic.Int32
	exchange := func(chargeFunc) codeResult {
		calls.Add(1)
		<-release
		return codeResult{id: Identity{OpenID: "oAlice"}}
	}
	outcomes := make(chan redeemOutcome, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			res, outcome, _ := c.redeem(context.Background(), k, exchange)
			if res.id.OpenID == "oAlice" {
				outcomes <- outcome
			}
		})
	}
	testkit.WaitFor(t, "a redeem reaches the exchange", func() bool { return calls.Load() > 0 })
	close(release)
	wg.Wait()
	close(outcomes)
	count := map[redeemOutcome]int{}
	for o := range outcomes {
		count[o]++
	}
	if calls.Load() != 1 || count[redeemedByCall] != 1 || count[redeemedByCall]+count[redeemedByJoining]+count[redeemedFromCache] != 8 {
		t.Errorf("%d calls, outcomes %v: want one call and every redeem answered", calls.Load(), count)
	}
}

func TestCodeStoreReturnsWhenTheClientGoes(t *testing.T) {
	c := memoryCodesAt(newTestClock(), time.Minute, 10)
	ctx, cancel := context.WithCancel(context.Background())
	release := make(chan struct{})
	defer close(release)
	cancel()
	_, _, err := c.redeem(ctx, newCodeKey("wx", credentials{code: "alice"}), func(chargeFunc) codeResult {
		<-release
		return codeResult{id: Identity{OpenID: "oAlice"}}
	})
	if err == nil {
		t.Error("redeem waited for the exchange of a client that went away")
	}
}
