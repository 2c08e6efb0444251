-- The two steps of work the fleet does once (see redis_claim.go). Every
-- script of a claim begins with this file and ends with one call, of claim
-- or of finish, giving the rule that is its kind's own.
--
-- KEYS[1]  the result
-- KEYS[2]  the lock, held with an expiry by the gateway doing the work
-- ARGV[1]  the caller's token: the lock's value while the caller holds it
-- ARGV[2]  milliseconds: the lock's TTL (claim), the result's (finish)

-- claim returns {'result', result} when takes(result) says the caller
-- takes the stored result; or takes the lock (or finds it the caller's
-- already: a claim that ran late) and returns {'lead'}, first dropping the
-- result left there when dropsLeft, so that the new work's waiters never
-- read it; or returns {'wait'}.
local function claim(takes, dropsLeft)
	local result = redis.call('GET', KEYS[1])
	if result and takes(result) then
		return {'result', result}
	end
	if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) or redis.call('GET', KEYS[2]) == ARGV[1] then
		if result and dropsLeft then
			redis.call('DEL', KEYS[1])
		end
		return {'lead'}
	end
	return {'wait'}
end

-- finish stores result (none when empty) for ARGV[2] ms, over a stored one
-- only when replaces(stored, held) says so (held: the lock is still the
-- caller's), and lets go of the lock if it is still the caller's.
local function finish(result, replaces)
	local held = redis.call('GET', KEYS[2]) == ARGV[1]
	if result ~= '' then
		local stored = redis.call('GET', KEYS[1])
		if not stored or replaces(stored, held) then
			redis.call('SET', KEYS[1], result, 'PX', ARGV[2])
		end
	end
	if held then
		redis.call('DEL', KEYS[2])
	end
end
