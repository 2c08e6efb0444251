package wechatlogin

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

// TestFleetKeepsTheNewestSessionKey: a login redeemed at one gateway leaves
// its key where another gateway reads it, in the same number of Redis
// operations as before; an older key never replaces it; a value moved to
// another player's name, or past the expiry sealed in it, is not used.
func TestFleetKeepsTheNewestSessionKey(t *testing.T) {
	srv := testkit.StartRedis(t)
	rdb := newTestRedisClient(t, srv.Addr())
	ctx := context.Background()
	gwA, a := gatewayCodes(t, srv.Addr(), 0, time.Minute)
	gwB, _ := gatewayCodes(t, srv.Addr(), 1, time.Minute)

	before := operationCount()
	if res, _, _ := a.redeem(ctx, newCodeKey(fleetAppID, credentials{code: fleetCode}), released(proving(fleetIdentity)).exchange); !res.proved() {
		t.Fatalf("%+v", res)
	}
	if got := operationCount() - before; got != 2 {
		t.Errorf("a fresh redeem made %v Redis operations; want 2 (the claim, the result with the key)", got)
	}
	now := time.Now()
	kept, found, served := gwB.lookupSessionKey(ctx, fleetIdentity.OpenID, now)
	if !served || !found || kept.key != fleetSessionKey {
		t.Fatalf("gateway B reads %q (found %t, served %t); want the key gateway A's login got", kept.key, found, served)
	}

	gwA.keepSessionKey(ctx, fleetIdentity.OpenID, "an-older-key", kept.issuedAt.Add(-time.Second))
	if kept, _, _ := gwB.lookupSessionKey(ctx, fleetIdentity.OpenID, now); kept.key != fleetSessionKey {
		t.Errorf("an older key replaced the newer: %q", kept.key)
	}
	if _, found, _ := gwB.lookupSessionKey(ctx, fleetIdentity.OpenID, kept.issuedAt.Add(sessionKeyLifetime+sealClockSkew)); found {
		t.Error("a key past the expiry sealed in it is used")
	}

	stored := rdb.Get(ctx, gwA.sessionKeyName(fleetIdentity.OpenID)).Val()
	rdb.Set(ctx, gwA.sessionKeyName("oAnotherPlayer"), stored, time.Minute)
	if _, found, _ := gwB.lookupSessionKey(ctx, "oAnotherPlayer", now); found {
		t.Error("a key moved to another player's name is used")
	}
	// A later issue time written over the clear one does not open.
	rdb.Set(ctx, gwA.sessionKeyName(fleetIdentity.OpenID), stored[:1]+"9999999999999"+stored[14:], time.Minute)
	if _, found, _ := gwB.lookupSessionKey(ctx, fleetIdentity.OpenID, now); found {
		t.Error("a key whose clear issue time was changed is used")
	}
}

// TestFleetKeepsTheSessionKeyByEvalsha: a login's key goes to Redis by
// EVALSHA with its code's result, as the result does, not with the whole
// script each time; and Redis not knowing either script (an empty one, or
// after SCRIPT FLUSH) loses neither the result nor the key.
func TestFleetKeepsTheSessionKeyByEvalsha(t *testing.T) {
	rdb, a, b := twoGateways(t, time.Minute)
	ctx := context.Background()
	for n, step := range []string{"a Redis that knows no script", "a Redis that knows the scripts", "a Redis whose scripts were flushed"} {
		if n == 2 {
			if err := rdb.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
		id := fleetIdentity
		id.OpenID = fmt.Sprintf("oPlayer%d", n)
		key := newCodeKey(fleetAppID, credentials{code: fmt.Sprintf("%s-%d", fleetCode, n)})
		evals, before := redisCalls(t, rdb, "eval"), operationCount()
		if res, _, _ := a.redeem(ctx, key, released(proving(id)).exchange); !res.proved() {
			t.Fatalf("%s: %+v", step, res)
		}
		if got := operationCount() - before; got != 2 {
			t.Errorf("%s: a fresh redeem made %v Redis operations; want 2", step, got)
		}
		if n == 1 && redisCalls(t, rdb, "eval") != evals {
			t.Errorf("%s: a fresh redeem sent a whole script (EVAL)", step)
		}
		if kept, found, _ := b.app.lookupSessionKey(ctx, id.OpenID, time.Now()); !found || kept.key != fleetSessionKey {
			t.Errorf("%s: gateway B finds no key for the login at A (found %t)", step, found)
		}
		wechat := released(proving(id))
		if res, _, _ := b.redeem(ctx, key, wechat.exchange); !res.proved() || wechat.calls.Load() != 0 {
			t.Errorf("%s: gateway B redeems the code with %d calls (%+v); want the result A stored", step, wechat.calls.Load(), res)
		}
	}
}

// TestFleetKeepsOnlyTheSessionKeysItReads: a login of an app whose
// platform's keys nothing reads (Douyin, QQ…) leaves no key in Redis; a
// WeChat app's login does, in the same round trip.
func TestFleetKeepsOnlyTheSessionKeysItReads(t *testing.T) {
	srv := testkit.StartRedis(t)
	gw := newGateway(t, srv.Addr(), 0, nil)
	ctx := context.Background()
	for _, keep := range []bool{false, true} {
		players := gw.budget("player", codesPlayerLimit, leasedBudgetTable(100), time.Now)
		codes := gw.codes(newLocalCodes(time.Minute, players), players, time.Minute, 10*time.Second, keep)
		key := newCodeKey(fleetAppID, credentials{code: fmt.Sprintf("%s-%t", fleetCode, keep)})
		if res, _, _ := codes.redeem(ctx, key, released(proving(fleetIdentity)).exchange); !res.proved() {
			t.Fatalf("%+v", res)
		}
		if _, found, served := gw.lookupSessionKey(ctx, fleetIdentity.OpenID, time.Now()); !served || found != keep {
			t.Errorf("an app whose keys are kept: %t; a key in Redis: %t (served %t)", keep, found, served)
		}
	}
}

// TestRotationMovesTheFleetsKey: a reset at the gateway whose memory holds
// the old key moves the fleet's record to the new key too, though the
// login's Redis write carries a slightly later issue time than its memory:
// the reset was signed with the newer of the two records, whose time the
// new key takes. Every gateway then signs with the new key.
func TestRotationMovesTheFleetsKey(t *testing.T) {
	srv := testkit.StartRedis(t)
	ctx := context.Background()
	gwA, gwB := newGateway(t, srv.Addr(), 0, nil), newGateway(t, srv.Addr(), 1, nil)
	issued := time.Now().Add(-time.Minute)
	rotating := &APIHandler{appRedis: gwA.appRedis, sessionKeys: newSessionKeyCustody()}
	rotating.sessionKeys.keep("oAlice", "old-key", issued)
	gwA.keepSessionKey(ctx, "oAlice", "old-key", issued.Add(2*time.Millisecond))

	signedWith, refusal := rotating.playerKey(ctx, "oAlice")
	if refusal != nil || signedWith.key != "old-key" {
		t.Fatalf("the reset is signed with %q (%v)", signedWith.key, refusal)
	}
	rotating.keepRotation(ctx, "oAlice", signedWith, "new-key")
	other := &APIHandler{appRedis: gwB.appRedis, sessionKeys: newSessionKeyCustody()}
	for name, h := range map[string]*APIHandler{"the gateway that rotated": rotating, "another gateway": other} {
		if kept, refusal := h.playerKey(ctx, "oAlice"); kept.key != "new-key" {
			t.Errorf("%s signs with %q (%v) after the rotation; want the new key", name, kept.key, refusal)
		}
	}
}

// TestGatewaySignedResetReadsTheKeyOnce: a reset the gateway signs reads
// the player's key from Redis once, to sign (neither WeChat's answer nor
// the rotation reads it again), and the fleet follows the new key.
func TestGatewaySignedResetReadsTheKeyOnce(t *testing.T) {
	srv := testkit.StartRedis(t)
	sim, endpoint := newTestSim(t)
	login := newTestHandler(t, endpoint, withRedis(srv.Addr(), time.Second))
	api := &APIHandler{AppID: testAppID, AppSecret: testSecret, Endpoint: endpoint,
		Redis: &RedisConfig{Address: []string{srv.Addr()}, Timeout: caddy.Duration(time.Second)}}
	provisionAPI(t, api)
	openid := serveAt(login, "/wx/login?code=alice", nil).checked(t).upstream.Get("X-Wx-Openid")

	lookups := operationsOf("session_key_get")
	r, _ := newTestRequest(context.Background(), http.MethodGet, "http://127.0.0.1/wxa/resetusersessionkey?openid="+url.QueryEscape(openid), nil)
	w := httptest.NewRecorder()
	if err := api.ServeHTTP(w, r, nil); err != nil || w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"errcode":0`) || strings.Contains(w.Body.String(), "session_key") {
		t.Fatalf("the reset answered %d %s (%v); want WeChat's answer without the new key", w.Code, w.Body, err)
	}
	if got := operationsOf("session_key_get") - lookups; got != 1 {
		t.Errorf("a gateway-signed reset read the key from Redis %d times; want once", got)
	}
	kept, found, _ := api.appRedis.lookupSessionKey(context.Background(), openid, time.Now())
	sum := sha1.Sum([]byte("raw" + kept.key))
	if want, _ := sim.SignRawData(openid, "raw"); !found || hex.EncodeToString(sum[:]) != want {
		t.Error("after the reset, the fleet keeps a key that is not the player's latest")
	}
}

// TestFleetReplacesAnUnreadableSessionKey: a value under a player's key
// name that is not a kept key (written by hand, or by another program
// sharing the prefix) is replaced by the next key a login or a rotation
// keeps, rather than making the write fail: a failed script would leave
// the player's key unknown to the other gateways, and count as Redis
// failing, sending this gateway to its own memory.
func TestFleetReplacesAnUnreadableSessionKey(t *testing.T) {
	srv := testkit.StartRedis(t)
	rdb := newTestRedisClient(t, srv.Addr())
	ctx := context.Background()
	gw, codes := gatewayCodes(t, srv.Addr(), 0, time.Minute)
	for n, unreadable := range []string{"garbage", "k", "kABCDEFGHIJKLMNOP", "x9999999999999"} {
		openid := fmt.Sprintf("oPlayer%d", n)
		name := gw.sessionKeyName(openid)
		rdb.Set(ctx, name, unreadable, time.Minute)
		gw.keepSessionKey(ctx, openid, "rotated-key", time.Now())
		if kept, found, _ := gw.lookupSessionKey(ctx, openid, time.Now()); !found || kept.key != "rotated-key" {
			t.Errorf("over %q, a rotation keeps %q (found %t); want the rotated key", unreadable, kept.key, found)
		}
		if gw.redis.down.Load() {
			t.Fatalf("over %q, a rotation's write counts as Redis failing", unreadable)
		}

		rdb.Set(ctx, name, unreadable, time.Minute)
		id := fleetIdentity
		id.OpenID = openid
		key := newCodeKey(fleetAppID, credentials{code: fmt.Sprintf("%s-unreadable-%d", fleetCode, n)})
		if res, _, _ := codes.redeem(ctx, key, released(proving(id)).exchange); !res.proved() {
			t.Fatalf("%+v", res)
		}
		if kept, found, _ := gw.lookupSessionKey(ctx, openid, time.Now()); !found || kept.key != fleetSessionKey {
			t.Errorf("over %q, a login keeps %q (found %t); want its key", unreadable, kept.key, found)
		}
	}
}
