#!/usr/bin/env bash
# The wechat_login benchmark, in one command:
#
#	bash bench/run.sh
#
# It builds Caddy (standard modules + wechat_login), the WeChat simulator and
# the sample game backend, starts them on 127.0.0.1, and measures with wrk,
# side by side in one Caddy:
#   1 plain     reverse_proxy alone (the ceiling)
#   1b plainauth  the same with the Authorization header that 3 sends, to
#               tell the module's cost from that of the bigger request
#   1c plainsource  1b's request with X-WX-SOURCE sent by the client, to the
#               plain reverse_proxy: forwarding the one header more that 3
#               forwards than v2 did (plus reading it)
#   2 strip     wechat_login in front, a request that is neither a login nor
#               carries a session: identity headers stripped, then forwarded
#   3 session   a game request with a session token, verified
#   4 login     logins with codes never seen before (one simulator call each)
#   5 cached    logins with a handful of already redeemed codes (code cache)
# and, with three more Caddy processes (bench/fleet.Caddyfile) and one
# redis-server, a fleet of three gateways, wrk's threads spread over them:
#   6 memfleet-login      4's logins, each gateway on its own memory
#   7 redisfleet-login    4's logins, the gateways sharing Redis (goal: of 6)
#   8 memfleet-session    3's requests, each gateway on its own memory
#   9 redisfleet-session  3's requests, with the redis block (goal: of 8)
# then, with BENCH_INSTRUCTIONS=1, the instructions Caddy executes per
# request in 1-5 (under valgrind's callgrind: a count the machine's noise
# does not move), then Caddy's memory as BENCH_PLAYERS distinct players log
# in. Raw outputs and the tables go to bench/out/.
#
# Environment (defaults in brackets):
#   BENCH_THREADS [2]  BENCH_CONNS [32]  BENCH_DURATION [10s]   wrk settings
#   BENCH_ROUNDS [5]        rounds; the order alternates, medians are quoted
#   BENCH_WARMUP [3s]       unrecorded warm-up per scenario; 0 skips it
#   BENCH_PLAYERS [1000000] players for the memory run; 0 skips it
#   BENCH_PROFILE [auto]    auto: CPU-profile scenarios that miss their goal;
#                           all: profile every scenario run; off
#   BENCH_FLEET [1]         0 skips 6-9 (and Redis)
#   BENCH_INSTRUCTIONS [0]  1 counts Caddy's instructions per request in 1-5
#                           under callgrind (installs valgrind when missing)
#   BENCH_SCENARIOS [all]   a subset to run, by name (plain ... redisfleet-session);
#                           a ratio needs its base in the subset; without a
#                           fleet scenario, no fleet is started
#   BENCH_PORT_BASE [18180] ports base..base+3 (admin, sites), base+11..13
#                           (backend, simulator, Redis), base+20..28 (fleet)
#
# wrk and redis-server are installed with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${BENCH_THREADS:-2}
CONNS=${BENCH_CONNS:-32}
DURATION=${BENCH_DURATION:-10s}
ROUNDS=${BENCH_ROUNDS:-5}
WARMUP=${BENCH_WARMUP:-3s}
PLAYERS=${BENCH_PLAYERS:-1000000}
PROFILE=${BENCH_PROFILE:-auto}
PORT_BASE=${BENCH_PORT_BASE:-18180}
FLEET=${BENCH_FLEET:-1}
INSTRUCTIONS=${BENCH_INSTRUCTIONS:-0}

OUT=bench/out
SCENARIOS=(plain plainauth plainsource strip session login cached)
if [ "$FLEET" != 0 ]; then
	SCENARIOS+=(memfleet-login redisfleet-login memfleet-session redisfleet-session)
fi
if [ -n "${BENCH_SCENARIOS:-}" ]; then
	read -r -a SCENARIOS <<<"$BENCH_SCENARIOS"
	[[ " ${SCENARIOS[*]} " == *fleet-* ]] || FLEET=0
fi
# Each scenario's req/s is divided by its base's, in the same round.
declare -A BASE=([redisfleet-login]=memfleet-login [redisfleet-session]=memfleet-session)
declare -A GOAL=([strip]=0.97 [session]=0.97 [login]=0.50 [cached]=0.90 [redisfleet-login]=0.90 [redisfleet-session]=0.97)
declare -A TITLE=(
	[plain]="1 plain reverse_proxy (ceiling)"
	[plainauth]="1b plain reverse_proxy, 3's request"
	[plainsource]="1c 1b with X-WX-SOURCE from the client"
	[strip]="2 wechat_login, no login, no session"
	[session]="3 session-verified request"
	[login]="4 login, distinct codes (WeChat call)"
	[cached]="5 login, cached codes"
	[memfleet-login]="6 fleet of 3, each in memory: 4's logins"
	[redisfleet-login]="7 fleet of 3 sharing Redis: 4's logins"
	[memfleet-session]="8 fleet of 3, each in memory: 3's requests"
	[redisfleet-session]="9 fleet of 3 with a redis block: 3's requests"
)
declare -A NUMBER=([plain]=1 [plainauth]=1b [plainsource]=1c [strip]=2 [session]=3 [login]=4 [cached]=5
	[memfleet-login]=6 [redisfleet-login]=7 [memfleet-session]=8 [redisfleet-session]=9)

export BENCH_ADMIN_PORT=$PORT_BASE
export BENCH_PLAIN_PORT=$((PORT_BASE + 1))
export BENCH_STRIP_PORT=$((PORT_BASE + 2))
export BENCH_GAME_PORT=$((PORT_BASE + 3))
export BENCH_BACKEND_PORT=$((PORT_BASE + 11))
export BENCH_SIM_PORT=$((PORT_BASE + 12))
export BENCH_REDIS_PORT=$((PORT_BASE + 13))
export BENCH_STRIP_APPID=wxbench0000strip
export BENCH_GAME_APPID=wxbench00000game
export BENCH_FLEET_MEMORY_APPID=wxbench0fleetmem
export BENCH_FLEET_REDIS_APPID=wxbench0fleetred
# Fleet gateway i (0, 1, 2): admin port, then its memory site, then its
# redis site.
gateway_port() { echo $((PORT_BASE + 20 + 3 * $1 + $2)); }
# Throwaway credentials that only the local simulator knows.
export BENCH_APP_SECRET=bench-app-secret-0123456789
export BENCH_SESSION_SECRET=bench-session-secret-0123456789abcdef
# Caddy writes nothing outside bench/out.
export XDG_CONFIG_HOME=$PWD/$OUT/home XDG_DATA_HOME=$PWD/$OUT/home

ADMIN=http://127.0.0.1:$BENCH_ADMIN_PORT
GAME=http://127.0.0.1:$BENCH_GAME_PORT

mkdir -p "$OUT"
rm -f "$OUT"/wrk-*.txt "$OUT"/profile-* "$OUT"/*.log "$OUT"/results.tsv "$OUT"/memory.tsv "$OUT"/results.md "$OUT"/redis.txt \
	"$OUT"/instructions.tsv "$OUT"/instructions.md "$OUT"/callgrind.out.* "$OUT"/callgrind-*.out

# --- processes -------------------------------------------------------------

# shellcheck source=bench/lib.sh
source bench/lib.sh

start_caddy() {
	start caddy "$OUT/caddy" run --config bench/Caddyfile --adapter caddyfile
	CADDY_PID=$LAST_PID
	wait_up "$ADMIN/config/"
	wait_up "http://127.0.0.1:$BENCH_PLAIN_PORT/"
}

stop_caddy() {
	kill "$CADDY_PID"
	wait "$CADDY_PID" 2>/dev/null || true
	local pid kept=()
	for pid in "${PIDS[@]}"; do
		[ "$pid" = "$CADDY_PID" ] || kept+=("$pid")
	done
	PIDS=("${kept[@]}")
}

# login CODE [SITE]: one login at SITE (the game site); prints the session
# token.
login() {
	local headers
	headers=$(curl -s -D - -o /dev/null -w '%{http_code}' "${2:-$GAME}/wx/login?code=$1")
	if [ "${headers: -3}" != 200 ]; then
		echo "a setup login failed with HTTP ${headers: -3}" >&2
		exit 1
	fi
	awk 'tolower($1) == "x-wx-session:" { sub(/\r$/, "", $2); print $2 }' <<<"$headers"
}

# --- machine and build -----------------------------------------------------

{
	echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "cpus:    $(nproc) x $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
	echo "memory:  $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
	echo "kernel:  $(uname -r)"
	echo "go:      $(go version)"
	echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min averages at the start; the machine may be shared)"
} >"$OUT/machine.txt"

APT_UPDATED=0
# need COMMAND PACKAGE: installs PACKAGE with apt-get when COMMAND is missing.
need() {
	if command -v "$1" >/dev/null; then
		return
	fi
	echo "== installing $2"
	if [ "$APT_UPDATED" = 0 ]; then
		apt-get update >/dev/null
		APT_UPDATED=1
	fi
	apt-get install -y "$2" >/dev/null
}
need wrk wrk
if [ "$INSTRUCTIONS" != 0 ]; then
	need valgrind valgrind
fi
echo "wrk:     $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)" >>"$OUT/machine.txt"
if [ "$FLEET" != 0 ]; then
	need redis-server redis-server
	echo "redis:   $(redis-server --version | cut -d' ' -f1-3)" >>"$OUT/machine.txt"
fi
cat "$OUT/machine.txt"

echo "== building"
go build -o "$OUT/caddy" ./cmd/caddy
go build -o "$OUT/wechatsim" ./cmd/wechatsim
go build -o "$OUT/gamebackend" ./cmd/gamebackend
go build -o "$OUT/logindriver" ./bench/logindriver

start gamebackend "$OUT/gamebackend" -listen "127.0.0.1:$BENCH_BACKEND_PORT"
start wechatsim "$OUT/wechatsim" -listen "127.0.0.1:$BENCH_SIM_PORT" \
	-app "$BENCH_STRIP_APPID:$BENCH_APP_SECRET" -app "$BENCH_GAME_APPID:$BENCH_APP_SECRET" \
	-app "$BENCH_FLEET_MEMORY_APPID:$BENCH_APP_SECRET" -app "$BENCH_FLEET_REDIS_APPID:$BENCH_APP_SECRET"
wait_up "http://127.0.0.1:$BENCH_BACKEND_PORT/"
wait_up "http://127.0.0.1:$BENCH_SIM_PORT/"
start_caddy

# redis_ping: whether the benchmark's redis-server answers PING.
redis_ping() {
	local reply
	exec 3<>"/dev/tcp/127.0.0.1/$BENCH_REDIS_PORT" || return 1
	printf 'PING\r\n' >&3
	read -r -t 1 reply <&3 || true
	exec 3<&-
	[ "${reply%$'\r'}" = +PONG ]
}


FLEET_ADMIN=""
if [ "$FLEET" != 0 ]; then
	# Nothing saved, nothing appended: the store lives in memory only.
	start redis redis-server --port "$BENCH_REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no
	for _ in $(seq 100); do
		if redis_ping 2>/dev/null; then
			break
		fi
		sleep 0.1
	done
	if ! redis_ping 2>/dev/null; then
		echo "redis-server does not answer on port $BENCH_REDIS_PORT; see $OUT/redis.log" >&2
		exit 1
	fi
	GATEWAY_PIDS=()
	for i in 0 1 2; do
		start "caddy-gateway$i" env BENCH_GW_ADMIN_PORT="$(gateway_port "$i" 0)" \
			BENCH_GW_MEMORY_PORT="$(gateway_port "$i" 1)" BENCH_GW_REDIS_PORT="$(gateway_port "$i" 2)" \
			"$OUT/caddy" run --config bench/fleet.Caddyfile --adapter caddyfile
		GATEWAY_PIDS+=("$LAST_PID")
		wait_up "http://127.0.0.1:$(gateway_port "$i" 0)/config/"
		wait_up "http://127.0.0.1:$(gateway_port "$i" 2)/"
	done
	FLEET_ADMIN=http://127.0.0.1:$(gateway_port 0 0)
fi

# --- throughput ------------------------------------------------------------

# token SITE: a session token from one login at SITE.
token() {
	local t
	t=$(login "token-player.1" "$1")
	if [ -z "$t" ]; then
		echo "the setup login at $1 got no X-WX-SESSION header" >&2
		exit 1
	fi
	echo "$t"
}
declare -A TOKEN=([session]=$(token "$GAME") [plainauth]=)
TOKEN[plainauth]=${TOKEN[session]}
TOKEN[plainsource]=${TOKEN[session]}
if [ "$FLEET" != 0 ]; then
	# Issued by gateway 0, verified by all three.
	TOKEN[memfleet-session]=$(token "http://127.0.0.1:$(gateway_port 0 1)")
	TOKEN[redisfleet-session]=$(token "http://127.0.0.1:$(gateway_port 0 2)")
fi

# use_cached_codes TAG: redeems a handful of codes once, for the cached
# scenario to replay. Right before it: the code cache is an LRU of 10000
# entries, which the login scenario churns through.
use_cached_codes() {
	local codes=() i
	for i in $(seq 8); do
		codes+=("cached$1-$i.1")
		login "cached$1-$i.1" >/dev/null
	done
	BENCH_CODES=$(IFS=,; echo "${codes[*]}")
	export BENCH_CODES
}

url_of() {
	case $1 in
	plain | plainauth | plainsource) echo "http://127.0.0.1:$BENCH_PLAIN_PORT/game/state" ;;
	strip) echo "http://127.0.0.1:$BENCH_STRIP_PORT/game/state" ;;
	session) echo "$GAME/game/state" ;;
	memfleet-session) echo "http://127.0.0.1:$(gateway_port 0 1)/game/state" ;;
	redisfleet-session) echo "http://127.0.0.1:$(gateway_port 0 2)/game/state" ;;
	memfleet-login) echo "http://127.0.0.1:$(gateway_port 0 1)/wx/login" ;;
	redisfleet-login) echo "http://127.0.0.1:$(gateway_port 0 2)/wx/login" ;;
	*) echo "$GAME/wx/login" ;;
	esac
}

# The fleet scenarios run one wrk thread per gateway, with as many
# connections in all as the others (rounded down to a multiple of 3).
FLEET_CONNS=$((CONNS / 3 * 3))

# run_wrk SCENARIO TAG DURATION OUTFILE
run_wrk() {
	local threads=$THREADS conns=$CONNS script_scenario=$1 ports=""
	case $1 in
	cached) [ "${CODES_REDEEMED:-0}" = 1 ] || use_cached_codes "$2" ;;
	memfleet-* | redisfleet-*)
		threads=3 conns=$FLEET_CONNS script_scenario=fleet${1#*-}
		local site=1
		[ "${1%%-*}" = redisfleet ] && site=2
		ports="$(gateway_port 0 $site),$(gateway_port 1 $site),$(gateway_port 2 $site)"
		;;
	esac
	# The tag names the scenario too: codes are never reused across scenarios.
	BENCH_SCENARIO=$script_scenario BENCH_TAG=$1$2 BENCH_TOKEN=${TOKEN[$1]:-} BENCH_FLEET_PORTS=$ports \
		wrk -t"$threads" -c"$conns" -d"$3" --latency -s bench/scenario.lua "$(url_of "$1")" >"$4" 2>&1
}

if [ "$WARMUP" != 0 ]; then
	echo "== warm-up ($WARMUP per scenario)"
	for s in "${SCENARIOS[@]}"; do
		run_wrk "$s" w "$WARMUP" "$OUT/wrk-warmup-$s.txt"
	done
fi

TICK_US=$((1000000 / $(getconf CLK_TCK)))

# caddy_cpu SCENARIO: CPU time (µs) used so far by the Caddy processes that
# serve SCENARIO: the gateways for the fleet, else the one.
caddy_cpu() {
	case $1 in
	memfleet-* | redisfleet-*) pid_cpu "${GATEWAY_PIDS[@]}" ;;
	*) pid_cpu "$CADDY_PID" ;;
	esac
}

# pid_cpu PID...: CPU time (user + system, µs) the processes have used.
pid_cpu() {
	local pid ticks=0
	for pid in "$@"; do
		# Fields 14 and 15 of stat, counted after the command name's ")";
		# 0 for a process that has gone.
		ticks=$((ticks + $(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ n = $12 + $13 } END { print n + 0 }')))
	done
	echo $((ticks * TICK_US))
}

# machine_cpu: CPU time (µs) the whole machine has been busy: user, nice,
# system, irq, softirq, steal.
machine_cpu() {
	awk -v tick="$TICK_US" '$1 == "cpu" { printf "%.0f\n", ($2 + $3 + $4 + $7 + $8 + $9) * tick }' /proc/stat
}

# children_cpu: CPU time (µs) of the processes this shell has waited for
# (wrk, above all), from the builtin times.
children_cpu() {
	times | tail -1 | awk '{ n = 0; for (i = 1; i <= 2; i++) { split($i, t, "m"); n += t[1] * 60 + t[2] } printf "%.0f\n", n * 1e6 }'
}

# redis_counters: the fleet's Redis operations and failed ones so far.
redis_counters() {
	if [ "$FLEET" = 0 ]; then
		echo 0 0
		return
	fi
	echo "$(fleet_metric caddy_wechat_login_store_duration_seconds_count) $(fleet_metric caddy_wechat_login_store_errors_total)"
}

echo "== $ROUNDS rounds of wrk -t$THREADS -c$CONNS -d$DURATION (fleet: -t3 -c$FLEET_CONNS)"
for round in $(seq "$ROUNDS"); do
	order=("${SCENARIOS[@]}")
	if ((round % 2 == 0)); then
		order=()
		for ((i = ${#SCENARIOS[@]} - 1; i >= 0; i--)); do order+=("${SCENARIOS[i]}"); done
	fi
	for s in "${order[@]}"; do
		file=$OUT/wrk-round$round-$s.txt
		read -r ops_before errors_before < <(redis_counters)
		cpu_before=$(caddy_cpu "$s")
		ours_before=$(($(pid_cpu "${PIDS[@]}") + $(children_cpu)))
		machine_before=$(machine_cpu)
		start_us=$(date +%s%6N)
		run_wrk "$s" "$round" "$DURATION" "$file"
		elapsed_us=$(($(date +%s%6N) - start_us))
		machine_after=$(machine_cpu)
		ours_after=$(($(pid_cpu "${PIDS[@]}") + $(children_cpu)))
		cpu_after=$(caddy_cpu "$s")
		read -r ops_after errors_after < <(redis_counters)
		result=$(grep '^RESULT ' "$file" || true)
		if [ -z "$result" ]; then
			echo "wrk printed no result for $s; see $file" >&2
			exit 1
		fi
		# RESULT requests= rps= p50_us= p99_us= non2xx= bad= socket_errors=
		read -r requests rps p50 p99 non2xx bad sockerr < <(sed 's/[a-z0-9_]*=//g' <<<"${result#RESULT }")
		# Redis operations per request, and failed ones (then some logins
		# were served from memory: flagged).
		ops=$(awk -v n=$((ops_after - ops_before)) -v r="$requests" 'BEGIN { printf "%.2f", (r > 0 ? n / r : 0) }')
		# Caddy's CPU per request: the module's cost without the co-hosted
		# processes (wrk, backend, simulator, Redis).
		cpu=$(awk -v n=$((cpu_after - cpu_before)) -v r="$requests" 'BEGIN { printf "%.1f", (r > 0 ? n / r : 0) }')
		# The share of the machine that went to anything but the
		# benchmark's processes during the run: other users, the kernel's
		# own threads. High means a noisy round.
		others=$(awk -v n=$((machine_after - machine_before - (ours_after - ours_before))) -v t="$elapsed_us" -v cpus="$(nproc)" \
			'BEGIN { printf "%.0f", (n > 0 ? 100 * n / (t * cpus) : 0) }')
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$s" "$rps" "$p50" "$p99" "$non2xx" "$bad" "$sockerr" \
			"$((errors_after - errors_before))" "$ops" "$cpu" "$others" >>"$OUT/results.tsv"
		awk -F'\t' '{ printf "   round %s  %-18s %9.0f req/s  p50 %6.2f ms  p99 %6.2f ms  Caddy CPU %6.1f µs/req  others %3s%%  non-2xx %s  bad %s  socket errors %s  Redis ops/req %s  Redis errors %s\n", $1, $2, $3, $4 / 1000, $5 / 1000, $11, $12, $6, $7, $8, $10, $9 }' \
			<<<"$(tail -1 "$OUT/results.tsv")"
	done
done

# --- the table ---------------------------------------------------------------

median() {
	sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# column SCENARIO N: the Nth column of results.tsv for SCENARIO, one per round.
column() {
	awk -F'\t' -v s="$1" -v c="$2" '$2 == s { print $c }' "$OUT/results.tsv"
}

# ratios SCENARIO [BASE]: its req/s over BASE's (its own base, or plain),
# round by round.
ratios() {
	awk -F'\t' -v s="$1" -v base="${2:-${BASE[$1]:-plain}}" '{ rps[$1 FS $2] = $3 } END {
		for (r = 1; (r FS base) in rps; r++) if ((r FS s) in rps) print rps[r FS s] / rps[r FS base] }' "$OUT/results.tsv"
}

# cpu_ratios A B: A's Caddy CPU per request over B's, round by round.
cpu_ratios() {
	awk -F'\t' -v a="$1" -v b="$2" '{ cpu[$1 FS $2] = $11 } END {
		for (r = 1; (r FS a) in cpu; r++) if ((r FS b) in cpu && cpu[r FS b] > 0) print cpu[r FS a] / cpu[r FS b] }' "$OUT/results.tsv"
}

# per_round: the ratios on one line.
per_round() {
	awk '{ printf "%s%.2f", (NR > 1 ? " " : ""), $1 }'
}

MISSED=()
{
	echo "| scenario | req/s | p50 ms | p99 ms | ratio | of | per round | goal | met | Caddy CPU µs/req | others' CPU | non-2xx | bad answers | socket errors | Redis ops/req | Redis errors |"
	echo "|---|--:|--:|--:|--:|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|"
	for s in "${SCENARIOS[@]}"; do
		rps=$(column "$s" 3 | median)
		p50=$(column "$s" 4 | median)
		p99=$(column "$s" 5 | median)
		ratio=$(ratios "$s" | median)
		per_round=$(ratios "$s" | per_round)
		non2xx=$(column "$s" 6 | awk '{ n += $1 } END { print n + 0 }')
		bad=$(column "$s" 7 | awk '{ n += $1 } END { print n + 0 }')
		sockerr=$(column "$s" 8 | awk '{ n += $1 } END { print n + 0 }')
		storeerr=$(column "$s" 9 | awk '{ n += $1 } END { print n + 0 }')
		ops=$(column "$s" 10 | median)
		cpu=$(column "$s" 11 | median)
		others=$(column "$s" 12 | median)
		goal=${GOAL[$s]:-}
		met="—"
		if [ -n "$goal" ]; then
			if awk -v r="$ratio" -v g="$goal" 'BEGIN { exit !(r >= g) }'; then
				met=yes
			else
				met=NO
				MISSED+=("$s")
			fi
		fi
		if [ $((non2xx + bad + sockerr + storeerr)) -gt 0 ]; then
			met="$met, FLAGGED: errors"
		fi
		base=${BASE[$s]:-plain}
		awk -v t="${TITLE[$s]}" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v ratio="$ratio" -v of="(${NUMBER[$base]})" -v pr="$per_round" \
			-v goal="${goal:+≥ $goal}" -v met="$met" -v n="$non2xx" -v b="$bad" -v e="$sockerr" -v ops="$ops" -v se="$storeerr" -v cpu="$cpu" -v others="$others" \
			'BEGIN { printf "| %s | %.0f | %.2f | %.2f | %.2f | %s | %s | %s | %s | %.1f | %d%% | %d | %d | %d | %.2f | %d |\n", t, rps, p50 / 1000, p99 / 1000, ratio, of, pr, (goal == "" ? "—" : goal), met, cpu, others, n, b, e, ops, se }'
	done
	echo
	printf '3 over 1b (the same request bytes through plain reverse_proxy): %.2f (per round: %s)\n' \
		"$(ratios session plainauth | median)" "$(ratios session plainauth | per_round)"
	if [ "$FLEET" != 0 ]; then
		echo
		printf "The gateways' CPU per login, 6 over 7 (what a gateway whose Redis runs elsewhere could serve, relative): %.2f (per round: %s)\n" \
			"$(cpu_ratios memfleet-login redisfleet-login | median)" "$(cpu_ratios memfleet-login redisfleet-login | per_round)"
	fi
} >"$OUT/table.md"

# --- profiles ----------------------------------------------------------------

# profile SCENARIO: a 10 s CPU profile of Caddy (of gateway 0 in the fleet)
# while wrk drives SCENARIO.
profile() {
	local s=$1 wrk_pid admin=$ADMIN
	case $s in memfleet-* | redisfleet-*) admin=$FLEET_ADMIN ;; esac
	run_wrk "$s" prof 13s "$OUT/wrk-profile-$s.txt" &
	wrk_pid=$!
	PIDS+=("$wrk_pid")
	sleep 1
	curl -s -o "$OUT/profile-$s.pprof" "$admin/debug/pprof/profile?seconds=10"
	wait "$wrk_pid"
	go tool pprof -top -nodecount=30 "$OUT/caddy" "$OUT/profile-$s.pprof" >"$OUT/profile-$s-top.txt" 2>&1
	# The module's own functions, by cumulative share.
	go tool pprof -top -cum -nodecount=1000 "$OUT/caddy" "$OUT/profile-$s.pprof" 2>/dev/null |
		grep -E 'Total|caddy-wechat-login' | awk 'NR <= 25' >"$OUT/profile-$s-module.txt"
}

case $PROFILE in
all) PROFILED=("${SCENARIOS[@]}") ;;
auto) PROFILED=("${MISSED[@]}") ;;
*) PROFILED=() ;;
esac
if [ "${#PROFILED[@]}" -gt 0 ]; then
	echo "== CPU profiles of Caddy (10 s each): ${PROFILED[*]}"
	for s in "${PROFILED[@]}"; do
		profile "$s"
		echo "-- $s: module functions by cumulative share ($OUT/profile-$s-module.txt)"
		cat "$OUT/profile-$s-module.txt"
	done
fi

# --- instructions ----------------------------------------------------------------

# Throughput on a shared machine moves by several percent from one round to
# the next, by up to ±10%; the instructions Caddy executes per request
# move by a few percent at most (garbage collection lands where it will), so
# they tell the module's own cost apart from the machine's noise. A count, not a speed: valgrind runs Caddy some 50 times
# slower, on one thread at a time (so Caddy gets GOMAXPROCS=1 here), and
# without SHA instructions (HMAC-SHA256 counts about 4 times what it costs
# natively); the kernel's work (the syscalls) and the other processes (wrk,
# the backend, the simulator) are not counted. So plain's count over a
# scenario's is not the throughput ratio: the module's share of the whole
# machine is smaller than its share of Caddy's instructions.

# callgrind ACTION...: sends ACTION to the counted Caddy, failing clearly if
# valgrind's gdb server does not answer (ptrace restricted, say).
callgrind() {
	if ! timeout 60 callgrind_control "$@" "$CADDY_PID" >/dev/null; then
		echo "callgrind_control $* got no answer from Caddy under valgrind" >&2
		exit 1
	fi
}

# start_caddy_counted: Caddy under callgrind, counting only when told.
# valgrind 3.19 does not know RDTSCP, which Go's runtime uses for its clock
# where the processor has it: cpu.rdtscp=off makes it use RDTSC.
start_caddy_counted() {
	start caddy-callgrind env GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off GOMAXPROCS=1 valgrind --tool=callgrind --instr-atstart=no \
		--separate-threads=no --callgrind-out-file="$PWD/$OUT/callgrind.out.%p" \
		"$OUT/caddy" run --config bench/Caddyfile --adapter caddyfile
	CADDY_PID=$LAST_PID
	for _ in $(seq 600); do
		curl -s -o /dev/null "http://127.0.0.1:$BENCH_PLAIN_PORT/" && return
		sleep 0.1
	done
	echo "Caddy under callgrind does not answer; see $OUT/caddy-callgrind.log" >&2
	exit 1
}

# count SCENARIO REPEAT: Caddy's instructions per request while wrk drives
# SCENARIO for 5 s (after 2 s uncounted), appended to instructions.tsv.
count() {
	local s=$1 file=$OUT/wrk-instructions$2-$1.txt result requests non2xx bad sockerr ir
	(THREADS=1 CONNS=4 run_wrk "$s" "i$2w" 2s /dev/null)
	if [ "$s" = cached ]; then
		# Their first logins (WeChat calls) are not the scenario's.
		use_cached_codes "i$2"
	fi
	callgrind -z
	callgrind -i on
	(THREADS=1 CONNS=4 CODES_REDEEMED=1 run_wrk "$s" "i$2" 5s "$file")
	callgrind -i off
	rm -f "$OUT"/callgrind.out.*
	callgrind -d
	# Kept for callgrind_annotate (per-function counts) and bench/nogc.sh.
	cat "$OUT"/callgrind.out.* >"$OUT/callgrind-$2-$1.out"
	result=$(grep '^RESULT ' "$file" || true)
	read -r requests _ _ _ non2xx bad sockerr < <(sed 's/[a-z0-9_]*=//g' <<<"${result#RESULT }")
	if [ -z "$result" ] || [ "$requests" = 0 ] || [ $((non2xx + bad + sockerr)) != 0 ]; then
		echo "the counted run of $s failed (non-2xx $non2xx, bad $bad, socket errors $sockerr); see $file" >&2
		exit 1
	fi
	ir=$(cat "$OUT"/callgrind.out.* | awk '$1 == "summary:" || $1 == "totals:" { print $2 }' | sort -n | tail -1)
	# Without the garbage collector's: which 5-s window a collection lands
	# in is chance, and its length follows the live heap, not the request.
	ir_nogc=$(bash bench/nogc.sh "$OUT/callgrind-$2-$1.out" | cut -f4)
	printf '%s\t%s\t%s\t%s\n' "$2" "$s" $((ir / requests)) $((ir_nogc / requests)) >>"$OUT/instructions.tsv"
	printf '   repeat %s  %-10s %8d instructions/request, %8d without the collector (%d requests)\n' "$2" "$s" $((ir / requests)) $((ir_nogc / requests)) "$requests"
}

COUNTED=()
if [ "$INSTRUCTIONS" != 0 ]; then
	for s in "${SCENARIOS[@]}"; do
		[[ $s == *fleet-* ]] || COUNTED+=("$s")
	done
fi
if [ "${#COUNTED[@]}" -gt 0 ]; then
	echo "== instructions per request, under callgrind: ${COUNTED[*]}"
	stop_caddy
	start_caddy_counted
	for repeat in 1 2; do
		for s in "${COUNTED[@]}"; do
			count "$s" "$repeat"
		done
	done
	stop_caddy
	rm -f "$OUT"/callgrind.out.*
	start_caddy
	# Each scenario's count (the mean of the repeats), and plain's and 1b's
	# over it.
	{
		echo "| scenario | instructions/request | plain's over it | 1b's over it | per repeat | without the collector | plain's over it | 1b's over it | per repeat |"
		echo "|---|--:|--:|--:|---|--:|--:|--:|---|"
		for s in "${COUNTED[@]}"; do
			awk -F'\t' -v s="$s" -v title="${TITLE[$s]}" '
				{
					sum[$2] += $3; nogc[$2] += $4; n[$2]++
					if ($2 == s) {
						each = each sprintf("%s%d", (n[$2] > 1 ? " " : ""), $3)
						each_nogc = each_nogc sprintf("%s%d", (n[$2] > 1 ? " " : ""), $4)
					}
				}
				function over(v, base) { return (base in n) ? sprintf("%.3f", v[base] / n[base] / (v[s] / n[s])) : "—" }
				END {
					printf "| %s | %d | %s | %s | %s | %d | %s | %s | %s |\n", title, sum[s] / n[s], over(sum, "plain"), over(sum, "plainauth"), each,
						nogc[s] / n[s], over(nogc, "plain"), over(nogc, "plainauth"), each_nogc
				}' "$OUT/instructions.tsv"
		done
	} >"$OUT/instructions.md"
fi

# --- memory --------------------------------------------------------------------

# sample PLAYERS: Caddy's resident memory and, after a forced GC, its heap in use.
sample() {
	local rss hwm heap
	rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$CADDY_PID/status")
	hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$CADDY_PID/status")
	heap=$(curl -s "$ADMIN/debug/pprof/heap?gc=1&debug=1" | awk '$2 == "HeapInuse" { print $4 }')
	if [ -z "$heap" ]; then
		echo "no heap statistics from $ADMIN/debug/pprof/heap" >&2
		exit 1
	fi
	printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$rss" "$hwm" "$heap" "$2" >>"$OUT/memory.tsv"
	awk -F'\t' '{ printf "   %8d players  VmRSS %6.1f MiB  VmHWM %6.1f MiB  heap in use %6.1f MiB  %s\n", $1, $2 / 1024, $3 / 1024, $4 / 1048576, $5 }' \
		<<<"$(tail -1 "$OUT/memory.tsv")"
}

MEMORY_FAILED=0
if [ "$PLAYERS" -gt 0 ]; then
	echo "== memory: $PLAYERS distinct players log in (fresh Caddy, $CONNS connections)"
	stop_caddy
	start_caddy
	sample 0 "(idle)"
	from=0
	for to in $((PLAYERS / 10)) $((PLAYERS / 2)) "$PLAYERS"; do
		driven=$("$OUT/logindriver" -url "$GAME/wx/login" -prefix mem -from "$from" -to "$to" -conns "$CONNS" 2>>"$OUT/logindriver.log" | tee -a "$OUT/logindriver.log")
		failed=$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' <<<"$driven")
		rate=$(sed -n 's/.* rate=\([0-9]*\).*/\1/p' <<<"$driven")
		MEMORY_FAILED=$((MEMORY_FAILED + ${failed:-1}))
		sample "$to" "${rate:-?} logins/s, ${failed:-?} failed"
		from=$to
	done
fi

# --- report --------------------------------------------------------------------

{
	echo "## Machine"
	echo
	echo '```'
	cat "$OUT/machine.txt"
	echo '```'
	echo
	echo "## Throughput (wrk -t$THREADS -c$CONNS -d$DURATION, medians of $ROUNDS alternating rounds)"
	echo
	if [ "$FLEET" != 0 ]; then
		echo "6-9: three Caddy processes, one wrk thread each (wrk -t3 -c$FLEET_CONNS), one redis-server."
		echo
	fi
	cat "$OUT/table.md"
	if [ -s "$OUT/instructions.md" ]; then
		echo
		echo "## Caddy's instructions per request (callgrind, wrk -t1 -c4 -d5s, two repeats)"
		echo
		echo "Caddy's own instructions only (not the kernel's, wrk's or the backend's), under valgrind"
		echo "(HMAC-SHA256 without SHA instructions): a cost that noise does not move, not a throughput."
		echo
		cat "$OUT/instructions.md"
	fi
	if [ -s "$OUT/memory.tsv" ]; then
		echo
		echo "## Caddy's memory as distinct players log in (budget_size 100000, cache_size 10000)"
		echo
		echo "| players | VmRSS MiB | VmHWM MiB | Go heap in use after GC, MiB | login run |"
		echo "|--:|--:|--:|--:|---|"
		awk -F'\t' '{ printf "| %d | %.1f | %.1f | %.1f | %s |\n", $1, $2 / 1024, $3 / 1024, $4 / 1048576, $5 }' "$OUT/memory.tsv"
	fi
	echo
	echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
	if [ "$FLEET" != 0 ]; then
		echo "Fleet gateways serving from memory because Redis failed, at the end: $(fleet_metric caddy_wechat_login_store_fallback) of 3."
	fi
	if [ "${#MISSED[@]}" -eq 0 ]; then
		echo "All throughput goals met."
	else
		echo "Goals missed: ${MISSED[*]}."
	fi
	if [ "$MEMORY_FAILED" -gt 0 ]; then
		echo "FLAGGED: $MEMORY_FAILED logins of the memory run failed (see $OUT/logindriver.log)."
	fi
} >"$OUT/results.md"

echo
cat "$OUT/results.md"
echo
echo "raw wrk outputs, profiles and logs: $OUT/"
