# The benchmark scripts' processes and metrics (sourced by run.sh and
# spike.sh, after they set OUT, and gateway_port for fleet_metric).

PIDS=()
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background, logging to bench/out/NAME.log.
start() {
	local name=$1
	shift
	"$@" >"$OUT/$name.log" 2>&1 &
	PIDS+=($!)
	LAST_PID=$!
}

# wait_up URL: waits until something answers at URL.
wait_up() {
	for _ in $(seq 100); do
		if curl -s -o /dev/null "$1"; then
			return
		fi
		sleep 0.1
	done
	echo "nothing answers at $1; see $OUT/*.log" >&2
	exit 1
}

# metric_sum ADMIN_PORT NAME: the sum of a Prometheus metric's samples at a
# Caddy's admin endpoint (0 when absent).
metric_sum() {
	curl -s "http://127.0.0.1:$1/metrics" | awk -v name="$2" '$1 == name || index($1, name "{") == 1 { n += $2 } END { printf "%.0f\n", n }'
}

# fleet_metric NAME: metric_sum over the three gateways.
fleet_metric() {
	local i n=0
	for i in 0 1 2; do
		n=$((n + $(metric_sum "$(gateway_port "$i" 0)" "$1")))
	done
	echo "$n"
}
