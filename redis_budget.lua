-- One charge (or check) of a budget kept as a slotted sliding window: at
-- most `events` charges in any interval of the window's length, for every
-- gateway together. See redis_budget.go.
--
-- KEYS[1]  the budget: a hash of slot index -> charges, plus "last" (the
--          highest slot charged, so that the budget's clock never moves
--          back) and "slot" (the slot length its indexes are in)
-- ARGV[1]  events allowed in any window
-- ARGV[2]  slot length in milliseconds: the window / 20, rounded up
-- ARGV[3]  "1" to charge, "0" only to check
-- ARGV[4]  the time in milliseconds, given by tests only; otherwise the
--          server's clock, so that the gateways' clocks do not matter
-- ARGV[5]  a random generation, kept in "gen" by a budget made anew, so
--          that a refund made after Redis lost the budget gives back
--          nothing (see redis_budget.go)
-- Returns {1, 0, slot, gen} when there was room (and the charge was made in
-- that slot of that generation of the budget, for a refund), or {0, wait}:
-- the milliseconds until there is room.

-- Scripts that read TIME must replicate their effects (the default since
-- Redis 5; this asks for it on older servers).
if redis.replicate_commands then
	redis.replicate_commands()
end

local k = 20
local events = tonumber(ARGV[1])
local slot = tonumber(ARGV[2])
local charge = ARGV[3] == '1'
local t = tonumber(ARGV[4] or '')
if not t then
	local now = redis.call('TIME')
	t = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

local i = math.floor(t / slot)
local counts, last, slotOfCounts, gen = {}, nil, nil, nil
local fields = redis.call('HGETALL', KEYS[1])
for n = 1, #fields, 2 do
	local name, value = fields[n], tonumber(fields[n + 1])
	if name == 'last' then
		last = value
	elseif name == 'slot' then
		slotOfCounts = value
	elseif name == 'gen' then
		gen = value
	else
		counts[tonumber(name)] = value
	end
end
-- A new window length (a reload): indexes in another unit mean nothing, so
-- every charge counted so far moves to the current slot. It is forgiven no
-- earlier than a full new window from now: never a refill.
if slotOfCounts and slotOfCounts ~= slot then
	local total = 0
	for _, n in pairs(counts) do
		total = total + n
	end
	counts, last, gen = {[i] = total}, nil, nil
	redis.call('DEL', KEYS[1])
	if total > 0 then
		local field = string.format('%.0f', i)
		gen = tonumber(ARGV[5])
		redis.call('HSET', KEYS[1], field, total, 'last', field, 'slot', slot, 'gen', ARGV[5])
		redis.call('PEXPIRE', KEYS[1], (k + 1) * slot)
	end
end
if last and last > i then
	i = last
end

local low = i - k
local counted, stale = 0, {}
for s, n in pairs(counts) do
	if s < low then
		stale[#stale + 1] = string.format('%.0f', s)
	else
		counted = counted + n
	end
end

if counted < events then
	if charge then
		if #stale > 0 then
			redis.call('HDEL', KEYS[1], unpack(stale))
		end
		local field = string.format('%.0f', i)
		redis.call('HINCRBY', KEYS[1], field, 1)
		redis.call('HSET', KEYS[1], 'last', field, 'slot', slot)
		if not gen then
			gen = tonumber(ARGV[5])
			redis.call('HSET', KEYS[1], 'gen', ARGV[5])
		end
		-- The last charge leaves the window (k + 1) slots after its own.
		redis.call('PEXPIRE', KEYS[1], (k + 1) * slot)
	end
	return {1, 0, i, gen or 0}
end

-- Full: room comes back when the oldest slots that must go have left the
-- k + 1 slots counted.
local left = counted
for j = low, i do
	left = left - (counts[j] or 0)
	if left < events then
		return {0, math.max((j + k + 1) * slot - t, 1)}
	end
end
return {0, (k + 1) * slot} -- not reached: emptying every slot leaves 0 < events
