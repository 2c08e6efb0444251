-- One charge (or check) of a budget kept as a slotted sliding window: at
-- most `events` charges in any interval of the window's length, for every
-- gateway together. See redis_budget.go, and budget.go for the same
-- algorithm in memory. The scripts that charge a budget (redis_budget.go's,
-- and redis_codes.go's that stores a code's result) begin with this file
-- and call chargeBudget.
--
-- key      the budget: a hash of slot index -> charges, plus "last" (the
--          highest slot charged, so that the budget's clock never moves
--          back) and "slot" (the slot length its indexes are in)
-- events   events allowed in any window
-- want     this window's slot length in milliseconds: the window / 20,
--          rounded up
-- charge   "1" to charge, "0" only to check
-- now      the time in milliseconds, given by tests only ("" otherwise):
--          then the server's clock, so that the gateways' clocks do not
--          matter
-- newGen   a random generation, kept in "gen" by a budget made anew, so
--          that a refund made after Redis lost the budget gives back
--          nothing (see redis_budget.go)
-- Returns {1, 0, slot, gen, unit} when there was room (and the charge was
-- made in that slot, of unit milliseconds, of that generation of the
-- budget, for a refund), or {0, wait}: the milliseconds until there is room.
--
-- Gateways with different window lengths share the budget (a rolling
-- config change): its slots only get longer while they hold charges, and a
-- shorter window is judged over them, counting as many as cover it.

-- Scripts that read TIME must replicate their effects (the default since
-- Redis 5; this asks for it on older servers).
if redis.replicate_commands then
	redis.replicate_commands()
end

local function chargeBudget(key, events, want, charge, now, newGen)
	local k = 20
	events = tonumber(events)
	want = tonumber(want)
	charge = charge == '1'
	local t = tonumber(now)
	if not t then
		local time = redis.call('TIME')
		t = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
	end

	local counts, last, slot, gen = {}, nil, nil, nil
	local fields = redis.call('HGETALL', key)
	for n = 1, #fields, 2 do
		local name, value = fields[n], tonumber(fields[n + 1])
		if name == 'last' then
			last = value
		elseif name == 'slot' then
			slot = value
		elseif name == 'gen' then
			gen = value
		elseif tonumber(name) then -- a field that is no slot counts nothing
			counts[tonumber(name)] = value
		end
	end
	slot = slot or want

	-- sum is the charges in the span slots up to i.
	local function sum(i, span)
		local n = 0
		for s, c in pairs(counts) do
			if s > i - span and s <= i then
				n = n + c
			end
		end
		return n
	end

	-- A longer window than the slots cover: indexes in another unit mean
	-- nothing, so every charge still counted moves to the current slot. It is
	-- forgiven no earlier than a full new window from now: never a refill.
	if want > slot then
		local total = sum(math.max(math.floor(t / slot), last or 0), k + 1)
		local i = math.floor(t / want)
		counts, last, gen, slot = {[i] = total}, nil, nil, want
		redis.call('DEL', key)
		if total > 0 then
			local field = string.format('%.0f', i)
			gen = tonumber(newGen)
			redis.call('HSET', key, field, total, 'last', field, 'slot', slot, 'gen', newGen)
			redis.call('PEXPIRE', key, (k + 1) * slot)
		end
	end

	local i = math.floor(t / slot)
	if last and last > i then
		i = last
	end
	-- A shorter window, and nothing counted that shorter slots would lose:
	-- take them.
	if want < slot and sum(i, k + 1) == 0 then
		counts, last, gen, slot = {}, nil, nil, want
		redis.call('DEL', key)
		i = math.floor(t / slot)
	end

	-- The slots of this length that any interval of the window lies within
	-- (the window taken as k * want, at least its length).
	local span = math.min(math.ceil(k * want / slot), k) + 1
	local counted = sum(i, span)
	local stale = {}
	for s in pairs(counts) do
		if s <= i - (k + 1) then
			stale[#stale + 1] = string.format('%.0f', s)
		end
	end

	if counted < events then
		if charge then
			if #stale > 0 then
				redis.call('HDEL', key, unpack(stale))
			end
			local field = string.format('%.0f', i)
			-- Set from what was read, not HINCRBY: a count that is not a
			-- whole number (written by hand) counts as read, not as an error.
			redis.call('HSET', key, field, math.floor(counts[i] or 0) + 1, 'last', field, 'slot', slot)
			if not gen then
				gen = tonumber(newGen)
				redis.call('HSET', key, 'gen', newGen)
			end
			-- The last charge leaves the window (k + 1) slots after its own.
			redis.call('PEXPIRE', key, (k + 1) * slot)
		end
		return {1, 0, i, gen or 0, slot}
	end

	-- Full: room comes back when the oldest slots that must go have left the
	-- span counted.
	local left = counted
	for j = i - span + 1, i do
		left = left - (counts[j] or 0)
		if left < events then
			return {0, math.max((j + span) * slot - t, 1)}
		end
	end
	return {0, span * slot} -- not reached: emptying every slot leaves 0 < events
end
