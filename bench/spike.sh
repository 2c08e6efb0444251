#!/usr/bin/env bash
# The launch spike: fresh-code logins arriving evenly over one second (an
# open loop: players do not wait for each other), WeChat (the simulator)
# taking 300 ms a call, one code in ten sent to two gateways at once.
# Scenarios, each with its own codes:
#   memory   one gateway on its own memory (gateway 0's memory site)
#   fleet    three gateways sharing one Redis
#   frozen   the same, Redis frozen (SIGSTOP) for 0.5 s from 0.3 s in
# For each: logins failed (codes sent once / sent twice), latency p50/p99,
# WeChat calls beyond one per code, and the gateways' Redis fallbacks and
# saturated operations. Uses bench/fleet.Caddyfile's three gateways.
#
#   bash bench/spike.sh              # SPIKE_RATES="1500 3000" by default
#   SPIKE_RATES=3000 bash bench/spike.sh
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=bench/out/spike
RATES=${SPIKE_RATES:-1500 3000}
PORT_BASE=${BENCH_PORT_BASE:-18600}
export BENCH_BACKEND_PORT=$((PORT_BASE + 11)) BENCH_SIM_PORT=$((PORT_BASE + 12)) BENCH_REDIS_PORT=$((PORT_BASE + 13))
export BENCH_FLEET_MEMORY_APPID=wxbench0fleetmem BENCH_FLEET_REDIS_APPID=wxbench0fleetred
export BENCH_APP_SECRET=bench-app-secret-0123456789
export BENCH_SESSION_SECRET=bench-session-secret-0123456789abcdef
export XDG_CONFIG_HOME=$PWD/$OUT/home XDG_DATA_HOME=$PWD/$OUT/home
gateway_port() { echo $((PORT_BASE + 20 + 3 * $1 + $2)); }
mkdir -p "$OUT"

# shellcheck source=bench/lib.sh
source bench/lib.sh

go build -o "$OUT/caddy" ./cmd/caddy
go build -o "$OUT/wechatsim" ./cmd/wechatsim
go build -o "$OUT/gamebackend" ./cmd/gamebackend
go build -o "$OUT/logindriver" ./bench/logindriver
start gamebackend "$OUT/gamebackend" -listen "127.0.0.1:$BENCH_BACKEND_PORT"
start wechatsim "$OUT/wechatsim" -listen "127.0.0.1:$BENCH_SIM_PORT" -latency 300ms \
	-app "$BENCH_FLEET_MEMORY_APPID:$BENCH_APP_SECRET" -app "$BENCH_FLEET_REDIS_APPID:$BENCH_APP_SECRET"
start redis redis-server --port "$BENCH_REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no
REDIS_PID=$LAST_PID
wait_up "http://127.0.0.1:$BENCH_BACKEND_PORT/"
for i in 0 1 2; do
	start "gateway$i" env BENCH_GW_ADMIN_PORT="$(gateway_port "$i" 0)" \
		BENCH_GW_MEMORY_PORT="$(gateway_port "$i" 1)" BENCH_GW_REDIS_PORT="$(gateway_port "$i" 2)" \
		"$OUT/caddy" run --config bench/fleet.Caddyfile --adapter caddyfile
	wait_up "http://127.0.0.1:$(gateway_port "$i" 0)/config/"
	wait_up "http://127.0.0.1:$(gateway_port "$i" 2)/"
done

site_urls() { # SITE: the login URLs of the gateways for a scenario
	local i urls=""
	for i in 0 1 2; do urls+="${urls:+,}http://127.0.0.1:$(gateway_port "$i" "$1")/wx/login"; done
	echo "$urls"
}

echo "| logins in 1 s | scenario | codes sent once failed | codes sent twice failed | p50 ms | p99 ms | WeChat calls beyond one per code | Redis errors | saturated operations | sent in s |"
echo "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|"
n=0
for rate in $RATES; do
	for scenario in memory fleet frozen; do
		n=$((n + 1))
		case $scenario in
		memory) urls="http://127.0.0.1:$(gateway_port 0 1)/wx/login" ;;
		*) urls=$(site_urls 2) ;;
		esac
		calls=$(fleet_metric caddy_wechat_login_exchange_duration_seconds_count)
		falls=$(fleet_metric caddy_wechat_login_store_errors_total)
		sat=$(fleet_metric caddy_wechat_login_store_saturated_total)
		freeze=""
		if [ "$scenario" = frozen ]; then
			(sleep 0.3 && kill -STOP "$REDIS_PID" && sleep 0.5 && kill -CONT "$REDIS_PID") &
			freeze=$!
		fi
		line=$("$OUT/logindriver" -url "$urls" -prefix "s${n}x" -from 0 -to "$rate" -rate "$rate" 2>>"$OUT/logindriver.log")
		[ -z "$freeze" ] || wait "$freeze"
		sleep 2.5 # the gateways' prober finds Redis again
		calls=$(($(fleet_metric caddy_wechat_login_exchange_duration_seconds_count) - calls))
		falls=$(($(fleet_metric caddy_wechat_login_store_errors_total) - falls))
		sat=$(($(fleet_metric caddy_wechat_login_store_saturated_total) - sat))
		field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
		echo "| $rate | $scenario | $(field failed_once) | $(field failed_twice) | $(field p50_ms) | $(field p99_ms) | $((calls - rate)) | $falls | $sat | $(field seconds) |"
	done
done
