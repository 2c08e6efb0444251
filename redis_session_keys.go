package wechatlogin

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The fleet's custody of session_keys: per player one key,
//
//	<prefix>skey:<hide(openid)>  'k', the 13-digit issue time in ms, then the
//	                             sealed {session_key, issued, expires}
//
// with an expiry at the end of the key's lifetime. The issue time stands
// in clear (bound by the seal) so that the script can keep the newest;
// the name hides whose it is. wechat_login writes it along with the code's
// result (one round trip); wechat_api reads it.

const sessionKeyKind = 'k'

// sessionKeyScript stores ARGV[1] (issued at ARGV[2] ms) for ARGV[3] ms
// unless the stored key was issued later: the newest login wins across
// the fleet too. A stored value that is not a kept key is replaced.
var sessionKeyScript = redis.NewScript(`
local kept = redis.call('GET', KEYS[1])
local keptIssued = kept and string.sub(kept, 1, 1) == 'k' and tonumber(string.sub(kept, 2, 14))
if keptIssued and keptIssued > tonumber(ARGV[2]) then
	return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
`)

// storedSessionKey is a kept key's sealed part.
type storedSessionKey struct {
	Key      string `json:"session_key"`
	IssuedMS int64  `json:"issued"`
}

// sessionKeyWrite is one custody write, ready to run.
type sessionKeyWrite struct {
	name   string
	value  []byte
	issued int64
	ttl    time.Duration
}

func (a *appRedis) sessionKeyName(openid string) string {
	return a.prefix + "skey:" + a.hide([]byte(openid))
}

// sessionKeyWrite seals key, issued at issuedAt, for openid; nil when the
// key is already past its lifetime.
func (a *appRedis) sessionKeyWrite(openid, key string, issuedAt time.Time) *sessionKeyWrite {
	expires := issuedAt.Add(sessionKeyLifetime)
	ttl := time.Until(expires)
	if key == "" || ttl <= 0 {
		return nil
	}
	name := a.sessionKeyName(openid)
	sealed := a.seal(sessionKeyKind, name, storedSessionKey{Key: key, IssuedMS: issuedAt.UnixMilli()}, expires)
	value := fmt.Appendf(nil, "%c%013d", sessionKeyKind, issuedAt.UnixMilli())
	return &sessionKeyWrite{name: name, value: append(value, sealed[1:]...), issued: issuedAt.UnixMilli(), ttl: ttl}
}

func (w *sessionKeyWrite) args() []any {
	return []any{w.value, w.issued, w.ttl.Milliseconds()}
}

// runWith runs script (a claim's finish) and, when w is not nil, the
// write, in one round trip, and returns the script's reply. Both go by
// EVALSHA; whichever Redis does not have (after a restart, say) goes again
// by EVAL, in one more round trip.
func (w *sessionKeyWrite) runWith(ctx context.Context, client redis.UniversalClient, script *redis.Script, keys []string, args ...any) *redis.Cmd {
	if w == nil {
		return script.Run(ctx, client, keys, args...)
	}
	var reply, write *redis.Cmd
	_, _ = client.Pipelined(ctx, func(p redis.Pipeliner) error {
		reply = script.EvalSha(ctx, p, keys, args...)
		write = sessionKeyScript.EvalSha(ctx, p, []string{w.name}, w.args()...)
		return nil
	})
	replyLost, writeLost := redis.HasErrorPrefix(reply.Err(), "NOSCRIPT"), redis.HasErrorPrefix(write.Err(), "NOSCRIPT")
	if replyLost || writeLost {
		_, _ = client.Pipelined(ctx, func(p redis.Pipeliner) error {
			if replyLost {
				reply = script.Eval(ctx, p, keys, args...)
			}
			if writeLost {
				sessionKeyScript.Eval(ctx, p, []string{w.name}, w.args()...)
			}
			return nil
		})
	}
	return reply
}

// keepSessionKey stores a key outside a login (a rotation).
func (a *appRedis) keepSessionKey(ctx context.Context, openid, key string, issuedAt time.Time) {
	w := a.sessionKeyWrite(openid, key, issuedAt)
	if w == nil {
		return
	}
	a.redis.do(ctx, "session_key_keep", func(ctx context.Context) error {
		return sessionKeyScript.Run(ctx, a.redis.client, []string{w.name}, w.args()...).Err()
	})
}

// lookupSessionKey reads openid's key; served is false when Redis did not
// answer. A value that does not open, or is past the expiry sealed in it,
// is not used.
func (a *appRedis) lookupSessionKey(ctx context.Context, openid string, now time.Time) (kept keptSessionKey, found, served bool) {
	name := a.sessionKeyName(openid)
	var stored string
	served = a.redis.do(ctx, "session_key_get", func(ctx context.Context) error {
		var err error
		stored, err = a.redis.client.Get(ctx, name).Result()
		return err
	})
	if !served || len(stored) < 14 || stored[0] != sessionKeyKind {
		return keptSessionKey{}, false, served
	}
	issued, err := strconv.ParseInt(stored[1:14], 10, 64)
	var record storedSessionKey
	if err != nil || a.open(name, stored[:1]+stored[14:], &record, now) != nil || record.IssuedMS != issued ||
		!isVisibleASCII(record.Key, maxWechatValueLen) {
		return keptSessionKey{}, false, true
	}
	return keptSessionKey{key: record.Key, issuedAt: time.UnixMilli(record.IssuedMS)}, true, true
}
