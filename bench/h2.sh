#!/usr/bin/env bash
# HTTP/2 and gRPC proxy benchmark: gRPC unary calls through the sidecar
# against a direct call (and through HAProxy), plus an h2c h2load run against
# the sidecar, HAProxy and an h2c-capable upstream, all in one run on
# loopback. See bench/README.md for what the numbers mean.
#
#   bench/h2.sh                                 # full run: 3 rounds of 10 s
#   ROUNDS=1 DURATION=5s bench/h2.sh            # quick run
#
# Knobs (environment):
#   ROUNDS=3        rounds; every target is measured once per round, targets
#                   interleaved, and the tables show medians over rounds
#   DURATION=10s    length of each measured run (grpcbench -duration,
#                   h2load -D); whole seconds
#   WARMUP=2s       unrecorded warm-up before each measured run (0 to skip)
#   STREAMS="1 64"  gRPC concurrent calls on the one client connection
#   H2_CONNS=1      h2load -c (connections)
#   H2_STREAMS=64   h2load -m (concurrent streams per connection)
#   SIZE=64         gRPC payload and HTTP response body size in bytes
#   TARGETS="direct sidecar haproxy"; also sidecar-nometrics (telemetry
#                   off) and sidecar-traced (metrics + every request traced
#                   to bench/otlpsink)
#   GRPC_HAPROXY=1  also run the gRPC calls through HAProxy (0: h2load only)
#   LOAD_CPU=0      core for grpcbench/h2load and both upstream servers
#   PROXY_CPU=1     core for the proxy under test (alone)
#   PORT_BASE=18200 ports used: +80 HTTP upstream, +90 gRPC server,
#                   +1/+11 sidecar h2/grpc, +4/+14 haproxy h2/grpc,
#                   +6/+16 sidecar-nometrics, +7/+17 sidecar-traced,
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
WARMUP=${WARMUP:-2s}
STREAMS=${STREAMS:-"1 64"}
H2_CONNS=${H2_CONNS:-1}
H2_STREAMS=${H2_STREAMS:-64}
SIZE=${SIZE:-64}
TARGETS=${TARGETS:-"direct sidecar haproxy"}
GRPC_HAPROXY=${GRPC_HAPROXY:-1}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
PORT_BASE=${PORT_BASE:-18200}
OUT=${OUT:-}
KEEP_TMP=${KEEP_TMP:-0}
WAIT_QUIET=${WAIT_QUIET:-30}

export PATH="$PATH:/usr/sbin:/sbin"
LOG_TAG=h2
HOST=127.0.0.1
UP_PORT=$((PORT_BASE + 80))
GRPC_PORT=$((PORT_BASE + 90))
ADMIN_PORT=$((PORT_BASE + 1901))
SINK_PORT=$((PORT_BASE + 85))

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$BENCH_DIR/lib.sh"

COMMAND="ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP STREAMS=\"$STREAMS\" H2_CONNS=$H2_CONNS H2_STREAMS=$H2_STREAMS SIZE=$SIZE GRPC_HAPROXY=$GRPC_HAPROXY WAIT_QUIET=$WAIT_QUIET bench/h2.sh"

case $DURATION in *[!0-9]*s | s | *[!0-9s]*) die "DURATION must be whole seconds like 10s (got $DURATION)" ;; esac
DUR_S=${DURATION%s}
[ "$DUR_S" -ge 1 ] || die "DURATION must be at least 1s"
case $WARMUP in 0 | 0s) WARM_S=0 ;; *[!0-9]*s | s | *[!0-9s]*) die "WARMUP must be whole seconds like 2s (got $WARMUP)" ;; *) WARM_S=${WARMUP%s} ;; esac
# Upper bound on calls per gRPC run: far above what 2 cores can do, but finite.
MAX_CALLS=$((DUR_S * 500000))

h2_port() {
	case $1 in
	direct) echo "$UP_PORT" ;;
	sidecar) echo $((PORT_BASE + 1)) ;;
	haproxy) echo $((PORT_BASE + 4)) ;;
	sidecar-nometrics) echo $((PORT_BASE + 6)) ;;
	sidecar-traced) echo $((PORT_BASE + 7)) ;;
	*) die "unknown target $1" ;;
	esac
}
grpc_port() {
	case $1 in
	direct) echo "$GRPC_PORT" ;;
	sidecar) echo $((PORT_BASE + 11)) ;;
	haproxy) echo $((PORT_BASE + 14)) ;;
	sidecar-nometrics) echo $((PORT_BASE + 16)) ;;
	sidecar-traced) echo $((PORT_BASE + 17)) ;;
	*) die "unknown target $1" ;;
	esac
}
grpc_enabled() { [ "$1" != haproxy ] || [ "$GRPC_HAPROXY" = 1 ]; }

render() { # render TEMPLATE OUT NAME
	sed -e "s|@LISTEN@|$HOST:$(h2_port "$3")|g" -e "s|@UPSTREAM@|$HOST:$UP_PORT|g" \
		-e "s|@GRPC_LISTEN@|$HOST:$(grpc_port "$3")|g" -e "s|@GRPC_UPSTREAM@|$HOST:$GRPC_PORT|g" \
		-e "s|@ADMIN@|$HOST:$ADMIN_PORT|g" "$1" >"$2"
}

# target_cmd NAME: print the command that starts NAME (one line).
target_cmd() {
	local env
	case $1 in
	sidecar | sidecar-nometrics | sidecar-traced)
		env=$(sidecar_env "$1")
		echo "${env:+$env }$TMP/bin/sidecar run -config $TMP/$1-h2.yaml" ;;
	haproxy) echo "haproxy -db -f $TMP/haproxy-h2.cfg" ;;
	esac
}

# note NAME ROUND TEXT [KEY]: record a line for "Errors seen"; with KEY
# (grpc.NAME.STREAMS or h2.NAME), also mark that table row.
note() {
	echo "$1 round $2: $3" >>"$TMP/res/notes"
	[ -n "${4:-}" ] && echo "$4" >>"$TMP/res/bad"
	return 0
}
mark_of() { if grep -qx "$1" "$TMP/res/bad"; then echo " ⚠ errors"; fi; }

# foreign_pct PC0 PC1 PROXY_TICKS SECS: % of the proxy core used by others.
foreign_pct() {
	awk -v a="$1" -v b="$2" -v p="$3" -v s="$4" -v hz="$CLK_TCK" \
		'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.0f", (s > 0 ? 100*((y[1]-x[1]) - p)/hz/s : 0)}'
}

ticks_of() { if [ -n "$1" ]; then cpu_ticks "$1"; else echo 0; fi; }

jnum() { sed -n "s/.*\"$1\":\\([0-9.e+-]*\\).*/\\1/p" <<<"$2"; }

# measure_grpc NAME ROUND PID STREAMS
measure_grpc() {
	local name=$1 round=$2 pid=$3 s=$4 target out key
	target=$HOST:$(grpc_port "$name")
	key="grpc.$name.$s"
	wait_quiet
	local t0 t1 pc0 pc1 lc0 lc1 rc=0
	t0=$(ticks_of "$pid")
	pc0=$(core_ticks "$PROXY_CPU")
	lc0=$(core_ticks "$LOAD_CPU")
	out=$(taskset -c "$LOAD_CPU" "$TMP/bin/grpcbench" -mode client -target "$target" -streams "$s" \
		-duration "$DURATION" -warmup "$WARMUP" -max "$MAX_CALLS" -size "$SIZE" 2>&1) || rc=$?
	t1=$(ticks_of "$pid")
	pc1=$(core_ticks "$PROXY_CPU")
	lc1=$(core_ticks "$LOAD_CPU")
	echo "$name round $round streams $s: $out" >>"$TMP/log/grpcbench.log"
	if [ "$rc" -ne 0 ]; then
		note "$name" "$round" "gRPC at $s streams failed: $(tail -1 <<<"$out")" "$key"
		log "$name round $round: gRPC at $s streams failed (see Errors seen)"
		return 0
	fi
	local cps p50 p99 errs calls secs
	cps=$(jnum calls_per_s "$out")
	p50=$(jnum p50_us "$out")
	p99=$(jnum p99_us "$out")
	errs=$(jnum errors "$out")
	calls=$(jnum calls "$out")
	secs=$(jnum duration_s "$out")
	if [ -z "$cps" ] || [ -z "$p50" ] || [ -z "$p99" ]; then die "$name: could not parse grpcbench output: $out"; fi
	echo "$cps" >>"$TMP/res/$key.cps"
	echo "$p50" >>"$TMP/res/$key.p50"
	echo "$p99" >>"$TMP/res/$key.p99"
	core_busy "$lc0" "$lc1" >>"$TMP/res/$key.loadbusy"
	if [ "${errs:-0}" != 0 ]; then
		note "$name" "$round" "gRPC at $s streams: $errs errors of $calls ($out)" "$key"
	fi
	if [ -n "$pid" ] && [ "${calls:-0}" -gt 0 ]; then
		# The proxy's ticks cover the warm-up too; scale by calls made in it
		# as well, assuming the warm-up ran at the measured rate.
		awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" -v c="$calls" -v s="$secs" -v w="$WARM_S" \
			'BEGIN {printf "%.2f\n", t*1e6/hz/(c*(s+w)/s)}' >>"$TMP/res/$key.cpu"
		awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" -v s="$secs" -v w="$WARM_S" \
			'BEGIN {printf "%.0f\n", 100*t/hz/(s+w)}' >>"$TMP/res/$key.busy"
	fi
	local foreign
	foreign=$(foreign_pct "$pc0" "$pc1" "$((t1 - t0))" "$(awk -v s="$secs" -v w="$WARM_S" 'BEGIN {print s+w}')")
	echo "$foreign" >>"$TMP/res/foreign"
	if [ "$foreign" -gt 10 ]; then
		note "$name" "$round" "gRPC at $s streams: ${foreign}% of the proxy core went to other processes (machine not quiet)"
	fi
	log "$name round $round: gRPC $s streams: $(fmt "$cps" '%.0f') calls/s, p50 ${p50}µs, p99 ${p99}µs"
}

# to_us VALUE-WITH-UNIT (h2load prints 289us, 1.83ms, 2.1s)
to_us() {
	awk -v v="$1" 'BEGIN {
		if (v ~ /us$/) { sub(/us$/, "", v); print v + 0 }
		else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 }
		else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 }
		else print "n/a" }'
}

# measure_h2load NAME ROUND PID
measure_h2load() {
	local name=$1 round=$2 pid=$3 url out
	url="http://$HOST:$(h2_port "$name")/"
	wait_quiet
	if [ "$WARM_S" -gt 0 ]; then
		taskset -c "$LOAD_CPU" h2load -c "$H2_CONNS" -m "$H2_STREAMS" -D "$WARM_S" "$url" >/dev/null 2>&1 || true
	fi
	local t0 t1 pc0 pc1 lc0 lc1 rc=0
	t0=$(ticks_of "$pid")
	pc0=$(core_ticks "$PROXY_CPU")
	lc0=$(core_ticks "$LOAD_CPU")
	out=$(taskset -c "$LOAD_CPU" h2load -c "$H2_CONNS" -m "$H2_STREAMS" -D "$DUR_S" "$url" 2>&1) || rc=$?
	t1=$(ticks_of "$pid")
	pc1=$(core_ticks "$PROXY_CPU")
	lc1=$(core_ticks "$LOAD_CPU")
	printf '== %s round %s ==\n%s\n' "$name" "$round" "$out" >>"$TMP/log/h2load.log"
	local rps done_ ok failed errored non2xx mean secs
	secs=$(awk '/^finished in/ {v=$3; sub(/,$/, "", v); print v; exit}' <<<"$out")
	rps=$(awk '/^finished in/ {print $4; exit}' <<<"$out")
	done_=$(awk '/^requests:/ {print $6; exit}' <<<"$out")
	ok=$(awk '/^requests:/ {print $8; exit}' <<<"$out")
	failed=$(awk '/^requests:/ {print $10; exit}' <<<"$out")
	errored=$(awk '/^requests:/ {print $12; exit}' <<<"$out")
	non2xx=$(awk '/^status codes:/ {n=0; for (i=5;i<=NF;i+=2) n+=$i; print n; exit}' <<<"$out")
	mean=$(awk '/^time for request:/ {print $6; exit}' <<<"$out")
	if [ "$rc" -ne 0 ] || [ -z "$rps" ] || [ -z "$ok" ] || [ "${ok:-0}" -eq 0 ]; then
		note "$name" "$round" "h2load failed (exit $rc): $(tail -3 <<<"$out" | tr '\n' ' ')" "h2.$name"
		log "$name round $round: h2load failed (see Errors seen)"
		return 0
	fi
	echo "$rps" >>"$TMP/res/h2.$name.rps"
	to_us "$mean" >>"$TMP/res/h2.$name.mean"
	core_busy "$lc0" "$lc1" >>"$TMP/res/h2.$name.loadbusy"
	if [ "${failed:-0}" != 0 ] || [ "${errored:-0}" != 0 ] || [ "${non2xx:-0}" != 0 ]; then
		note "$name" "$round" "h2load: $failed failed, $errored errored, $non2xx non-2xx of $done_" "h2.$name"
	fi
	if [ -n "$pid" ]; then
		awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" -v n="$done_" 'BEGIN {printf "%.2f\n", t*1e6/hz/n}' >>"$TMP/res/h2.$name.cpu"
		awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" -v s="$(to_us "$secs")" 'BEGIN {printf "%.0f\n", 100*t/hz/(s/1e6)}' >>"$TMP/res/h2.$name.busy"
	fi
	local foreign
	foreign=$(foreign_pct "$pc0" "$pc1" "$((t1 - t0))" "$DUR_S")
	echo "$foreign" >>"$TMP/res/foreign"
	if [ "$foreign" -gt 10 ]; then
		note "$name" "$round" "h2load: ${foreign}% of the proxy core went to other processes (machine not quiet)"
	fi
	log "$name round $round: h2load $(fmt "$rps" '%.0f') req/s, mean $(to_us "$mean")µs"
}

# measure NAME ROUND: start NAME fresh, run gRPC at every STREAMS, then h2load.
measure() {
	local name=$1 round=$2 pid="" s
	if [ "$name" != direct ]; then
		port_free "$(h2_port "$name")" || die "port $(h2_port "$name") (for $name) is already in use"
		port_free "$(grpc_port "$name")" || die "port $(grpc_port "$name") (for $name) is already in use"
		wait_quiet
		# shellcheck disable=SC2046
		start "$name" "$PROXY_CPU" $(target_cmd "$name")
		pid=$STARTED
		local ok=1
		if is_sidecar "$name"; then
			wait_200 "http://$HOST:$ADMIN_PORT/readyz" "$pid" "$name" || ok=0
		fi
		[ "$ok" = 1 ] && { wait_200 "http://$HOST:$(h2_port "$name")/" "$pid" "$name" --http2-prior-knowledge || ok=0; }
		if [ "$ok" = 0 ]; then
			stop "$pid"
			is_sidecar "$name" || die "$name did not start"
			note "$name" "$round" "did not start or answer 200 (see log/$name.log); skipped"
			return 0
		fi
	fi
	local body
	body=$(curl -s --http2-prior-knowledge --max-time 2 "http://$HOST:$(h2_port "$name")/" | wc -c)
	[ "$body" -eq "$SIZE" ] || die "$name: expected a $SIZE-byte body over h2c, got $body bytes"

	if grpc_enabled "$name"; then
		for s in $STREAMS; do
			measure_grpc "$name" "$round" "$pid" "$s"
		done
	fi
	measure_h2load "$name" "$round" "$pid"

	if [ -n "$pid" ]; then
		rss_mib "$pid" >>"$TMP/res/$name.rss"
		echo >>"$TMP/res/$name.rss"
		local served=""
		[ "$name" = sidecar-traced ] && served=$(served_requests)
		stop "$pid"
		[ "$name" = sidecar-traced ] && check_spans "$name" "$round" "$served"
	fi
	return 0
}

# check_spans NAME ROUND SERVED: after a traced round (the sidecar stopped,
# so its last batch is flushed) the sink's span count must have grown;
# records spans / (2 x requests served): a SERVER and a CLIENT span each.
check_spans() {
	local name=$1 round=$2 served=$3 now
	now=$(sink_spans)
	if [ -z "$now" ] || [ "$now" -le "$SPANS" ]; then
		note "$name" "$round" "the OTLP sink's span count did not grow (${SPANS} before, ${now:-no answer} after)" "h2.$name"
		local s
		for s in $STREAMS; do echo "grpc.$name.$s" >>"$TMP/res/bad"; done
		return 0
	fi
	echo "$name round $round: $((now - SPANS)) spans for ${served:-?} requests served" >>"$TMP/log/spans.log"
	awk -v n="$((now - SPANS))" -v r="${served:-0}" 'BEGIN {if (r > 0) printf "%.3f\n", n/(2*r)}' >>"$TMP/res/$name.spanratio"
	SPANS=$now
}

# ---------------------------------------------------------------- main
ensure_packages h2load:nghttp2-client haproxy:haproxy curl:curl taskset:util-linux
check_quiet_start

TMP=$(mktemp -d /tmp/sidecar-bench-h2.XXXXXX)
mkdir -p "$TMP/bin" "$TMP/log" "$TMP/res"
: >"$TMP/res/notes"
: >"$TMP/res/bad"

log "building bench binaries into $TMP/bin"
(cd "$REPO" && go build -o "$TMP/bin/" ./bench/upstream ./bench/grpcbench ./bench/otlpsink)

SIDECAR_NOTE=""
RUN_TARGETS=()
for t in $TARGETS; do
	if is_sidecar "$t"; then
		[ -n "$SIDECAR_NOTE" ] && continue
		if [ ! -x "$TMP/bin/sidecar" ] && ! (cd "$REPO" && go build -o "$TMP/bin/sidecar" ./cmd/sidecar) >"$TMP/log/sidecar-build.log" 2>&1; then
			SIDECAR_NOTE="sidecar: not measured: ./cmd/sidecar does not build: $(grep -v "^#" "$TMP/log/sidecar-build.log" | head -1 || true)"
			log "$SIDECAR_NOTE"
			continue
		fi
	fi
	h2_port "$t" >/dev/null
	RUN_TARGETS+=("$t")
done
[ ${#RUN_TARGETS[@]} -gt 0 ] || die "no targets to run"

for t in sidecar sidecar-nometrics sidecar-traced; do
	render "$BENCH_DIR/sidecar-h2.yaml" "$TMP/$t-h2.yaml" "$t"
	sidecar_telemetry "$t" >>"$TMP/$t-h2.yaml"
done
render "$BENCH_DIR/haproxy-h2.cfg" "$TMP/haproxy-h2.cfg" haproxy

port_free "$UP_PORT" || die "upstream port $UP_PORT is already in use"
port_free "$GRPC_PORT" || die "gRPC server port $GRPC_PORT is already in use"
start upstream "$LOAD_CPU" "$TMP/bin/upstream" -addr "$HOST:$UP_PORT" -size "$SIZE" -h2c
wait_200 "http://$HOST:$UP_PORT/" "$STARTED" upstream --http2-prior-knowledge || die "the upstream did not start"
start grpcserver "$LOAD_CPU" "$TMP/bin/grpcbench" -mode server -addr "$HOST:$GRPC_PORT"
wait_port "$GRPC_PORT" "$STARTED" grpcserver || die "the gRPC server did not start"
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
	echo "## HTTP/2 and gRPC benchmark ($(date -u '+%Y-%m-%d %H:%M UTC'))"
	echo
	echo "- command: \`$COMMAND\`"
	echo "- commit: $(commit_line)"
	echo "- machine: $(machine_line)"
	echo "- $(go version | cut -d' ' -f3-), grpc-go $(cd "$REPO" && go list -m -f '{{.Version}}' google.golang.org/grpc), $(h2load --version 2>&1 | head -1 | sed 's/^h2load //'), $(haproxy -v | head -1 | cut -d' ' -f1-3)"
	echo "- background load before the run: ${BG_LOAD}% of one core"
	if [ -s "$TMP/res/foreign" ]; then
		echo "- background load during the run: other processes used >10 % of the proxy core (core $PROXY_CPU) in $(awk '$1 > 10' "$TMP/res/foreign" | wc -l) of $(wc -l <"$TMP/res/foreign") measurements (median $(median "$TMP/res/foreign") %, max $(sort -g "$TMP/res/foreign" | tail -1) %; listed under Errors seen)"
	fi
	echo "- placement: proxy under test alone on core $PROXY_CPU; grpcbench client, h2load, the gRPC server (\`grpcbench -mode server\`, interop TestService) and the HTTP upstream (\`upstream -size $SIZE -h2c\`) on core $LOAD_CPU"
	echo "- gRPC: \`taskset -c $LOAD_CPU grpcbench -mode client -target HOST:PORT -streams N -duration $DURATION -warmup $WARMUP -max $MAX_CALLS -size $SIZE\`: one ClientConn (h2c), N goroutines calling UnaryCall ($SIZE B payload each way) back to back; closed loop, latency per call"
	echo "- h2load: \`taskset -c $LOAD_CPU h2load -c $H2_CONNS -m $H2_STREAMS -D $DUR_S http://HOST:PORT/\` (h2c GETs, $SIZE B bodies) after an unrecorded ${WARMUP} run; the proxies speak HTTP/1.1 to the upstream, direct is h2c to the upstream itself"
	echo "- $ROUNDS round(s), targets interleaved, each started fresh per round as \`taskset -c $PROXY_CPU CMD\`; medians over rounds"
	for t in "${RUN_TARGETS[@]}"; do
		[ "$t" = direct ] && { echo "  - direct: gRPC to \`$HOST:$GRPC_PORT\`, h2load to \`$HOST:$UP_PORT\`"; continue; }
		cfg="bench/$(basename "$(target_cmd "$t" | awk '{print $NF}')")"
		if is_sidecar "$t"; then
			tb=$(sidecar_telemetry "$t")
			cfg="bench/sidecar-h2.yaml${tb:+ plus \`$tb\`}"
		fi
		echo "  - $t: \`$(target_cmd "$t" | sed "s|$TMP|\$TMP|g")\` (gRPC port $(grpc_port "$t"), h2c port $(h2_port "$t"); config rendered from $cfg)"
	done
	echo
	echo "### gRPC unary calls, one connection"
	echo
	echo "| target | streams | calls/s | p50 µs | p99 µs | added p50 vs direct | added p99 vs direct | proxy CPU µs/call | proxy core busy % | load core busy % |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	for s in $STREAMS; do
		D50=$(med "grpc.direct.$s" p50)
		D99=$(med "grpc.direct.$s" p99)
		for t in "${RUN_TARGETS[@]}"; do
			grpc_enabled "$t" || continue
			k="grpc.$t.$s"
			p50=$(med "$k" p50)
			p99=$(med "$k" p99)
			if [ "$t" = direct ]; then a50="—"; a99="—"; else
				a50=$(fmt "$(sub_ "$p50" "$D50")" '%+.0f')
				a99=$(fmt "$(sub_ "$p99" "$D99")" '%+.0f')
			fi
			mark=$(mark_of "$k")
			printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t$mark" "$s" \
				"$(fmt "$(med "$k" cps)" '%.0f')" "$(fmt "$p50" '%.0f')" "$(fmt "$p99" '%.0f')" "$a50" "$a99" \
				"$(fmt "$(med "$k" cpu)" '%.1f')" "$(fmt "$(med "$k" busy)" '%.0f')" "$(fmt "$(med "$k" loadbusy)" '%.0f')"
		done
	done
	echo
	echo "### h2load, h2c, $H2_CONNS connection(s) × $H2_STREAMS streams"
	echo
	echo "| target | req/s | mean latency µs | proxy CPU µs/req | proxy core busy % | load core busy % | RSS MiB |"
	echo "|---|---:|---:|---:|---:|---:|---:|"
	for t in "${RUN_TARGETS[@]}"; do
		mark=$(mark_of "h2.$t")
		printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$t$mark" \
			"$(fmt "$(med "h2.$t" rps)" '%.0f')" "$(fmt "$(med "h2.$t" mean)" '%.0f')" \
			"$(fmt "$(med "h2.$t" cpu)" '%.1f')" "$(fmt "$(med "h2.$t" busy)" '%.0f')" \
			"$(fmt "$(med "h2.$t" loadbusy)" '%.0f')" "$(fmt "$(med "$t" rss)" '%.1f')"
	done
	echo
	if [ -s "$TMP/res/h2.sidecar.rps" ] && [ -s "$TMP/res/h2.haproxy.rps" ]; then
		echo "- h2load: sidecar req/s / haproxy req/s = $(ratio "$(med h2.sidecar rps)" "$(med h2.haproxy rps)"); CPU µs/req sidecar / haproxy = $(ratio "$(med h2.sidecar cpu)" "$(med h2.haproxy cpu)")"
	fi
	[ -n "$SIDECAR_NOTE" ] && echo "- $SIDECAR_NOTE"
	if [ -s "$TMP/res/h2.sidecar-nometrics.cpu" ] || [ -s "$TMP/res/grpc.sidecar-nometrics.${STREAMS%% *}.cpu" ]; then
		# Telemetry cost: proxy CPU per call/request against the sidecar
		# with telemetry off (medians over rounds).
		for s in $STREAMS; do
			tel_bar "gRPC $s stream(s), metrics" sidecar sidecar-nometrics 1.05 grpc. ".$s" µs/call
			tel_bar "gRPC $s stream(s), tracing" sidecar-traced sidecar-nometrics 1.20 grpc. ".$s" µs/call
		done
		tel_bar "h2load, metrics" sidecar sidecar-nometrics 1.05 h2.
		tel_bar "h2load, tracing" sidecar-traced sidecar-nometrics 1.20 h2.
	fi
	if [ -s "$TMP/res/sidecar-traced.spanratio" ]; then
		echo "- sidecar-traced: spans the OTLP sink decoded / (2 × requests the sidecar served), per round: $(tr '\n' ' ' <"$TMP/res/sidecar-traced.spanratio")(1 = a SERVER and a CLIENT span for every request and call, none lost)"
	fi
	echo "- proxy CPU per gRPC call counts the warm-up's calls at the measured rate (ticks are read around the whole grpcbench run); /proc ticks are 1/$CLK_TCK s, so short runs are coarse."
	echo "- A target whose proxy core is well below 100 % busy while the load core is at ~100 % was limited by the load core (client + servers), not by itself: its rate is a lower bound; compare CPU µs per call/request instead."
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
