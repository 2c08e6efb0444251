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
	// SessionKey is the platform's key for the player's encrypted data. It
	// is kept only to be forwarded upstream with forward_session_key, never
	// shown.
	SessionKey string
	// AnonymousOpenID names a Douyin player who is not logged in to Douyin
	// (from an anonymous_code); with a code too, it links that player's
	// anonymous past to OpenID.
	AnonymousOpenID string
}

// proves reports whether id names a player, logged in or anonymous.
func (id Identity) proves() bool { return id.OpenID != "" || id.AnonymousOpenID != "" }

// player is whose budget id's logins spend: the openid, or an anonymous
// player's anonymous_openid (marked, so that it never names another
// player's budget).
func (id Identity) player() string {
	if id.OpenID != "" {
		return id.OpenID
	}
	return "anonymous:" + id.AnonymousOpenID
}

// decideLogin is authenticateLogin and, with sessions, the token the login
// earns: everything a login can be refused for is decided here.
func (h *Handler) decideLogin(r *http.Request, app *loginApp, presented presentedHeaders) (id Identity, token string, expires time.Time, refusal *jsonRefusal) {
	if id, refusal = h.authenticateLogin(r, app, presented); refusal != nil || h.sessions == nil {
		return id, "", time.Time{}, refusal
	}
	token, expires = h.sessions.issue(app, id)
	app.metrics.sessionIssued()
	return id, token, expires, nil
}

// authenticateLogin decides a login at app: the identity its code proves,
// or the refusal to answer with. It charges the budgets on the way and
// writes nothing; serveLogin acts on the decision. presented holds the
// codes and session the client sent in headers.
func (h *Handler) authenticateLogin(r *http.Request, app *loginApp, presented presentedHeaders) (Identity, *jsonRefusal) {
	ctx := r.Context()
	if wait, ok := h.ips.spend(ctx, ipBudgetKey(clientIP(r))); !ok {
		app.metrics.budgetRejected("ip")
		return Identity{}, rateLimited("too many logins from this address", wait)
	}
	creds, refusal := loginCredentials(r, h.CodeField, app.platform, presented)
	if refusal != nil {
		return Identity{}, refusal
	}
	var sessionPlayer string
	if h.sessions != nil {
		sessionPlayer = h.sessions.presentedPlayer(r, app, presented.session, expiredSessionGrace)
	}
	res, outcome, err := app.codes.redeem(ctx, newCodeKey(app.appID, creds), func(charge chargeFunc) codeResult {
		return h.exchangeOnce(ctx, app, creds, sessionPlayer, charge)
	})
	if err != nil {
		return Identity{}, clientGone() // nobody is waiting for the answer
	}
	switch outcome {
	case redeemedFromCache:
		app.metrics.cacheHit()
		// Reusing a result costs no call, so it is checked, not charged; a
		// client replaying one code in a loop is still stopped.
		if wait, ok := app.players.check(ctx, res.id.player()); !ok {
			app.metrics.budgetRejected("player")
			return Identity{}, playerRateLimited(wait)
		}
	case redeemedByJoining:
		app.metrics.coalesced()
	}
	switch {
	case res.failure != nil:
		return Identity{}, app.failures.refusal(res.failure, h.now())
	case res.budgetWait > 0:
		return Identity{}, playerRateLimited(res.budgetWait)
	}
	return res.id, nil
}

// clientGone is the decision of a login whose client hung up before it was
// decided: refuse, which sees the request's context done, records 499 and
// counts nothing. Nobody reads the body.
func clientGone() *jsonRefusal {
	return newRefusal(statusClientClosedRequest, refusalInvalidRequest, "the client went away")
}

// exchangeOnce is the one platform call for a code, made on behalf of every
// login waiting for it, and charged once to the player: before the call when
// the login carries a session of this gateway's (so a player in a login loop
// is stopped before the platform), after it otherwise, by the code store's
// charge (a fleet's makes it in the Redis operation that stores the
// result). A charge made before
// is given back when the platform refuses the code, which then proved
// nobody: junk codes sent with a player's token do not spend the player's
// budget. It is kept when the code proves another player, who is charged
// too: what stops a login loop before the platform must hold whoever the
// codes belong to. An identity that the budget refuses is still returned,
// for the cache: the code is spent at the platform.
//
// It runs on its own deadline, bounded by the retry policy, so that the first
// client hanging up does not fail the others.
func (h *Handler) exchangeOnce(reqCtx context.Context, app *loginApp, creds credentials, sessionPlayer string, charge chargeFunc) codeResult {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(reqCtx), app.client.worstCase())
	defer cancel()
	var undoSessionCharge func()
	if sessionPlayer != "" {
		undo, wait, ok := app.players.reserve(ctx, sessionPlayer)
		if !ok {
			app.metrics.budgetRejected("player")
			return codeResult{budgetWait: wait}
		}
		undoSessionCharge = undo
	}

	start := time.Now()
	id, attempts, err := app.client.redeem(ctx, creds)
	elapsed := time.Since(start)
	app.metrics.exchanged(attempts, elapsed)
	h.logExchange(app, attempts, elapsed, err)
	if err != nil {
		// The charge is kept when the platform did not judge the code: a
		// timeout or a 5xx (which may have spent it), busy (the code may
		// still be the player's own), or over its quota (the code's
		// player, maybe the token's, is).
		if err.refusedTheCode() {
			giveBack(undoSessionCharge)
		}
		return codeResult{failure: err}
	}
	if app.sessionKeys != nil && id.OpenID != "" {
		app.sessionKeys.keep(id.OpenID, id.SessionKey, h.now())
	}
	if id.player() != sessionPlayer {
		if wait, ok := charge(ctx, id); !ok {
			app.metrics.budgetRejected("player")
			return codeResult{id: id, budgetWait: wait}
		}
	}
	return codeResult{id: id}
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
// error level when the platform says our configuration is wrong. It logs
// the platform's rid, never its errmsg or anything of the request.
func (h *Handler) logExchange(app *loginApp, attempts int, elapsed time.Duration, err *platformError) {
	level, msg, result := zapcore.DebugLevel, "wechat exchange", loginOK
	if err != nil {
		result = app.failures.code(err)
	}
	if err != nil && err.kind == kindMisconfigured {
		level, msg = zapcore.ErrorLevel, app.platform.name+" refused the configured app_id or app_secret"
	}
	ce := h.logger.Check(level, msg)
	if ce == nil {
		return
	}
	fields := []zap.Field{
		zap.String("platform", app.platform.name),
		zap.String("app_id", app.appID),
		zap.String("result", result),
		zap.Int("attempts", attempts),
		zap.Duration("duration", elapsed),
	}
	if err != nil {
		if err.hasErrcode {
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
