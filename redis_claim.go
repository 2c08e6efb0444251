package wechatlogin

import (
	"context"
	_ "embed"
	"fmt"
	mathrand "math/rand/v2"
	"time"

	"github.com/redis/go-redis/v9"
)

// claimLua defines claim and finish, the two steps of a claim in Redis,
// for the scripts of each kind of claim.
//
//go:embed redis_claim.lua
var claimLua string

// redisClaim is work the fleet does once whichever gateways need it (a
// code's call to its platform, a call for the app's access token), and
// the two keys it is shared by: the result, and the lock held, with an
// expiry, by the gateway doing the work. A gateway that finds a result it
// takes uses it; one that takes the lock leads: it does the work, then in
// one round trip stores the result and lets the lock go; the others wait,
// polling until the result is there, or the lock is gone without one (its
// holder vanished), in which case they take it themselves.
type redisClaim struct {
	app          *appRedis
	kind         *claimKind
	result, lock string
	keys         []string // result and lock, the scripts' KEYS
	// lockTTL is the longest the work can take, and one Redis operation
	// to store its result: a lock older than that has lost its holder.
	lockTTL time.Duration
}

// claim is a claim of kind on the keys result and lock.
func (a *appRedis) claim(kind *claimKind, result, lock string, lockTTL time.Duration) redisClaim {
	return redisClaim{app: a, kind: kind, result: result, lock: lock, keys: []string{result, lock}, lockTTL: lockTTL}
}

// claimKind is what differs between kinds of claims: their scripts (each
// claimLua with its own rules for which stored result a claimer takes and
// which a finish replaces), the operation names they are measured by, and
// their patience.
type claimKind struct {
	claimScript, finishScript *redis.Script
	claimOp, finishOp         string
	// patient: a claim or finish this gateway could not make (busy, or
	// Redis' silence being confirmed) is made again, through one silence
	// (see redisPatience), and a waiter waits as long as the lock it waits
	// on may last, whatever ctx says: the claim serves every caller at this
	// gateway. An impatient claim's caller works alone as soon as Redis
	// fails, and waits only while ctx lets it.
	patient bool
}

// claim runs the kind's claim script for token, with takes (which stored
// result the caller takes, in the kind's terms); outcome is
// redisClient.try's.
func (c redisClaim) claim(ctx context.Context, token, takes string) (reply claimReply, outcome int) {
	outcome = c.app.redis.try(ctx, c.kind.claimOp, func(ctx context.Context) error {
		var err error
		reply, err = parseClaim(c.kind.claimScript.Run(ctx, c.app.redis.client, c.keys, token, c.lockTTL.Milliseconds(), takes))
		return err
	})
	return reply, outcome
}

// await claims, and while another gateway holds the lock waits for it:
// every pollPause it claims again, until it finds a result the caller
// takes or takes the lock. takes says what the caller takes, first and
// then while waiting. ok is false when the caller is to work alone: Redis
// failed (past a patient claim's patience), or the wait ran out (ctx for
// an impatient claim, twice the lock's TTL for a patient one).
func (c redisClaim) await(ctx context.Context, token string, takes func(waiting bool) string) (reply claimReply, waited, ok bool) {
	if !c.attempt(func() (outcome int) { reply, outcome = c.claim(ctx, token, takes(false)); return outcome }) {
		return claimReply{}, false, false
	}
	if reply.kind != claimWait {
		return reply, false, true
	}
	if c.kind.patient {
		// The lock expires by lockTTL; the deadline only guards against a
		// Redis that misbehaves.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), 2*c.lockTTL)
		defer cancel()
	}
	var patience redisPatience
	for {
		select {
		case <-ctx.Done():
			return claimReply{}, true, false
		case <-time.After(pollPause()):
		}
		reply, outcome := c.claim(ctx, token, takes(true))
		if outcome != redisAnswered {
			if c.givesUp(&patience, outcome) {
				return claimReply{}, true, false
			}
			continue // this gateway was busy, or Redis' silence is being confirmed: look again
		}
		if reply.kind != claimWait {
			return reply, true, true
		}
	}
}

// finish stores result (none when empty) for ttl and lets go of the lock
// if it is still token's, with also's write, if any, in the same round
// trip; more are the kind's further arguments. It is safe to repeat.
func (c redisClaim) finish(ctx context.Context, token string, ttl time.Duration, result any, also *sessionKeyWrite, more ...any) {
	c.attempt(func() int {
		return c.app.redis.try(ctx, c.kind.finishOp, func(ctx context.Context) error {
			return c.finishWith(ctx, nil, also, append([]any{token, ttl.Milliseconds(), result}, more...)...).Err()
		})
	})
}

// finishWith runs the finish script with the claim's keys and more, and
// also's write, if any, in one round trip; for a finish that is part of
// another operation (a code's, which charges the player).
func (c redisClaim) finishWith(ctx context.Context, more []string, also *sessionKeyWrite, args ...any) *redis.Cmd {
	keys := c.keys
	if len(more) > 0 {
		keys = append(append([]string(nil), c.keys...), more...)
	}
	return also.runWith(ctx, c.app.redis.client, c.kind.finishScript, keys, args...)
}

// attempt runs op (a redisClient.try) and reports whether Redis answered
// it. A patient claim runs it again while this gateway is busy or is
// confirming that Redis is silent, for up to lockTTL: a caller that works
// alone instead may do what another gateway is doing (spend a code), and
// a result left unstored makes the other gateways wait it out; it gives up
// when Redis is down, or silent again after a PING found it answering.
func (c redisClaim) attempt(op func() int) bool {
	deadline := time.Now().Add(c.lockTTL)
	var patience redisPatience
	for {
		outcome := op()
		if outcome == redisAnswered {
			return true
		}
		if c.givesUp(&patience, outcome) || time.Now().After(deadline) {
			return false
		}
		time.Sleep(pollPause())
	}
}

// givesUp says whether a claimer stops asking Redis after a failed
// operation: an impatient one always, a patient one once out of patience.
func (c redisClaim) givesUp(patience *redisPatience, outcome int) bool {
	return !c.kind.patient || patience.lost(c.app.redis, outcome)
}

// redisPatience is how long a patient claimer keeps asking Redis: while
// this gateway is busy, and through one silence (a stall that a PING finds
// over), but not through a second: a Redis that answers a PING yet none of
// the operations within the timeout is slow, not stalled, and would hold
// every caller until the lock ran out.
type redisPatience struct{ silences int }

func (p *redisPatience) lost(client *redisClient, outcome int) bool {
	if outcome == redisSilent {
		p.silences++
	}
	return client.down.Load() || p.silences > 1
}

// Waiters poll every 10-25ms, jittered so that gateways do not poll in
// step.
const (
	pollMin = 10 * time.Millisecond
	pollMax = 25 * time.Millisecond
)

// pollPause is one waiter's pause between two looks at Redis.
func pollPause() time.Duration { return pollMin + mathrand.N(pollMax-pollMin) }

// What a claim script answers: {claimResult, value} when it found a result
// the caller takes, {claimLead} when the caller took the lock, or
// {claimWait}.
const (
	claimResult = "result"
	claimLead   = "lead"
	claimWait   = "wait"
)

// claimReply is a claim script's answer.
type claimReply struct {
	kind  string
	value string
}

// parseClaim reads a claim script's answer.
func parseClaim(cmd *redis.Cmd) (claimReply, error) {
	reply, err := cmd.StringSlice()
	if err != nil {
		return claimReply{}, err
	}
	if len(reply) == 0 || (reply[0] == claimResult) != (len(reply) == 2) {
		return claimReply{}, fmt.Errorf("a claim script answered %d values", len(reply))
	}
	claim := claimReply{kind: reply[0]}
	if len(reply) == 2 {
		claim.value = reply[1]
	}
	return claim, nil
}
