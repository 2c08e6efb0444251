-- wrk script for every benchmark scenario, chosen by BENCH_SCENARIO:
--   plain, strip  GET /game/state with a spoofed X-WX-OPENID header
--   session       the same with Authorization: Bearer $BENCH_TOKEN
--   plainauth     session's request, sent to the plain reverse_proxy
--   plainsource   plainauth's with X-WX-SOURCE: wx_client added
--   login         GET /wx/login with a code no other request uses
--   cached        GET /wx/login cycling through the codes in $BENCH_CODES
--   fleetlogin, fleetsession  login's and session's requests, to the three
--                 gateways of the fleet: wrk thread i sends to port i of
--                 $BENCH_FLEET_PORTS (comma-separated), cycling
-- Requests are built in init() where they can be, and cheaply in request()
-- where they cannot, so that wrk (which shares the CPUs with Caddy) spends
-- about the same per request whichever the scenario. response() checks each answer; done()
-- prints one RESULT line that bench/run.sh parses.

local scenario = os.getenv("BENCH_SCENARIO") or error("BENCH_SCENARIO is not set")
local tag = os.getenv("BENCH_TAG") or "0"

-- The fleet's gateways, one per wrk thread, in the fleet scenarios.
local fleet_ports = {}
if string.find(scenario, "^fleet") then
	for port in string.gmatch(os.getenv("BENCH_FLEET_PORTS") or "", "[^,]+") do
		table.insert(fleet_ports, port)
	end
	if #fleet_ports == 0 then error("BENCH_FLEET_PORTS is not set") end
	scenario = string.sub(scenario, 6) -- the requests are login's or session's
end

local threads = {}

function setup(thread)
	thread:set("tid", #threads)
	if #fleet_ports > 0 then
		thread.addr = wrk.lookup("127.0.0.1", fleet_ports[#threads % #fleet_ports + 1])[1]
	end
	table.insert(threads, thread)
end

-- Per-thread state (each wrk thread runs its own copy of this script).
local static_request
local cached_requests
local login_prefix, login_suffix
local counter = 0
-- What the backend's echo must contain, per scenario: nil means not
-- checked. The simulator's openids start with "o"; the spoofed one does not.
local expect_body
local no_identity = '"openid":""'
local sim_identity = '"openid":"o'
local expect_session_header = false

function init(args)
	non2xx = 0
	bad = 0
	local spoof = { ["X-WX-OPENID"] = "spoofed" }
	if scenario == "plain" then
		static_request = wrk.format("GET", "/game/state", spoof)
	elseif scenario == "strip" then
		static_request = wrk.format("GET", "/game/state", spoof)
		expect_body = no_identity
	elseif scenario == "session" or scenario == "plainauth" or scenario == "plainsource" then
		local token = os.getenv("BENCH_TOKEN") or error("BENCH_TOKEN is not set")
		spoof["Authorization"] = "Bearer " .. token
		if scenario == "plainsource" then
			spoof["X-WX-SOURCE"] = "wx_client"
		end
		static_request = wrk.format("GET", "/game/state", spoof)
		if scenario == "session" then
			expect_body = sim_identity
		end
	elseif scenario == "login" then
		local template = wrk.format("GET", "/wx/login?code=CODE")
		login_prefix, login_suffix = string.match(template, "^(.-)CODE(.*)$")
		expect_body = sim_identity
		expect_session_header = true
	elseif scenario == "cached" then
		cached_requests = {}
		for code in string.gmatch(os.getenv("BENCH_CODES") or "", "[^,]+") do
			table.insert(cached_requests, wrk.format("GET", "/wx/login?code=" .. code))
		end
		if #cached_requests == 0 then error("BENCH_CODES is empty") end
		expect_body = sim_identity
		expect_session_header = true
	else
		error("unknown BENCH_SCENARIO " .. scenario)
	end
end

function request()
	if static_request then
		return static_request
	end
	counter = counter + 1
	if cached_requests then
		return cached_requests[counter % #cached_requests + 1]
	end
	-- The player is the part before the dot: one player per request, so the
	-- per-player budget never refuses one.
	return login_prefix .. "p" .. tag .. "-" .. tid .. "-" .. counter .. ".1" .. login_suffix
end

-- Caddy writes header names in Go's canonical form.
local function has_session_header(headers)
	return headers["X-Wx-Session"] ~= nil
end

function response(status, headers, body)
	if status < 200 or status > 299 then
		non2xx = non2xx + 1
	elseif expect_body and not string.find(body, expect_body, 1, true) then
		bad = bad + 1
	elseif expect_session_header and not has_session_header(headers) then
		bad = bad + 1
	end
end

function done(summary, latency, requests)
	local n2, b = 0, 0
	for _, t in ipairs(threads) do
		n2 = n2 + t:get("non2xx")
		b = b + t:get("bad")
	end
	local e = summary.errors
	io.write(string.format(
		"RESULT requests=%d rps=%.1f p50_us=%d p99_us=%d non2xx=%d bad=%d socket_errors=%d\n",
		summary.requests, summary.requests / (summary.duration / 1e6),
		latency:percentile(50), latency:percentile(99),
		n2, b, e.connect + e.read + e.write + e.timeout))
end
