package wechatlogin

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// expiredSessionGrace is how long after its expiry a session token still
// names whose login it is, for the budget: the signature still proves it, and
// a client stuck in a login loop after its session expired is stopped before
// WeChat, not after.
const expiredSessionGrace = 24 * time.Hour

// Identity is what a login proves about a player.
type Identity struct {
	OpenID  string
	UnionID string
	// SessionKey is WeChat's key for the player's encrypted data. It is kept
	// only to be forwarded upstream with forward_session_key, never shown.
	SessionKey string
}

// decideLogin is authenticateLogin and, with sessions, the token the login
// earns: everything a login can be refused for is decided here.
func (h *Handler) decideLogin(r *http.Request, codeHeader, session string) (id Identity, token string, expires time.Time, refusal *jsonRefusal) {
	if id, refusal = h.authenticateLogin(r, codeHeader, session); refusal != nil || h.sessions == nil {
		return id, "", time.Time{}, refusal
	}
	token, expires = h.sessions.issue(id)
	h.metrics.sessionIssued()
	return id, token, expires, nil
}

// authenticateLogin decides a login: the identity its code proves, or the
// refusal to answer with. It charges the budgets on the way and writes
// nothing; serveLogin acts on the decision. codeHeader and session are the
// X-WX-CODE and X-WX-SESSION values the client sent.
func (h *Handler) authenticateLogin(r *http.Request, codeHeader, session string) (Identity, *jsonRefusal) {
	ctx := r.Context()
	if wait, ok := h.ips.spend(ctx, ipBudgetKey(clientIP(r))); !ok {
		h.metrics.budgetRejected("ip")
		return Identity{}, rateLimited("too many logins from this address", wait)
	}
	code, refusal := loginCode(r, h.CodeField, codeHeader)
	if refusal != nil {
		return Identity{}, refusal
	}
	var sessionPlayer string
	if h.sessions != nil {
		sessionPlayer, _ = h.sessions.presentedPlayer(r, session, expiredSessionGrace)
	}
	id, outcome, refusal := h.codes.redeem(ctx, newCodeKey(h.AppID, code), func(charge chargeFunc) (Identity, *jsonRefusal) {
		return h.exchangeOnce(ctx, code, sessionPlayer, charge)
	})
	if refusal != nil && refusal.status == statusClientClosedRequest {
		return Identity{}, refusal // nobody is waiting for the answer
	}
	switch outcome {
	case redeemedFromCache:
		h.metrics.cacheHit()
	case redeemedByJoining:
		h.metrics.coalesced()
	}
	if refusal != nil {
		return Identity{}, refusal
	}
	if outcome == redeemedFromCache {
		// Reusing a result costs no WeChat call, so it is checked, not
		// charged; a client replaying one code in a loop is still stopped.
		if wait, ok := h.players.check(ctx, id.OpenID); !ok {
			h.metrics.budgetRejected("player")
			return Identity{}, playerRateLimited(wait)
		}
	}
	return id, nil
}

// exchangeOnce is the one WeChat call for a code, made on behalf of every
// login waiting for it, and charged once to the player: before the call when
// the login carries a session of this gateway's (so a player in a login loop
// is stopped before WeChat), after it otherwise, by the code store's charge. A charge made before is
// given back when WeChat refuses the code, which then proved nobody: junk
// codes sent with a player's token do not spend the player's budget. It is
// kept when the code proves another player, who is charged too: what stops
// a login loop before WeChat must hold whoever the codes belong to. An
// identity that the budget refuses is still returned, for the cache: the
// code is spent at WeChat.
//
// It runs on its own deadline, bounded by the retry policy, so that the first
// client hanging up does not fail the others.
func (h *Handler) exchangeOnce(reqCtx context.Context, code, sessionPlayer string, charge chargeFunc) (Identity, *jsonRefusal) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(reqCtx), h.client.worstCase())
	defer cancel()
	var undoSessionCharge func()
	if sessionPlayer != "" {
		undo, wait, ok := h.players.reserve(ctx, sessionPlayer)
		if !ok {
			h.metrics.budgetRejected("player")
			return Identity{}, playerRateLimited(wait)
		}
		undoSessionCharge = undo
	}

	start := time.Now()
	id, res, err := h.client.redeemCode(ctx, code)
	elapsed := time.Since(start)
	h.metrics.exchanged(res.attempts, elapsed)
	if err != nil {
		refusal := exchangeRefusal(err, h.client.retry, h.now())
		h.logExchange(refusal.code, res, elapsed, err)
		if refusedTheCode(err) {
			giveBack(undoSessionCharge)
		}
		return Identity{}, refusal
	}
	h.logExchange("ok", res, elapsed, nil)
	h.sessionKeys.keep(id.OpenID, id.SessionKey, h.now())

	if id.OpenID != sessionPlayer {
		if wait, ok := charge(ctx, id); !ok {
			h.metrics.budgetRejected("player")
			return id, playerRateLimited(wait)
		}
	}
	return id, nil
}

// refusedTheCode reports whether WeChat refused the code itself (invalid,
// already used, or a high-risk account's), naming no player: the call
// proved nobody, so a charge made for it before is given back. The charge
// is kept when WeChat did not judge the code: a timeout or a 5xx (which may
// have spent it) or -1 (busy: the code may still be the player's own); and
// on 45011, which says the code's player, maybe the token's, is over
// WeChat's quota.
func refusedTheCode(err *attemptError) bool {
	if err.kind != kindErrcode {
		return false
	}
	switch err.errcode {
	case errcodeInvalidCode, errcodeCodeUsed, errcodeBlocked:
		return true
	}
	return false
}

// giveBack undoes a charge, if one was made.
func giveBack(undo func()) {
	if undo != nil {
		undo()
	}
}

func playerRateLimited(wait time.Duration) *jsonRefusal {
	return rateLimited("too many logins for this player", wait)
}

// logExchange writes one line per exchange: at debug level normally, at
// error level when WeChat says our configuration is wrong. It logs WeChat's
// rid, never its errmsg or anything of the request.
func (h *Handler) logExchange(result string, res exchangeResult, elapsed time.Duration, err *attemptError) {
	level := zapcore.DebugLevel
	msg := "wechat exchange"
	if result == errWechatMisconfigured {
		level = zapcore.ErrorLevel
		msg = "wechat refused the configured app_id or app_secret"
	}
	ce := h.logger.Check(level, msg)
	if ce == nil {
		return
	}
	fields := []zap.Field{
		zap.String("app_id", h.AppID),
		zap.String("result", result),
		zap.Int("attempts", res.attempts),
		zap.Duration("duration", elapsed),
	}
	if err != nil {
		if err.kind == kindErrcode {
			fields = append(fields, zap.Int("errcode", err.errcode), zap.String("rid", err.rid))
		}
		fields = append(fields, zap.String("error", err.Error()))
	}
	ce.Write(fields...)
}

// clientIP is the client address as Caddy determined it, which honours
// trusted_proxies behind a load balancer.
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
