#!/usr/bin/env bash
# HTTP/1.1 proxy benchmark: sidecar vs a direct call, Go's httputil.ReverseProxy
# (plain and with a sync.Pool BufferPool), HAProxy and nginx, all in one run on
# loopback. See bench/README.md for what the numbers mean.
#
#   bench/http1.sh                              # full run: 3 rounds of 10 s
#   ROUNDS=1 DURATION=3s bench/http1.sh         # quick run
#
# Knobs (environment):
#   ROUNDS=3        rounds; every target is measured once per round, targets
#                   interleaved, and the table shows medians over rounds
#   DURATION=10s    wrk duration per round (wrk -t1 -c$CONNS -d$DURATION)
#   RATE=2000       fixed request rate of the latency run
#   LAT_DURATION    duration of the latency run (default: $DURATION)
#   WARMUP=2s       unrecorded wrk run before each measurement (0 to skip)
#   CONNS=64        wrk keep-alive connections
#   LAT_CONNS=16    latency-run keep-alive connections
#   SIZE=64         upstream response body size in bytes
#   TARGETS="direct goproxy goproxy-pool sidecar haproxy nginx"; also
#                   sidecar-nometrics (telemetry off) and sidecar-traced
#                   (metrics + every request traced to bench/otlpsink)
#   LOAD_CPU=0      core for wrk, the latency generator and the upstream
#   PROXY_CPU=1     core for the proxy under test (alone)
#   PORT_BASE=18000 ports used: PORT_BASE+80 upstream, +1..+7 proxies,
#                   +85 OTLP sink, +1901 sidecar admin
#   OUT=FILE        also write the markdown report to FILE
#   KEEP_TMP=1      keep the temp dir (binaries, rendered configs, logs)
#   WAIT_QUIET=30   before each measurement wait up to this many seconds for
#                   the machine to be quiet (<10% of a core busy); 0: never
#
# Only 127.0.0.1 is ever contacted. Every process this script starts is killed
# on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
RATE=${RATE:-2000}
LAT_DURATION=${LAT_DURATION:-$DURATION}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-64}
LAT_CONNS=${LAT_CONNS:-16}
SIZE=${SIZE:-64}
TARGETS=${TARGETS:-"direct goproxy goproxy-pool sidecar haproxy nginx"}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
PORT_BASE=${PORT_BASE:-18000}
OUT=${OUT:-}
KEEP_TMP=${KEEP_TMP:-0}
WAIT_QUIET=${WAIT_QUIET:-30}

export PATH="$PATH:/usr/sbin:/sbin"
HOST=127.0.0.1
UP_PORT=$((PORT_BASE + 80))
ADMIN_PORT=$((PORT_BASE + 1901))
SINK_PORT=$((PORT_BASE + 85))

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
COMMAND="ROUNDS=$ROUNDS DURATION=$DURATION RATE=$RATE LAT_DURATION=$LAT_DURATION WARMUP=$WARMUP CONNS=$CONNS LAT_CONNS=$LAT_CONNS SIZE=$SIZE WAIT_QUIET=$WAIT_QUIET bench/http1.sh"

LOG_TAG=http1
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$BENCH_DIR/lib.sh"

target_port() {
	case $1 in
	direct) echo "$UP_PORT" ;;
	sidecar) echo $((PORT_BASE + 1)) ;;
	goproxy) echo $((PORT_BASE + 2)) ;;
	goproxy-pool) echo $((PORT_BASE + 3)) ;;
	haproxy) echo $((PORT_BASE + 4)) ;;
	nginx) echo $((PORT_BASE + 5)) ;;
	sidecar-nometrics) echo $((PORT_BASE + 6)) ;;
	sidecar-traced) echo $((PORT_BASE + 7)) ;;
	*) die "unknown target $1" ;;
	esac
}

# ---------------------------------------------------------------- tools
ensure_tools() {
	ensure_packages wrk:wrk haproxy:haproxy nginx:nginx curl:curl taskset:util-linux
}

# Process handling (start, stop, traps), /proc readers and medians: lib.sh.

render() { # render TEMPLATE OUT NAME PORT
	sed -e "s|@LISTEN@|$HOST:$4|g" -e "s|@UPSTREAM@|$HOST:$UP_PORT|g" \
		-e "s|@ADMIN@|$HOST:$ADMIN_PORT|g" -e "s|@PREFIX@|$TMP/$3|g" "$1" >"$2"
}

# target_cmd NAME PORT: print the command that starts NAME (one line).
target_cmd() {
	local name=$1 port=$2 env
	case $name in
	goproxy) echo "$TMP/bin/goproxy -addr $HOST:$port -upstream http://$HOST:$UP_PORT" ;;
	goproxy-pool) echo "$TMP/bin/goproxy -addr $HOST:$port -upstream http://$HOST:$UP_PORT -pool" ;;
	sidecar | sidecar-nometrics | sidecar-traced)
		env=$(sidecar_env "$name")
		echo "${env:+$env }$TMP/bin/sidecar run -config $TMP/$name.yaml" ;;
	haproxy) echo "haproxy -db -f $TMP/haproxy.cfg" ;;
	nginx) echo "nginx -p $TMP/nginx/ -c $TMP/nginx.conf -e stderr" ;;
	esac
}

# check_spans NAME ROUND SERVED: after a traced round (the sidecar stopped,
# so its last batch is flushed) the sink's span count must have grown;
# records spans / (2 x requests served): a SERVER and a CLIENT span each.
check_spans() {
	local name=$1 round=$2 served=$3 now
	now=$(sink_spans)
	if [ -z "$now" ] || [ "$now" -le "$SPANS" ]; then
		echo "$name round $round: the OTLP sink's span count did not grow (${SPANS} before, ${now:-no answer} after)" >>"$TMP/res/notes"
		echo "$name" >>"$TMP/res/bad"
		return 0
	fi
	echo "$name round $round: $((now - SPANS)) spans for ${served:-?} requests served" >>"$TMP/log/spans.log"
	awk -v n="$((now - SPANS))" -v r="${served:-0}" 'BEGIN {if (r > 0) printf "%.3f\n", n/(2*r)}' >>"$TMP/res/$name.spanratio"
	SPANS=$now
}

# measure NAME ROUND
measure() {
	local name=$1 round=$2 port url pid="" ready out
	wait_quiet
	port=$(target_port "$name")
	url="http://$HOST:$port/"
	if [ "$name" != direct ]; then
		port_free "$port" || die "port $port (for $name) is already in use"
		# shellcheck disable=SC2046
		start "$name" "$PROXY_CPU" $(target_cmd "$name" "$port")
		pid=$STARTED
		ready=$url
		is_sidecar "$name" && ready="http://$HOST:$ADMIN_PORT/readyz"
		if ! wait_200 "$ready" "$pid" "$name" || ! wait_200 "$url" "$pid" "$name"; then
			stop "$pid"
			# A sidecar that does not come up is skipped, not fatal: the
			# baselines are still worth having.
			is_sidecar "$name" || die "$name did not start"
			echo "$name round $round: did not start or answer 200 (see log/$name.log); skipped" >>"$TMP/res/notes"
			echo "$name" >>"$TMP/res/bad"
			return 0
		fi
	fi
	local body
	body=$(curl -s --max-time 2 "$url" | wc -c)
	[ "$body" -eq "$SIZE" ] || die "$name: expected a $SIZE-byte body through $url, got $body bytes"

	if [ "$WARMUP" != 0 ] && [ "$WARMUP" != 0s ]; then
		taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$WARMUP" "$url" >/dev/null
	fi

	local t0=0 t1=0 lc0 lc1 pc0 pc1
	lc0=$(core_ticks "$LOAD_CPU")
	pc0=$(core_ticks "$PROXY_CPU")
	if [ -n "$pid" ]; then t0=$(cpu_ticks "$pid"); fi
	out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --timeout 5s "$url")
	if [ -n "$pid" ]; then t1=$(cpu_ticks "$pid"); fi
	lc1=$(core_ticks "$LOAD_CPU")
	pc1=$(core_ticks "$PROXY_CPU")
	# shellcheck disable=SC2086
	awk -v a="$lc0" -v b="$lc1" 'BEGIN {split(a, x, " "); split(b, y, " "); t = y[2]-x[2]; printf "%.0f\n", (t > 0 ? 100*(y[1]-x[1])/t : 0)}' >>"$TMP/res/$name.loadbusy"
	printf '== %s round %s ==\n%s\n' "$name" "$round" "$out" >>"$TMP/log/wrk.log"

	local reqs secs rps errs non2xx
	reqs=$(awk '/requests in/ {print $1; exit}' <<<"$out")
	secs=$(awk '/requests in/ {sub(/s,?$/, "", $4); print $4; exit}' <<<"$out")
	rps=$(awk '/^Requests\/sec:/ {print $2; exit}' <<<"$out")
	errs=$(awk '/Socket errors:/ {n=0; for (i=3;i<=NF;i++) {gsub(/,/,"",$i); if ($i ~ /^[0-9]+$/) n+=$i} print n; exit}' <<<"$out")
	non2xx=$(awk '/Non-2xx/ {print $NF; exit}' <<<"$out")
	if [ -z "$rps" ] || [ -z "$reqs" ]; then die "$name: could not parse wrk output: $out"; fi
	echo "$rps" >>"$TMP/res/$name.rps"
	if [ "${errs:-0}" != 0 ] || [ "${non2xx:-0}" != 0 ]; then
		echo "$name round $round: wrk socket errors ${errs:-0}, non-2xx ${non2xx:-0} (of $reqs)" >>"$TMP/res/notes"
		echo "$name" >>"$TMP/res/bad"
	fi
	if [ -n "$pid" ]; then
		awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.2f\n", t*1e6/hz/n}' >>"$TMP/res/$name.cpu"
		awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" -v s="$secs" 'BEGIN {printf "%.0f\n", 100*t/hz/s}' >>"$TMP/res/$name.busy"
	fi
	# CPU time on the proxy core not spent by the proxy: other processes on
	# the machine disturbing the measurement.
	local foreign
	foreign=$(awk -v a="$pc0" -v b="$pc1" -v p="$((t1 - t0))" -v s="$secs" -v hz="$CLK_TCK" \
		'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.0f", 100*((y[1]-x[1]) - p)/hz/s}')
	if [ "$foreign" -gt 10 ]; then
		echo "$name round $round: ${foreign}% of the proxy core went to other processes during wrk (machine not quiet)" >>"$TMP/res/notes"
	fi

	sleep 0.5
	local lg
	lg=$(taskset -c "$LOAD_CPU" "$TMP/bin/loadgen" -url "$url" -rate "$RATE" -duration "$LAT_DURATION" \
		-warmup 1s -conns "$LAT_CONNS")
	echo "$name round $round: $lg" >>"$TMP/log/loadgen.log"
	local p50 p99 lerr
	p50=$(sed -n 's/.*"p50_us":\([0-9.e+]*\).*/\1/p' <<<"$lg")
	p99=$(sed -n 's/.*"p99_us":\([0-9.e+]*\).*/\1/p' <<<"$lg")
	lerr=$(sed -n 's/.*"errors":\([0-9]*\).*/\1/p' <<<"$lg")
	if [ -z "$p50" ] || [ -z "$p99" ]; then die "$name: could not parse loadgen output: $lg"; fi
	echo "$p50" >>"$TMP/res/$name.p50"
	echo "$p99" >>"$TMP/res/$name.p99"
	if [ "${lerr:-0}" != 0 ]; then
		echo "$name round $round: latency run errors $lerr ($lg)" >>"$TMP/res/notes"
		echo "$name" >>"$TMP/res/bad"
	fi

	if [ -n "$pid" ]; then
		rss_mib "$pid" >>"$TMP/res/$name.rss"
		echo >>"$TMP/res/$name.rss"
		local served=""
		[ "$name" = sidecar-traced ] && served=$(served_requests)
		stop "$pid"
		[ "$name" = sidecar-traced ] && check_spans "$name" "$round" "$served"
	fi
	log "$name round $round: rps $rps, p50 ${p50}µs, p99 ${p99}µs"
}

# ---------------------------------------------------------------- main
ensure_tools
check_quiet_start

TMP=$(mktemp -d /tmp/sidecar-bench.XXXXXX)
mkdir -p "$TMP/bin" "$TMP/log" "$TMP/res" "$TMP/nginx"
: >"$TMP/res/notes"
: >"$TMP/res/bad"

log "building bench binaries into $TMP/bin"
(cd "$REPO" && go build -o "$TMP/bin/" ./bench/upstream ./bench/goproxy ./bench/loadgen ./bench/otlpsink)

SIDECAR_NOTE=""
RUN_TARGETS=()
for t in $TARGETS; do
	if is_sidecar "$t"; then
		[ -n "$SIDECAR_NOTE" ] && continue
		if [ ! -d "$REPO/cmd/sidecar" ]; then
			SIDECAR_NOTE="sidecar: not measured: ./cmd/sidecar does not exist yet"
			log "$SIDECAR_NOTE"
			continue
		fi
		if [ ! -x "$TMP/bin/sidecar" ] && ! (cd "$REPO" && go build -o "$TMP/bin/sidecar" ./cmd/sidecar) >"$TMP/log/sidecar-build.log" 2>&1; then
			SIDECAR_NOTE="sidecar: not measured: ./cmd/sidecar does not build: $(grep -v "^#" "$TMP/log/sidecar-build.log" | head -1 || true)"
			log "$SIDECAR_NOTE"
			continue
		fi
	fi
	target_port "$t" >/dev/null
	RUN_TARGETS+=("$t")
done
[ ${#RUN_TARGETS[@]} -gt 0 ] || die "no targets to run"

render "$BENCH_DIR/haproxy.cfg" "$TMP/haproxy.cfg" haproxy "$(target_port haproxy)"
render "$BENCH_DIR/nginx.conf" "$TMP/nginx.conf" nginx "$(target_port nginx)"
for t in sidecar sidecar-nometrics sidecar-traced; do
	render "$BENCH_DIR/sidecar.yaml" "$TMP/$t.yaml" "$t" "$(target_port "$t")"
	sidecar_telemetry "$t" >>"$TMP/$t.yaml"
done
mkdir -p "$TMP/nginx/logs"

port_free "$UP_PORT" || die "upstream port $UP_PORT is already in use"
start upstream "$LOAD_CPU" "$TMP/bin/upstream" -addr "$HOST:$UP_PORT" -size "$SIZE"
UP_PID=$STARTED
wait_200 "http://$HOST:$UP_PORT/" "$UP_PID" upstream || die "the upstream did not start"
SPANS=0
if [[ " ${RUN_TARGETS[*]} " == *" sidecar-traced "* ]]; then
	port_free "$SINK_PORT" || die "OTLP sink port $SINK_PORT is already in use"
	start otlpsink "$LOAD_CPU" "$TMP/bin/otlpsink" -addr "$HOST:$SINK_PORT"
	wait_200 "http://$HOST:$SINK_PORT/count" "$STARTED" otlpsink || die "the OTLP sink did not start"
	SPANS=$(sink_spans)
fi

for r in $(seq 1 "$ROUNDS"); do
	for t in "${RUN_TARGETS[@]}"; do
		measure "$t" "$r"
	done
done

# ---------------------------------------------------------------- report

REPORT="$TMP/report.md"
{
	echo "## HTTP/1.1 benchmark ($(date -u '+%Y-%m-%d %H:%M UTC'))"
	echo
	echo "- command: \`$COMMAND\`"
	dirty=""
	if [ -n "$(cd "$REPO" && git status --porcelain 2>/dev/null)" ]; then dirty=" (dirty tree)"; fi
	echo "- commit: $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo 'none')$dirty"
	echo "- machine: $(lscpu | grep 'Model name' | sed 's/  */ /g'), $(nproc) cores, kernel $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
	echo "- $(go version | cut -d' ' -f3-), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(nginx -v 2>&1 | cut -d: -f2- | sed 's/^ //')"
	echo "- background load before the run: ${BG_LOAD}% of one core"
	echo "- placement: proxy under test alone on core $PROXY_CPU; wrk, loadgen and the Go upstream ($SIZE B bodies) on core $LOAD_CPU"
	echo "- throughput: \`taskset -c $LOAD_CPU wrk -t1 -c$CONNS -d$DURATION --timeout 5s URL\` after a $WARMUP warm-up; $ROUNDS round(s), targets interleaved, medians"
	echo "- latency: \`taskset -c $LOAD_CPU loadgen -url URL -rate $RATE -duration $LAT_DURATION -warmup 1s -conns $LAT_CONNS\` (open loop, from scheduled send time)"
	echo "- targets, each started fresh per round as \`taskset -c $PROXY_CPU CMD\` (configs rendered from bench/*.cfg|conf|yaml):"
	for t in "${RUN_TARGETS[@]}"; do
		[ "$t" = direct ] && { echo "  - direct: wrk/loadgen straight to the upstream \`upstream -addr $HOST:$UP_PORT -size $SIZE\`"; continue; }
		echo "  - $t: \`$(target_cmd "$t" "$(target_port "$t")" | sed "s|$TMP|\$TMP|g")\`"
	done
	echo
	echo "| target | rps (median of $ROUNDS) | CPU µs/req | p50 µs | p99 µs | added p50 vs direct | added p99 vs direct | RSS MiB | proxy core busy % | load core busy % |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	D50=$(med direct p50)
	D99=$(med direct p99)
	for t in "${RUN_TARGETS[@]}"; do
		p50=$(med "$t" p50)
		p99=$(med "$t" p99)
		if [ "$t" = direct ]; then a50="—"; a99="—"; else
			a50=$(fmt "$(sub_ "$p50" "$D50")" '%+.0f')
			a99=$(fmt "$(sub_ "$p99" "$D99")" '%+.0f')
		fi
		mark=""
		grep -qx "$t" "$TMP/res/bad" && mark=" ⚠ errors"
		printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t$mark" \
			"$(fmt "$(med "$t" rps)" '%.0f')" "$(fmt "$(med "$t" cpu)" '%.1f')" \
			"$(fmt "$p50" '%.0f')" "$(fmt "$p99" '%.0f')" "$a50" "$a99" \
			"$(fmt "$(med "$t" rss)" '%.1f')" "$(fmt "$(med "$t" busy)" '%.0f')" \
			"$(fmt "$(med "$t" loadbusy)" '%.0f')"
	done
	echo
	if [ -s "$TMP/res/sidecar.rps" ]; then
		S=$(med sidecar rps)
		for b in goproxy goproxy-pool haproxy nginx; do
			if [ -s "$TMP/res/$b.rps" ]; then echo "- sidecar rps / $b rps = $(ratio "$S" "$(med "$b" rps)")"; fi
		done
		if grep -qx sidecar "$TMP/res/bad"; then
			echo "- bar: not assessable: the sidecar answered errors / non-2xx during the run (see Errors seen)"
		elif [ -s "$TMP/res/goproxy.rps" ]; then
			R=$(ratio "$S" "$(med goproxy rps)")
			A=$(sub_ "$(med sidecar p50)" "$D50")
			echo "- bar: sidecar rps >= goproxy rps: $(awk -v r="$R" 'BEGIN {print (r != "n/a" && r >= 1) ? "PASS" : "FAIL"}') ($R); added p50 < 150 µs: $(awk -v a="$A" 'BEGIN {print (a != "n/a" && a < 150) ? "PASS" : "FAIL"}') ($(fmt "$A" '%.0f') µs)"
		fi
	else
		if [ -z "$SIDECAR_NOTE" ]; then
			SIDECAR_NOTE="sidecar: not measured (not in TARGETS)"
			if grep -qx sidecar "$TMP/res/bad"; then SIDECAR_NOTE="sidecar: not measured: it did not start (see Errors seen)"; fi
		fi
		echo "- $SIDECAR_NOTE"
		for b in goproxy-pool haproxy nginx; do
			if [ -s "$TMP/res/$b.rps" ] && [ -s "$TMP/res/goproxy.rps" ]; then
				echo "- $b rps / goproxy rps = $(ratio "$(med "$b" rps)" "$(med goproxy rps)")"
			fi
		done
	fi
	if [ -s "$TMP/res/sidecar-nometrics.cpu" ]; then
		echo
		echo "Telemetry cost, CPU per request against the sidecar with telemetry off (medians over rounds):"
		echo
		tel_bar metrics sidecar sidecar-nometrics 1.05
		tel_bar tracing sidecar-traced sidecar-nometrics 1.20
	fi
	if [ -s "$TMP/res/sidecar-traced.spanratio" ]; then
		echo "- sidecar-traced: spans the OTLP sink decoded / (2 × requests the sidecar served), per round: $(tr '\n' ' ' <"$TMP/res/sidecar-traced.spanratio")(1 = a SERVER and a CLIENT span for every request, none lost)"
	fi
	echo
	echo "A target whose proxy core is well below 100 % busy while the load core is at ~100 % was limited by the load core (wrk + upstream), not by itself: its rps is a lower bound; compare CPU µs/req instead."
	if [ -s "$TMP/res/notes" ]; then
		echo
		echo "Errors seen:"
		sed 's/^/- /' "$TMP/res/notes"
	fi
} >"$REPORT"

cat "$REPORT"
if [ -n "$OUT" ]; then
	cp "$REPORT" "$OUT"
	log "report written to $OUT"
fi
