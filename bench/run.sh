#!/usr/bin/env bash
# One benchmark command (issue 15): builds everything, then measures every
# target under every load in ONE run on loopback, the proxy under test
# pinned alone to one core, and writes bench/results/<UTC date-time>/
# summary.md and summary.json (plus raw.jsonl, every raw figure). See
# bench/README.md ("One run of everything") for what each number means.
#
#   bench/run.sh                              # full run: 3 rounds, ~30 minutes
#   ROUNDS=1 DURATION=5s bench/run.sh         # quicker
#   SMOKE=1 bench/run.sh                      # CI-sized: checks the harness, not timings
#   TARGETS="direct sidecar-policies haproxy" LOADS="wrk latency" bench/run.sh
#
# Targets: direct, goproxy-pool (Go's ReverseProxy with pooled buffers: the
# floor), sidecar-default (the built-in default policy), sidecar-policies
# (every policy plus metrics), sidecar-traced (that plus 100 % tracing to
# bench/otlpsink), sidecar-async (an async route, file spool, fsync always),
# haproxy, nginx, caddy (Debian's packages).
# Loads: wrk (throughput, CPU per request), latency (fixed-rate open loop),
# syscalls (per request, perf or strace), idle (RSS with idle keep-alive
# connections), h2c (h2load), grpc-unary, grpc-stream, async (with the
# disk's single-writer fsync rate).
#
# Knobs (environment):
#   ROUNDS=3        rounds; targets interleaved; tables show medians
#   DURATION=10s    measured time of wrk, h2load, gRPC (whole seconds)
#   LAT_DURATION    the latency run (default DURATION); RATE=2000, LAT_CONNS=16
#   WARMUP=2s       unrecorded load before each measured one (whole seconds, 0: none)
#   CONNS=64        wrk connections (and the async load's)
#   SYS_DURATION=3s the wrk run the syscalls are counted over
#   IDLE_CONNS=10000  idle keep-alive connections held open
#   STREAMS=64      gRPC concurrent calls/streams on one connection
#   H2_CONNS=1, H2_STREAMS=64   h2load -c / -m
#   SIZE=64         response (and gRPC payload) bytes; ASYNC_SIZE=1024 POST body
#   TARGETS, LOADS  the subsets to run (default: all of them)
#   LOAD_CPU=0, PROXY_CPU=1, PORT_BASE=18600
#   BENCH_TMPDIR    where the temp dir (binaries, spool, fsync file) goes;
#                   default $TMPDIR or /var/tmp: on the disk under test
#   OUT=DIR         output directory (default bench/results/<UTC date-time>)
#   KEEP_TMP=1      keep the temp dir (logs, rendered configs)
#   WAIT_QUIET=30   wait up to this many seconds for a quiet machine before
#                   each measurement; 0: never
#   GO_DURATION     measured time of the Go load tools (loadgen, grpcbench,
#                   fsyncrate; default DURATION): Go durations like 500ms
#   SMOKE=1         1 round, 1 s loads (0.5 s with the Go tools: GO_DURATION,
#                   LAT_DURATION), no warm-up, 100 idle connections,
#                   only the targets and loads whose tools are installed
#                   (nothing is installed); fails only if the harness breaks
#                   (a target does not start, a tool fails, a wrong status,
#                   malformed JSON), never on timing
#
# Only 127.0.0.1 is ever contacted. Every process this script starts is
# killed on exit.
set -euo pipefail

SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
	ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-1s} WARMUP=${WARMUP:-0} SYS_DURATION=${SYS_DURATION:-1s}
	IDLE_CONNS=${IDLE_CONNS:-100} WAIT_QUIET=${WAIT_QUIET:-0} LAT_WARMUP=${LAT_WARMUP:-0s}
	# The Go load tools take sub-second durations (wrk and h2load do not).
	GO_DURATION=${GO_DURATION:-500ms} LAT_DURATION=${LAT_DURATION:-500ms}
fi
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
LAT_DURATION=${LAT_DURATION:-$DURATION}
LAT_WARMUP=${LAT_WARMUP:-1s}
RATE=${RATE:-2000}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-64}
LAT_CONNS=${LAT_CONNS:-16}
SYS_DURATION=${SYS_DURATION:-3s}
IDLE_CONNS=${IDLE_CONNS:-10000}
STREAMS=${STREAMS:-64}
H2_CONNS=${H2_CONNS:-1}
H2_STREAMS=${H2_STREAMS:-64}
SIZE=${SIZE:-64}
ASYNC_SIZE=${ASYNC_SIZE:-1024}
ALL_TARGETS="direct goproxy-pool sidecar-default sidecar-policies sidecar-traced sidecar-async haproxy nginx caddy"
ALL_LOADS="wrk latency syscalls idle h2c grpc-unary grpc-stream async"
TARGETS=${TARGETS:-$ALL_TARGETS}
LOADS=${LOADS:-$ALL_LOADS}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
PORT_BASE=${PORT_BASE:-18600}
BENCH_TMPDIR=${BENCH_TMPDIR:-${TMPDIR:-/var/tmp}}
OUT=${OUT:-}
KEEP_TMP=${KEEP_TMP:-0}
WAIT_QUIET=${WAIT_QUIET:-30}

export PATH="$PATH:/usr/sbin:/sbin"
HOST=127.0.0.1
UP_PORT=$((PORT_BASE + 80))    # HTTP/1.1 upstream
UP_H2_PORT=$((PORT_BASE + 81)) # the same, also serving h2c (the h2c loads)
DOWN_PORT=$((PORT_BASE + 83))  # the async route's upstream: nothing listens
SINK_PORT=$((PORT_BASE + 85))  # OTLP sink
GRPC_PORT=$((PORT_BASE + 90))  # gRPC server
ADMIN_PORT=$((PORT_BASE + 1901))

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
LOG_TAG=run
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$BENCH_DIR/lib.sh"

COMMAND="ROUNDS=$ROUNDS DURATION=$DURATION${GO_DURATION:+ GO_DURATION=$GO_DURATION} LAT_DURATION=$LAT_DURATION RATE=$RATE WARMUP=$WARMUP CONNS=$CONNS SYS_DURATION=$SYS_DURATION IDLE_CONNS=$IDLE_CONNS STREAMS=$STREAMS WAIT_QUIET=$WAIT_QUIET"
[ "$SMOKE" = 1 ] && COMMAND="SMOKE=1 $COMMAND"
[ "$TARGETS" = "$ALL_TARGETS" ] || COMMAND="$COMMAND TARGETS=\"$TARGETS\""
[ "$LOADS" = "$ALL_LOADS" ] || COMMAND="$COMMAND LOADS=\"$LOADS\""
COMMAND="$COMMAND bench/run.sh"

whole_secs() { # whole_secs NAME VALUE: 10s or 10 -> 10
	case $2 in 0) echo 0 ;; *[!0-9]*s | s | *[!0-9s]*) die "$1 must be whole seconds like 10s (got $2)" ;; *) echo "${2%s}" ;; esac
}
DUR_S=$(whole_secs DURATION "$DURATION")
WARM_S=$(whole_secs WARMUP "$WARMUP")
SYS_S=$(whole_secs SYS_DURATION "$SYS_DURATION")
{ [ "$DUR_S" -ge 1 ] && [ "$SYS_S" -ge 1 ]; } || die "DURATION and SYS_DURATION must be at least 1s"
for n in ROUNDS CONNS LAT_CONNS IDLE_CONNS STREAMS H2_CONNS H2_STREAMS SIZE ASYNC_SIZE; do
	case ${!n} in '' | *[!0-9]*) die "$n must be a whole number (got ${!n})" ;; esac
done
# The measured time of the Go tools (loadgen, grpcbench, fsyncrate): DURATION
# (a smoke run shortens it).
GO_DURATION=${GO_DURATION:-${DUR_S}s}
MAX_CALLS=$(((DUR_S + 1) * 500000)) # bound on gRPC calls per run: far above 2 cores' worth
# The every-policy config's overall deadline must outlive a gRPC stream.
POLICY_TIMEOUT=$((WARM_S + DUR_S + 60))

has() { case " $2 " in *" $1 "*) return 0 ;; esac; return 1; }
want_t() { has "$1" "$TARGETS"; }
want_l() { has "$1" "$LOADS"; }
for t in $TARGETS; do has "$t" "$ALL_TARGETS" || die "unknown target $t (known: $ALL_TARGETS)"; done
for l in $LOADS; do has "$l" "$ALL_LOADS" || die "unknown load $l (known: $ALL_LOADS)"; done

# ---------------------------------------------------------------- targets and ports
target_index() {
	local i=0 t
	for t in $ALL_TARGETS; do
		[ "$t" = "$1" ] && { echo "$i"; return; }
		i=$((i + 1))
	done
	die "unknown target $1"
}
http1_port() { if [ "$1" = direct ]; then echo "$UP_PORT"; else echo $((PORT_BASE + 10 + $(target_index "$1"))); fi; }
h2c_port() { if [ "$1" = direct ]; then echo "$UP_H2_PORT"; else echo $((PORT_BASE + 30 + $(target_index "$1"))); fi; }
grpc_port() { if [ "$1" = direct ]; then echo "$GRPC_PORT"; else echo $((PORT_BASE + 50 + $(target_index "$1"))); fi; }

is_sc() { case $1 in sidecar-default | sidecar-policies | sidecar-traced | sidecar-async) return 0 ;; esac; return 1; }
# Which targets take part in which phase.
in_http1() { [ "$1" != sidecar-async ]; }
in_h2c() { case $1 in goproxy-pool | sidecar-async) return 1 ;; esac; return 0; }
in_grpc() { case $1 in direct | sidecar-default | sidecar-policies | sidecar-traced | haproxy) return 0 ;; esac; return 1; }

# ---------------------------------------------------------------- records
RAW="" NOTES=""
json_str() { printf '%s' "$1" | tr -d '\000-\037' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'; }
# rec LOAD TARGET ROUND KEY=VALUE...: one line of raw.jsonl. A value that is
# a number stays one, "" is null, {...} is embedded JSON, anything else a string.
rec() {
	local load=$1 target=$2 round=$3 kv k v line
	shift 3
	line="{\"load\":\"$load\",\"target\":\"$target\",\"round\":$round"
	for kv in "$@"; do
		k=${kv%%=*} v=${kv#*=}
		if [ -z "$v" ]; then v=null
		elif [[ $v == "{"* ]]; then :
		elif [[ ! $v =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; then v="\"$(json_str "$v")\""
		fi
		line+=",\"$k\":$v"
	done
	printf '%s}\n' "$line" >>"$RAW"
}
# problem KIND TARGET LOAD ROUND TEXT: a line for "Problems seen". KIND
# harness (the harness or a config broke: fatal in a smoke run), load
# (errors under load), quiet (the machine was busy) or info.
problem() {
	local text
	text=$(printf '%s' "$5" | tr '\t\n' '  ')
	printf '%s\t%s\t%s\t%s\t%s\n' "$4" "$2" "$3" "$1" "$text" >>"$NOTES"
	log "$2 $3 round $4: $text"
	if [ "$SMOKE" = 1 ] && [ "$1" = harness ]; then die "smoke run: the harness broke: $2 $3: $text"; fi
	return 0
}
jnum() { sed -n "s/.*\"$1\":\\(-\\{0,1\\}[0-9.e+]*\\).*/\\1/p" <<<"$2" | head -1; }
ticks_of() { if [ -n "$1" ]; then cpu_ticks "$1"; else echo 0; fi; }
per_unit() { # per_unit TICKS N: CPU µs per unit
	awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" 'BEGIN {if (n > 0) printf "%.2f\n", t*1e6/hz/n; else print ""}'
}
busy_of() { # busy_of TICKS SECONDS: % of one core
	awk -v t="$1" -v hz="$CLK_TCK" -v s="$2" 'BEGIN {if (s > 0) printf "%.0f\n", 100*t/hz/s; else print ""}'
}
foreign_of() { # foreign_of PC0 PC1 PROXY_TICKS SECONDS: % of the proxy core used by others
	awk -v a="$1" -v b="$2" -v p="$3" -v s="$4" -v hz="$CLK_TCK" \
		'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.0f\n", (s > 0 ? 100*((y[1]-x[1]) - p)/hz/s : 0)}'
}
check_foreign() { # check_foreign PCT TARGET LOAD ROUND
	[ "$1" -le 10 ] || problem quiet "$2" "$3" "$4" "$1% of the proxy core went to other processes (machine not quiet)"
}

# ---------------------------------------------------------------- tools
HAVE_WRK=0 HAVE_H2LOAD=0 SYSCALL_TOOL=""
pick_tools() {
	local pkgs=(curl:curl taskset:util-linux) t
	if [ "$SMOKE" != 1 ]; then
		# A full run installs what it needs (root, Debian packages).
		{ want_l wrk || want_l syscalls; } && pkgs+=(wrk:wrk)
		want_l h2c && pkgs+=(h2load:nghttp2-client)
		want_t haproxy && pkgs+=(haproxy:haproxy)
		want_t nginx && pkgs+=(nginx:nginx)
		want_t caddy && pkgs+=(caddy:caddy)
	fi
	ensure_packages "${pkgs[@]}"
	command -v wrk >/dev/null && HAVE_WRK=1
	command -v h2load >/dev/null && HAVE_H2LOAD=1
	if [ "$SMOKE" = 1 ]; then
		local kept=""
		for t in $TARGETS; do
			case $t in haproxy | nginx | caddy)
				if ! command -v "$t" >/dev/null; then log "smoke run: $t is not installed: skipped"; continue; fi ;;
			esac
			kept="$kept $t"
		done
		TARGETS=${kept# }
		if [ "$HAVE_H2LOAD" = 0 ] && want_l h2c; then log "smoke run: h2load is not installed: the h2c load is skipped"; fi
	fi
	[ "$HAVE_WRK" = 1 ] || log "wrk is not installed: the closed-loop loads use loadgen -closed instead"
	# Syscalls: perf's syscall tracepoints if they work here, else strace -c.
	if want_l syscalls; then
		if command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter -x, true >/dev/null 2>&1; then
			SYSCALL_TOOL=perf
		elif command -v strace >/dev/null && strace -c -o /dev/null true >/dev/null 2>&1; then
			SYSCALL_TOOL=strace
		else
			log "neither perf (with syscall tracepoints) nor strace works here: the syscalls load is skipped"
		fi
	fi
}

# Syscalls counted one by one besides the total (those that exist here).
SYSCALLS_TRACED="read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait epoll_ctl futex nanosleep accept4 close getsockopt setsockopt getsockname getpeername sched_yield tgkill rt_sigreturn madvise mmap munmap connect socket shutdown clock_gettime"
perf_events() {
	local ev="raw_syscalls:sys_enter" s dir=/sys/kernel/tracing/events/syscalls
	[ -d "$dir" ] || dir=/sys/kernel/debug/tracing/events/syscalls
	for s in $SYSCALLS_TRACED; do
		[ -d "$dir/sys_enter_$s" ] && ev="$ev,syscalls:sys_enter_$s"
	done
	echo "$ev"
}

# ---------------------------------------------------------------- configs
# render TEMPLATE OUT NAME PHASE: fill a bench/ template for target NAME.
render() {
	local listen up
	if [ "$4" = h2 ]; then listen=$(h2c_port "$3") up=$UP_H2_PORT; else listen=$(http1_port "$3") up=$UP_PORT; fi
	sed -e "s|@LISTEN@|$HOST:$listen|g" -e "s|@UPSTREAM@|$HOST:$up|g" \
		-e "s|@GRPC_LISTEN@|$HOST:$(grpc_port "$3")|g" -e "s|@GRPC_UPSTREAM@|$HOST:$GRPC_PORT|g" \
		-e "s|@ADMIN@|$HOST:$ADMIN_PORT|g" -e "s|@PREFIX@|$TMP/$3-$4|g" \
		-e "s|@HOST@|$HOST|g" -e "s|@PORT@|$listen|g" \
		-e "s|@PROTOCOLS@|$([ "$4" = h2 ] && echo 'h1 h2c' || echo h1)|g" \
		-e "s|maxconn 4096|maxconn $MAXCONN|" -e "s|worker_connections 4096|worker_connections $MAXCONN|" "$1" >"$2"
	# HAProxy wants 2 x maxconn descriptors (a server side for every client
	# connection) and refuses to start without them; idle client connections
	# need one each: let it run with the descriptors there are.
	if [[ $1 == *haproxy* ]] && [ $((2 * MAXCONN + 200)) -gt "$NOFILE" ]; then
		sed -i "s|maxconn $MAXCONN|maxconn $MAXCONN\n    ulimit-n $NOFILE\n    no strict-limits|" "$2"
	fi
	mkdir -p "$TMP/$3-$4/logs"
}

policy_block() {
	cat <<EOF
# bench/run.sh: every policy on, none limiting the benchmark's load
policies:
  default:
    timeout: ${POLICY_TIMEOUT}s
    per_try_timeout: 5s
    retry: {attempts: 3, budget: {ratio: 0.2, min_per_second: 10, window: 10s}}
    circuit_breaker: {consecutive_failures: 5, failure_ratio: 0.5, min_requests: 20, window: 10s, open_for: 15s}
    rate_limit: {rps: 100000000, burst: 10000000}
    max_in_flight: 1000000
EOF
}

write_configs() {
	local t ph tpl
	mkdir -p "$TMP/cfg"
	for t in sidecar-default sidecar-policies sidecar-traced; do
		for ph in http1 h2; do
			tpl=$BENCH_DIR/sidecar.yaml
			[ "$ph" = h2 ] && tpl=$BENCH_DIR/sidecar-h2.yaml
			render "$tpl" "$TMP/cfg/$t-$ph.yaml" "$t" "$ph"
			[ "$t" = sidecar-default ] || policy_block >>"$TMP/cfg/$t-$ph.yaml"
			[ "$t" = sidecar-traced ] && sidecar_telemetry sidecar-traced >>"$TMP/cfg/$t-$ph.yaml"
		done
	done
	render "$BENCH_DIR/haproxy.cfg" "$TMP/cfg/haproxy-http1.cfg" haproxy http1
	render "$BENCH_DIR/haproxy-h2.cfg" "$TMP/cfg/haproxy-h2.cfg" haproxy h2
	render "$BENCH_DIR/nginx.conf" "$TMP/cfg/nginx-http1.conf" nginx http1
	render "$BENCH_DIR/nginx-h2.conf" "$TMP/cfg/nginx-h2.conf" nginx h2
	render "$BENCH_DIR/Caddyfile" "$TMP/cfg/caddy-http1.Caddyfile" caddy http1
	render "$BENCH_DIR/Caddyfile" "$TMP/cfg/caddy-h2.Caddyfile" caddy h2
	mkdir -p "$TMP/data"
	cat >"$TMP/cfg/sidecar-async.yaml" <<EOF
# bench/run.sh: one async route, when: always, its upstream down, so every
# message stays in the spool (fsync: always).
version: 1
admin: {address: "$HOST:$ADMIN_PORT"}
spool: {dir: "$TMP/data/spool", fsync: always, max_bytes: 16GiB, max_messages: 100000000}
upstreams:
  down: {endpoints: ["http://$HOST:$DOWN_PORT"], connect_timeout: 200ms}
listeners:
  - name: app
    address: "$HOST:$(http1_port sidecar-async)"
    routes:
      - name: q
        match: {path_prefix: /}
        upstream: down
        async:
          when: always
          ordering: fifo
          backoff: {base: 1s, max: 5m}
          max_body: 1MiB
EOF
	cat >"$TMP/cfg/haproxy-202.cfg" <<EOF
# bench/run.sh: the async load's HAProxy ceiling, a 202 and nothing else.
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout client 60s
    timeout http-keep-alive 60s
frontend async
    bind $HOST:$(http1_port sidecar-async)
    http-request return status 202 content-type application/json string '{"spooled":true,"id":"0000000000000000-00000000"}'
EOF
}

# target_cmd NAME PHASE: the command that starts NAME (one line).
target_cmd() {
	local env=""
	case $1 in
	goproxy-pool) echo "$TMP/bin/goproxy -addr $HOST:$(http1_port goproxy-pool) -upstream http://$HOST:$UP_PORT -pool" ;;
	sidecar-default | sidecar-policies | sidecar-traced)
		[ "$1" = sidecar-traced ] && env="env OTEL_EXPORTER_OTLP_ENDPOINT=http://$HOST:$SINK_PORT OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf "
		echo "$env$TMP/bin/sidecar run -config $TMP/cfg/$1-$2.yaml" ;;
	sidecar-async) echo "$TMP/bin/sidecar run -config $TMP/cfg/sidecar-async.yaml" ;;
	haproxy) echo "haproxy -db -f $TMP/cfg/haproxy-$2.cfg" ;;
	nginx) echo "nginx -p $TMP/nginx-$2/ -c $TMP/cfg/nginx-$2.conf -e stderr" ;;
	caddy) echo "env GOMAXPROCS=1 XDG_DATA_HOME=$TMP/caddy-$2/data XDG_CONFIG_HOME=$TMP/caddy-$2/config caddy run --config $TMP/cfg/caddy-$2.Caddyfile --adapter caddyfile" ;;
	esac
}

# start_target NAME PHASE ROUND: start NAME on the proxy core and wait
# until it answers; sets PID ("" for direct). Returns 1 (noted) if it does
# not come up.
PID=""
start_target() {
	local name=$1 ph=$2 r=$3 url curl_opt=() p
	PID=""
	[ "$name" = direct ] && return 0
	for p in $(http1_port "$name") $(h2c_port "$name") $(grpc_port "$name"); do
		port_free "$p" || die "port $p (for $name) is already in use"
	done
	wait_quiet
	# shellcheck disable=SC2046
	start "$name-$ph" "$PROXY_CPU" $(target_cmd "$name" "$ph")
	PID=$STARTED
	url="http://$HOST:$(http1_port "$name")/"
	if [ "$ph" = h2 ]; then url="http://$HOST:$(h2c_port "$name")/" curl_opt=(--http2-prior-knowledge); fi
	if { is_sc "$name" && ! wait_200 "http://$HOST:$ADMIN_PORT/readyz" "$PID" "$name-$ph"; } ||
		{ [ "$name" != sidecar-async ] && ! wait_200 "$url" "$PID" "$name-$ph" "${curl_opt[@]}"; }; then
		stop "$PID"
		PID=""
		problem harness "$name" "$ph" "$r" "did not start or answer 200 (log/$name-$ph.log)"
		return 1
	fi
	local body
	if [ "$name" != sidecar-async ]; then
		body=$(curl -s "${curl_opt[@]}" --max-time 2 "$url" | wc -c)
		if [ "$body" -ne "$SIZE" ]; then
			stop "$PID"
			PID=""
			problem harness "$name" "$ph" "$r" "expected a $SIZE-byte body from $url, got $body bytes"
			return 1
		fi
	fi
	return 0
}

stop_target() {
	local name=$1 r=$2 now
	[ -n "$PID" ] || return 0
	stop "$PID"
	PID=""
	if [ "$name" = sidecar-traced ]; then
		# Stopped, so its last batch is flushed: the sink must have more spans.
		now=$(sink_spans)
		if [ -z "$now" ] || [ "$now" -le "$SPANS" ]; then
			problem harness "$name" traces "$r" "the OTLP sink's span count did not grow (${SPANS} before, ${now:-no answer} after)"
		else
			SPANS=$now
		fi
	fi
}

# ---------------------------------------------------------------- closed-loop HTTP/1.1 load
# closed_load URL SECONDS [max]: wrk -t1 -cCONNS (or loadgen -closed when
# wrk is missing) on the load core; sets CL_RPS CL_REQS CL_SECS CL_ERRS
# CL_BAD CL_OUT. Returns 1 if the tool failed or its output did not parse.
#
# With CL_POST=1 every request is a POST of ASYNC_SIZE bytes (wrk with a Lua
# script; loadgen -method POST -expect 202) for the async load.
CL_POST=0
closed_load() {
	local url=$1 secs=$2 rc=0 post=() lpost=()
	CL_RPS="" CL_REQS="" CL_SECS="" CL_ERRS=0 CL_BAD=0 CL_P50="" CL_P99=""
	if [ "$CL_POST" = 1 ]; then
		post=(-s "$TMP/cfg/post.lua" --latency) lpost=(-method POST -body-size "$ASYNC_SIZE" -expect 202)
		[ -s "$TMP/cfg/post.lua" ] || printf 'wrk.method = "POST"\nwrk.body = string.rep("x", %d)\nwrk.headers["Content-Type"] = "application/octet-stream"\n' "$ASYNC_SIZE" >"$TMP/cfg/post.lua"
	fi
	if [ "$HAVE_WRK" = 1 ]; then
		CL_OUT=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${secs}s" --timeout 5s "${post[@]}" "$url" 2>&1) || rc=$?
		CL_REQS=$(awk '/requests in/ {print $1; exit}' <<<"$CL_OUT")
		CL_SECS=$(awk '/requests in/ {sub(/s,?$/, "", $4); print $4; exit}' <<<"$CL_OUT")
		CL_RPS=$(awk '/^Requests\/sec:/ {print $2; exit}' <<<"$CL_OUT")
		CL_ERRS=$(awk '/Socket errors:/ {n=0; for (i=3;i<=NF;i++) {gsub(/,/,"",$i); if ($i ~ /^[0-9]+$/) n+=$i} print n; exit}' <<<"$CL_OUT")
		CL_BAD=$(awk '/Non-2xx/ {print $NF; exit}' <<<"$CL_OUT")
		CL_P50=$(wrk_pct 50% <<<"$CL_OUT") CL_P99=$(wrk_pct 99% <<<"$CL_OUT")
		case $CL_SECS in *ms) CL_SECS=$(awk -v v="${CL_SECS%ms}" 'BEGIN {print v/1000}') ;; *m) CL_SECS=$(awk -v v="${CL_SECS%m}" 'BEGIN {print v*60}') ;; esac
	else
		CL_OUT=$(taskset -c "$LOAD_CPU" "$TMP/bin/loadgen" -closed "${lpost[@]}" -url "$url" -conns "$CONNS" -duration "$([ "$secs" = "$DUR_S" ] && echo "$GO_DURATION" || echo "${secs}s")" -timeout 5s 2>&1) || rc=$?
		CL_RPS=$(jnum achieved_rps "$CL_OUT")
		CL_SECS=$(jnum duration_s "$CL_OUT")
		CL_ERRS=$(jnum errors "$CL_OUT")
		CL_BAD=$(jnum failed "$CL_OUT")
		local ok
		ok=$(jnum ok "$CL_OUT")
		[ -n "$ok" ] && CL_REQS=$((ok + ${CL_ERRS:-0} + ${CL_BAD:-0}))
		CL_P50=$(jnum p50_us "$CL_OUT") CL_P99=$(jnum p99_us "$CL_OUT")
	fi
	CL_ERRS=${CL_ERRS:-0} CL_BAD=${CL_BAD:-0}
	[ "$rc" -eq 0 ] && [ -n "$CL_RPS" ] && [ -n "$CL_REQS" ] && [ -n "$CL_SECS" ] && [ "$CL_REQS" -gt 0 ]
}
# wrk_pct P: wrk --latency's percentile P (like 99%) from stdin, in µs.
wrk_pct() {
	awk -v p="$1" '$1 == p {v = $2; u = 1; if (v ~ /us$/) u = 1; else if (v ~ /ms$/) u = 1000; else if (v ~ /s$/) u = 1000000
		gsub(/[a-z]+$/, "", v); printf "%.0f\n", v * u; exit}'
}
closed_tool() { if [ "$HAVE_WRK" = 1 ]; then echo wrk; else echo loadgen; fi; }

# ---------------------------------------------------------------- HTTP/1.1 phase
measure_wrk() {
	local name=$1 r=$2 url=$3 t0 t1 pc0 pc1 lc0 lc1
	wait_quiet
	if [ "$WARM_S" -gt 0 ]; then closed_load "$url" "$WARM_S" || true; fi
	t0=$(ticks_of "$PID") pc0=$(core_ticks "$PROXY_CPU") lc0=$(core_ticks "$LOAD_CPU")
	if ! closed_load "$url" "$DUR_S"; then
		printf '== %s round %s (failed) ==\n%s\n' "$name" "$r" "$CL_OUT" >>"$TMP/log/wrk.log"
		problem harness "$name" wrk "$r" "$(closed_tool) failed: $(tail -2 <<<"$CL_OUT")"
		return 0
	fi
	t1=$(ticks_of "$PID") pc1=$(core_ticks "$PROXY_CPU") lc1=$(core_ticks "$LOAD_CPU")
	printf '== %s round %s ==\n%s\n' "$name" "$r" "$CL_OUT" >>"$TMP/log/wrk.log"
	local cpu="" busy="" foreign
	if [ -n "$PID" ]; then cpu=$(per_unit $((t1 - t0)) "$CL_REQS") busy=$(busy_of $((t1 - t0)) "$CL_SECS"); fi
	foreign=$(foreign_of "$pc0" "$pc1" $((t1 - t0)) "$CL_SECS")
	rec wrk "$name" "$r" tool="$(closed_tool)" rps="$CL_RPS" requests="$CL_REQS" seconds="$CL_SECS" cpu_us_per_req="$cpu" \
		proxy_busy_pct="$busy" load_busy_pct="$(core_busy "$lc0" "$lc1")" foreign_pct="$foreign" socket_errors="$CL_ERRS" non2xx="$CL_BAD"
	[ "$CL_BAD" = 0 ] || problem harness "$name" wrk "$r" "$CL_BAD answers other than 2xx of $CL_REQS"
	[ "$CL_ERRS" = 0 ] || problem load "$name" wrk "$r" "$CL_ERRS socket errors of $CL_REQS"
	check_foreign "$foreign" "$name" wrk "$r"
	log "$name round $r: wrk $(fmt "$CL_RPS" '%.0f') req/s, ${cpu:-—} µs/req"
}

measure_latency() {
	local name=$1 r=$2 url=$3 out rc=0
	wait_quiet
	out=$(taskset -c "$LOAD_CPU" "$TMP/bin/loadgen" -url "$url" -rate "$RATE" -duration "$LAT_DURATION" -warmup "$LAT_WARMUP" -conns "$LAT_CONNS" 2>&1) || rc=$?
	echo "$name round $r: $out" >>"$TMP/log/loadgen.log"
	if [ "$rc" -ne 0 ] || [ -z "$(jnum p50_us "$out")" ]; then
		problem harness "$name" latency "$r" "loadgen failed (exit $rc): $(tail -1 <<<"$out")"
		return 0
	fi
	local rss=""
	[ -n "$PID" ] && rss=$(rss_mib "$PID")
	rec latency "$name" "$r" p50_us="$(jnum p50_us "$out")" p99_us="$(jnum p99_us "$out")" p999_us="$(jnum p999_us "$out")" \
		errors="$(jnum errors "$out")" failed="$(jnum failed "$out")" achieved_rps="$(jnum achieved_rps "$out")" rss_mib="$rss" loadgen="$out"
	[ "$(jnum failed "$out")" = 0 ] || problem harness "$name" latency "$r" "$(jnum failed "$out") answers other than 200"
	[ "$(jnum errors "$out")" = 0 ] || problem load "$name" latency "$r" "$(jnum errors "$out") transport errors or timeouts"
	log "$name round $r: latency p50 $(jnum p50_us "$out") µs, p99 $(jnum p99_us "$out") µs"
}

measure_syscalls() {
	local name=$1 r=$2 url=$3 file tpid rc=0
	file=$TMP/log/syscalls-$name-$r.txt
	[ -n "$PID" ] || return 0
	wait_quiet
	if [ "$SYSCALL_TOOL" = perf ]; then
		taskset -c "$LOAD_CPU" perf stat -x, -o "$file" -e "$PERF_EVENTS" -p "$PID" >>"$TMP/log/perf.log" 2>&1 &
	else
		taskset -c "$LOAD_CPU" strace -c -f -q -o "$file" -p "$PID" >>"$TMP/log/strace.log" 2>&1 &
	fi
	tpid=$!
	PIDS+=("$tpid")
	sleep 0.5
	closed_load "$url" "$SYS_S" || rc=$?
	kill -INT "$tpid" 2>/dev/null || true
	local i
	for i in $(seq 1 100); do kill -0 "$tpid" 2>/dev/null || break; sleep 0.1; done
	stop "$tpid"
	if [ "$rc" -ne 0 ]; then
		problem harness "$name" syscalls "$r" "$(closed_tool) failed under $SYSCALL_TOOL: $(tail -2 <<<"$CL_OUT")"
		return 0
	fi
	local total counts=()
	if [ "$SYSCALL_TOOL" = perf ]; then
		total=$(awk -F, '$3 == "raw_syscalls:sys_enter" && $1 ~ /^[0-9]+$/ {print $1}' "$file" 2>/dev/null)
		mapfile -t counts < <(awk -F, -v n="$CL_REQS" '$3 ~ /^syscalls:sys_enter_/ && $1 ~ /^[0-9]+$/ && $1 > 0 {e=$3; sub(/^syscalls:sys_enter_/, "", e); printf "per_req.%s=%.4f\n", e, $1/n}' "$file" 2>/dev/null)
	else
		total=$(awk '$NF == "total" {print $4}' "$file" 2>/dev/null)
		mapfile -t counts < <(awk -v n="$CL_REQS" 'NF >= 5 && $1 ~ /^[0-9.]+$/ && $NF != "total" {printf "per_req.%s=%.4f\n", $NF, $4/n}' "$file" 2>/dev/null)
	fi
	if [ -z "$total" ]; then
		problem harness "$name" syscalls "$r" "no syscall count from $SYSCALL_TOOL ($(tail -3 "$file" 2>/dev/null | tr '\n' ' '))"
		return 0
	fi
	rec syscalls "$name" "$r" tool="$SYSCALL_TOOL" load_tool="$(closed_tool)" requests="$CL_REQS" syscalls="$total" \
		syscalls_per_req="$(awk -v a="$total" -v n="$CL_REQS" 'BEGIN {printf "%.3f", a/n}')" "${counts[@]}"
	log "$name round $r: $(awk -v a="$total" -v n="$CL_REQS" 'BEGIN {printf "%.2f", a/n}') syscalls/req ($SYSCALL_TOOL)"
}

measure_idle() {
	local name=$1 r=$2 url=$3 out ipid before after line="" i
	out=$TMP/log/idle-$name-$r.out
	[ -n "$PID" ] || return 0
	wait_quiet
	before=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status")
	taskset -c "$LOAD_CPU" "$TMP/bin/idleconns" -url "$url" -n "$IDLE_CONNS" -hold 300s -open-timeout 90s >"$out" 2>>"$TMP/log/idleconns.log" &
	ipid=$!
	PIDS+=("$ipid")
	for i in $(seq 1 1000); do
		line=$(head -1 "$out" 2>/dev/null || true)
		[ -n "$line" ] && break
		kill -0 "$ipid" 2>/dev/null || break
		sleep 0.1
	done
	if [ -z "$line" ]; then
		stop "$ipid"
		problem harness "$name" idle "$r" "idleconns gave no result ($(tail -2 "$TMP/log/idleconns.log" | tr '\n' ' '))"
		return 0
	fi
	# Let the proxy settle (goroutines parked, buffers released), then read.
	if [ "$SMOKE" = 1 ]; then sleep 0.2; else sleep 2; fi
	after=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status")
	stop "$ipid"
	local opened
	opened=$(jnum opened "$line")
	rec idle "$name" "$r" conns="$IDLE_CONNS" opened="$opened" rss_before_mib="$(awk -v k="$before" 'BEGIN {printf "%.1f", k/1024}')" \
		rss_after_mib="$(awk -v k="$after" 'BEGIN {printf "%.1f", k/1024}')" \
		kib_per_conn="$(awk -v a="$before" -v b="$after" -v n="$opened" 'BEGIN {if (n > 0) printf "%.2f", (b-a)/n}')" idleconns="$line"
	[ "$opened" = "$IDLE_CONNS" ] || problem harness "$name" idle "$r" "only $opened of $IDLE_CONNS idle connections opened: $(sed -n 's/.*"first_error":"\([^"]*\)".*/\1/p' <<<"$line")"
	log "$name round $r: $opened idle connections: RSS $((before / 1024)) -> $((after / 1024)) MiB"
}

measure_http1() {
	local name=$1 r=$2 url
	start_target "$name" http1 "$r" || return 0
	url="http://$HOST:$(http1_port "$name")/"
	if want_l wrk; then measure_wrk "$name" "$r" "$url"; fi
	if want_l latency; then measure_latency "$name" "$r" "$url"; fi
	if want_l syscalls && [ -n "$SYSCALL_TOOL" ]; then measure_syscalls "$name" "$r" "$url"; fi
	if want_l idle && [ "$IDLE_OK" = 1 ]; then measure_idle "$name" "$r" "$url"; fi
	stop_target "$name" "$r"
}

# ---------------------------------------------------------------- h2 phase
# measure_grpc NAME ROUND unary|stream
measure_grpc() {
	local name=$1 r=$2 kind=$3 out rc=0 t0 t1 pc0 pc1 lc0 lc1 extra=()
	[ "$kind" = stream ] && extra=(-stream-life 10s)
	wait_quiet
	t0=$(ticks_of "$PID") pc0=$(core_ticks "$PROXY_CPU") lc0=$(core_ticks "$LOAD_CPU")
	out=$(taskset -c "$LOAD_CPU" "$TMP/bin/grpcbench" -mode client -call "$kind" -target "$HOST:$(grpc_port "$name")" -streams "$STREAMS" \
		-duration "$GO_DURATION" -warmup "${WARM_S}s" -max "$MAX_CALLS" -size "$SIZE" "${extra[@]}" 2>&1) || rc=$?
	t1=$(ticks_of "$PID") pc1=$(core_ticks "$PROXY_CPU") lc1=$(core_ticks "$LOAD_CPU")
	echo "$name round $r $kind: $out" >>"$TMP/log/grpcbench.log"
	local calls secs
	calls=$(jnum calls "$out") secs=$(jnum duration_s "$out")
	if [ "$rc" -ne 0 ] || [ -z "$calls" ] || [ -z "$secs" ]; then
		problem harness "$name" "grpc-$kind" "$r" "grpcbench failed (exit $rc): $(tail -1 <<<"$out")"
		return 0
	fi
	local cpu="" busy="" wall
	wall=$(awk -v s="$secs" -v w="$WARM_S" 'BEGIN {print s + w}')
	if [ -n "$PID" ] && [ "$calls" -gt 0 ]; then
		# The ticks cover the warm-up too: count its calls at the measured rate.
		cpu=$(per_unit $((t1 - t0)) "$(awk -v c="$calls" -v s="$secs" -v w="$WARM_S" 'BEGIN {printf "%.0f", c*(s+w)/s}')")
		busy=$(busy_of $((t1 - t0)) "$wall")
	fi
	local foreign
	foreign=$(foreign_of "$pc0" "$pc1" $((t1 - t0)) "$wall")
	rec "grpc-$kind" "$name" "$r" calls="$calls" calls_per_s="$(jnum calls_per_s "$out")" p50_us="$(jnum p50_us "$out")" \
		p99_us="$(jnum p99_us "$out")" errors="$(jnum errors "$out")" cpu_us_per_call="$cpu" proxy_busy_pct="$busy" \
		load_busy_pct="$(core_busy "$lc0" "$lc1")" foreign_pct="$foreign" grpcbench="$out"
	[ "$(jnum errors "$out")" = 0 ] || problem harness "$name" "grpc-$kind" "$r" "$(jnum errors "$out") failed calls of $calls: $(sed -n 's/.*"first_error":"\([^"]*\)".*/\1/p' <<<"$out")"
	check_foreign "$foreign" "$name" "grpc-$kind" "$r"
	log "$name round $r: gRPC $kind $(fmt "$(jnum calls_per_s "$out")" '%.0f') calls/s, ${cpu:-—} µs/call"
}

to_us() { # h2load's 289us, 1.83ms, 2.1s
	awk -v v="$1" 'BEGIN {
		if (v ~ /us$/) { sub(/us$/, "", v); print v + 0 }
		else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 }
		else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 }
		else print "" }'
}

measure_h2load() {
	local name=$1 r=$2 url out rc=0 t0 t1 pc0 pc1 lc0 lc1
	url="http://$HOST:$(h2c_port "$name")/"
	wait_quiet
	if [ "$WARM_S" -gt 0 ]; then taskset -c "$LOAD_CPU" h2load -c "$H2_CONNS" -m "$H2_STREAMS" -D "$WARM_S" "$url" >/dev/null 2>&1 || true; fi
	t0=$(ticks_of "$PID") pc0=$(core_ticks "$PROXY_CPU") lc0=$(core_ticks "$LOAD_CPU")
	out=$(taskset -c "$LOAD_CPU" h2load -c "$H2_CONNS" -m "$H2_STREAMS" -D "$DUR_S" "$url" 2>&1) || rc=$?
	t1=$(ticks_of "$PID") pc1=$(core_ticks "$PROXY_CPU") lc1=$(core_ticks "$LOAD_CPU")
	printf '== %s round %s ==\n%s\n' "$name" "$r" "$out" >>"$TMP/log/h2load.log"
	local secs rps done_ ok failed errored non2xx mean
	secs=$(to_us "$(awk '/^finished in/ {v=$3; sub(/,$/, "", v); print v; exit}' <<<"$out")")
	rps=$(awk '/^finished in/ {print $4; exit}' <<<"$out")
	done_=$(awk '/^requests:/ {print $6; exit}' <<<"$out")
	ok=$(awk '/^requests:/ {print $8; exit}' <<<"$out")
	failed=$(awk '/^requests:/ {print $10; exit}' <<<"$out")
	errored=$(awk '/^requests:/ {print $12; exit}' <<<"$out")
	non2xx=$(awk '/^status codes:/ {n=0; for (i=5;i<=NF;i+=2) n+=$i; print n; exit}' <<<"$out")
	mean=$(to_us "$(awk '/^time for request:/ {print $6; exit}' <<<"$out")")
	if [ "$rc" -ne 0 ] || [ -z "$rps" ] || [ -z "$ok" ] || [ "${ok:-0}" -eq 0 ] || [ -z "$secs" ]; then
		problem harness "$name" h2c "$r" "h2load failed (exit $rc): $(tail -3 <<<"$out" | tr '\n' ' ')"
		return 0
	fi
	local cpu="" busy="" foreign wall
	wall=$(awk -v s="$secs" 'BEGIN {print s/1e6}')
	if [ -n "$PID" ]; then cpu=$(per_unit $((t1 - t0)) "$done_") busy=$(busy_of $((t1 - t0)) "$wall"); fi
	foreign=$(foreign_of "$pc0" "$pc1" $((t1 - t0)) "$wall")
	rec h2c "$name" "$r" rps="$rps" requests="$done_" succeeded="$ok" failed="$failed" errored="$errored" non2xx="${non2xx:-0}" \
		mean_us="$mean" cpu_us_per_req="$cpu" proxy_busy_pct="$busy" load_busy_pct="$(core_busy "$lc0" "$lc1")" foreign_pct="$foreign"
	[ "${non2xx:-0}" = 0 ] || problem harness "$name" h2c "$r" "$non2xx answers other than 2xx of $done_"
	{ [ "${failed:-0}" = 0 ] && [ "${errored:-0}" = 0 ]; } || problem load "$name" h2c "$r" "$failed failed, $errored errored of $done_"
	check_foreign "$foreign" "$name" h2c "$r"
	log "$name round $r: h2load $(fmt "$rps" '%.0f') req/s, ${cpu:-—} µs/req"
}

measure_h2() {
	local name=$1 r=$2
	start_target "$name" h2 "$r" || return 0
	if in_grpc "$name"; then
		if want_l grpc-unary; then measure_grpc "$name" "$r" unary; fi
		if want_l grpc-stream; then measure_grpc "$name" "$r" stream; fi
	fi
	if want_l h2c && [ "$HAVE_H2LOAD" = 1 ]; then measure_h2load "$name" "$r"; fi
	stop_target "$name" "$r"
}

# ---------------------------------------------------------------- async
measure_fsync() {
	local r=$1 out rc=0
	wait_quiet
	mkdir -p "$TMP/data/fsync"
	out=$(taskset -c "$PROXY_CPU" "$TMP/bin/fsyncrate" -dir "$TMP/data/fsync" -size "$ASYNC_SIZE" -duration "$GO_DURATION" -warmup "$([ "$WARM_S" -gt 0 ] && echo "${WARM_S}s" || echo 0s)" 2>&1) || rc=$?
	if [ "$rc" -ne 0 ] || [ -z "$(jnum syncs_per_s "$out")" ]; then
		problem harness fsyncrate fsync "$r" "fsyncrate failed (exit $rc): $(tail -1 <<<"$out")"
		return 0
	fi
	rec fsync fsyncrate "$r" syncs_per_s="$(jnum syncs_per_s "$out")" p50_us="$(jnum p50_us "$out")" p99_us="$(jnum p99_us "$out")" fsyncrate="$out"
	log "fsync round $r: $(fmt "$(jnum syncs_per_s "$out")" '%.0f') syncs/s"
}

# async_cmd NAME: the command that starts an async-load target (one line).
# Besides the sidecar's async route, two ceilings answer the same POSTs with
# a 202 and do nothing else: bare202, the sidecar's own HTTP/1.1 server
# (bench/bare202), and haproxy-202, HAProxy's http-request return. No spool
# can make an async route faster than the HTTP server in front of it.
async_cmd() {
	case $1 in
	sidecar-async) target_cmd sidecar-async http1 ;;
	bare202) echo "$TMP/bin/bare202 -addr $HOST:$(http1_port sidecar-async)" ;;
	haproxy-202) echo "haproxy -db -f $TMP/cfg/haproxy-202.cfg" ;;
	esac
}

# measure_async NAME ROUND: closed-loop POSTs of ASYNC_SIZE bytes at CONNS
# connections (closed_load) to NAME, pinned alone to the proxy core.
measure_async() {
	local name=$1 r=$2 port url code="" depth="" t0 t1 pc0 pc1 lc0 lc1
	port=$(http1_port sidecar-async)
	url="http://$HOST:$port/enqueue"
	rm -rf "$TMP/data/spool"
	port_free "$DOWN_PORT" || die "port $DOWN_PORT (the upstream that must stay down) is in use"
	port_free "$port" || die "port $port (for $name) is already in use"
	wait_quiet
	# shellcheck disable=SC2046
	start "$name-async" "$PROXY_CPU" $(async_cmd "$name")
	PID=$STARTED
	for _ in $(seq 1 150); do
		kill -0 "$PID" 2>/dev/null || break
		code=$(head -c "$ASYNC_SIZE" /dev/zero | curl -s -o /dev/null -w '%{http_code}' --max-time 2 -X POST --data-binary @- "$url" || true)
		[ "$code" = 202 ] && break
		sleep 0.1
	done
	if [ "$code" != 202 ]; then
		stop "$PID"
		PID=""
		problem harness "$name" async "$r" "did not start, or a test POST got ${code:-no answer}, not 202 (log/$name-async.log)"
		return 0
	fi
	CL_POST=1
	if [ "$WARM_S" -gt 0 ]; then closed_load "$url" "$WARM_S" || true; fi
	t0=$(ticks_of "$PID") pc0=$(core_ticks "$PROXY_CPU") lc0=$(core_ticks "$LOAD_CPU")
	if ! closed_load "$url" "$DUR_S"; then
		CL_POST=0
		printf '== %s round %s (failed) ==\n%s\n' "$name" "$r" "$CL_OUT" >>"$TMP/log/async.log"
		stop "$PID"
		PID=""
		problem harness "$name" async "$r" "$(closed_tool) failed: $(tail -2 <<<"$CL_OUT")"
		return 0
	fi
	t1=$(ticks_of "$PID") pc1=$(core_ticks "$PROXY_CPU") lc1=$(core_ticks "$LOAD_CPU")
	CL_POST=0
	if [ "$name" = sidecar-async ]; then
		depth=$(curl -s --max-time 5 "http://$HOST:$ADMIN_PORT/v1/spool" | tr -d ' \n' | sed -n 's/.*"total":{"depth":\([0-9]*\).*/\1/p')
	fi
	stop "$PID"
	PID=""
	rm -rf "$TMP/data/spool"
	printf '== %s round %s ==\n%s\n' "$name" "$r" "$CL_OUT" >>"$TMP/log/async.log"
	local ok=$((CL_REQS - CL_BAD)) foreign
	foreign=$(foreign_of "$pc0" "$pc1" $((t1 - t0)) "$CL_SECS")
	rec async "$name" "$r" tool="$(closed_tool)" enq_per_s="$CL_RPS" ok="$ok" requests="$CL_REQS" seconds="$CL_SECS" failed="$CL_BAD" errors="$CL_ERRS" \
		p50_us="$CL_P50" p99_us="$CL_P99" cpu_us_per_req="$(per_unit $((t1 - t0)) "$CL_REQS")" proxy_busy_pct="$(busy_of $((t1 - t0)) "$CL_SECS")" \
		load_busy_pct="$(core_busy "$lc0" "$lc1")" foreign_pct="$foreign" spool_depth="$depth"
	[ "$CL_BAD" = 0 ] || problem harness "$name" async "$r" "$CL_BAD answers other than 2xx of $CL_REQS"
	[ "$CL_ERRS" = 0 ] || problem load "$name" async "$r" "$CL_ERRS socket errors or timeouts of $CL_REQS"
	if [ -n "$depth" ] && [ "$depth" -lt "$ok" ]; then
		problem harness "$name" async "$r" "spool depth after the run ($depth) is below the 202s counted ($ok)"
	fi
	check_foreign "$foreign" "$name" async "$r"
	log "$name round $r: $(fmt "$CL_RPS" '%.0f') 202s/s, $(per_unit $((t1 - t0)) "$CL_REQS") µs/req"
}

# ---------------------------------------------------------------- main
START_S=$(date +%s)
COMMIT_LINE=$(commit_line) # now: edits made while it runs are not in this run
pick_tools
check_quiet_start
RUN_DATE=$(date -u +%Y-%m-%dT%H%M%SZ)
if [ -z "$OUT" ]; then
	OUT="$BENCH_DIR/results/$RUN_DATE"
	if [ "$SMOKE" = 1 ]; then OUT="$OUT-smoke"; fi
fi
mkdir -p "$OUT" "$BENCH_TMPDIR"
OUT=$(cd "$OUT" && pwd)
TMP=$(mktemp -d "$BENCH_TMPDIR/sidecar-run.XXXXXX")
mkdir -p "$TMP/bin" "$TMP/log"
RAW=$OUT/raw.jsonl NOTES=$OUT/notes.tsv
: >"$RAW"
: >"$NOTES"

# Open files: the idle load needs a descriptor per connection in the proxy
# and in idleconns. Raise the soft limit as far as allowed.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
MAXCONN=$((IDLE_CONNS + 1024))
[ "$MAXCONN" -ge 4096 ] || MAXCONN=4096
IDLE_OK=1
if want_l idle && [ "$NOFILE" -lt $((IDLE_CONNS + 512)) ]; then
	IDLE_OK=0
	problem info all idle 0 "the open-file limit is $NOFILE (hard $(ulimit -Hn)): too low for $IDLE_CONNS idle connections; the idle load is skipped (lower IDLE_CONNS)"
fi
[ "$(stat -f -c %T "$TMP")" != tmpfs ] || problem info sidecar-async async 0 "$BENCH_TMPDIR is a tmpfs: the spool and fsyncrate are not on a disk (set BENCH_TMPDIR)"

log "building into $TMP/bin"
(cd "$REPO" && go build -o "$TMP/bin/" ./bench/upstream ./bench/goproxy ./bench/loadgen ./bench/grpcbench ./bench/otlpsink \
	./bench/idleconns ./bench/fsyncrate ./bench/runreport ./bench/bare202) || die "the bench tools do not build"
if (cd "$REPO" && go build -o "$TMP/bin/sidecar" ./cmd/sidecar) >"$TMP/log/sidecar-build.log" 2>&1; then :; else
	for t in $TARGETS; do
		if is_sc "$t"; then problem harness "$t" build 0 "./cmd/sidecar does not build: $(grep -v '^#' "$TMP/log/sidecar-build.log" | head -1)"; fi
	done
	kept=""
	for t in $TARGETS; do is_sc "$t" || kept="$kept $t"; done
	TARGETS=${kept# }
fi
[ -n "$TARGETS" ] || die "no targets to run"
[ -n "$SYSCALL_TOOL" ] && [ "$SYSCALL_TOOL" = perf ] && PERF_EVENTS=$(perf_events)

write_configs
port_free "$UP_PORT" || die "upstream port $UP_PORT is already in use"
port_free "$UP_H2_PORT" || die "upstream port $UP_H2_PORT is already in use"
start upstream "$LOAD_CPU" "$TMP/bin/upstream" -addr "$HOST:$UP_PORT" -size "$SIZE"
wait_200 "http://$HOST:$UP_PORT/" "$STARTED" upstream || die "the upstream did not start"
NEED_H2=0 NEED_GRPC=0
for t in $TARGETS; do
	# The h2 phase checks each proxy's h2c listener (to the h2c upstream)
	# even when only gRPC is measured.
	{ want_l h2c && [ "$HAVE_H2LOAD" = 1 ] && in_h2c "$t"; } && NEED_H2=1
	{ { want_l grpc-unary || want_l grpc-stream; } && in_grpc "$t"; } && NEED_GRPC=1 NEED_H2=1
done
if [ "$NEED_H2" = 1 ]; then
	start upstream-h2c "$LOAD_CPU" "$TMP/bin/upstream" -addr "$HOST:$UP_H2_PORT" -size "$SIZE" -h2c
	wait_200 "http://$HOST:$UP_H2_PORT/" "$STARTED" upstream-h2c --http2-prior-knowledge || die "the h2c upstream did not start"
fi
if [ "$NEED_GRPC" = 1 ]; then
	port_free "$GRPC_PORT" || die "gRPC server port $GRPC_PORT is already in use"
	start grpcserver "$LOAD_CPU" "$TMP/bin/grpcbench" -mode server -addr "$HOST:$GRPC_PORT"
	wait_port "$GRPC_PORT" "$STARTED" grpcserver || die "the gRPC server did not start"
fi
SPANS=0
if want_t sidecar-traced; then
	port_free "$SINK_PORT" || die "OTLP sink port $SINK_PORT is already in use"
	start otlpsink "$LOAD_CPU" "$TMP/bin/otlpsink" -addr "$HOST:$SINK_PORT"
	wait_200 "http://$HOST:$SINK_PORT/count" "$STARTED" otlpsink || die "the OTLP sink did not start"
	SPANS=$(sink_spans)
fi

H1_LOADS=0 H2_LOADS=0
for l in wrk latency syscalls idle; do want_l "$l" && H1_LOADS=1; done
for l in h2c grpc-unary grpc-stream; do want_l "$l" && H2_LOADS=1; done
for r in $(seq 1 "$ROUNDS"); do
	log "round $r of $ROUNDS"
	if [ "$H1_LOADS" = 1 ]; then
		for t in $TARGETS; do in_http1 "$t" && measure_http1 "$t" "$r"; done
	fi
	if [ "$H2_LOADS" = 1 ]; then
		for t in $TARGETS; do
			if { in_grpc "$t" && { want_l grpc-unary || want_l grpc-stream; }; } || { in_h2c "$t" && want_l h2c && [ "$HAVE_H2LOAD" = 1 ]; }; then
				measure_h2 "$t" "$r"
			fi
		done
	fi
	if want_l async && want_t sidecar-async; then
		measure_fsync "$r"
		measure_async sidecar-async "$r"
		measure_async bare202 "$r"
		if command -v haproxy >/dev/null; then measure_async haproxy-202 "$r"; fi
	fi
done

# ---------------------------------------------------------------- report
ver() { "$@" 2>&1 | head -1 || true; }
versions="$(go version | cut -d' ' -f3-), grpc-go $(cd "$REPO" && go list -m -f '{{.Version}}' google.golang.org/grpc 2>/dev/null || echo '?')"
[ "$HAVE_WRK" = 1 ] && versions="$versions, $(ver wrk -v | cut -d' ' -f1-2)"
[ "$HAVE_H2LOAD" = 1 ] && versions="$versions, $(ver h2load --version)"
command -v haproxy >/dev/null && versions="$versions, $(ver haproxy -v | cut -d' ' -f1-3)"
command -v nginx >/dev/null && versions="$versions, $(ver nginx -v | cut -d: -f2- | sed 's/^ //')"
command -v caddy >/dev/null && versions="$versions, caddy $(ver caddy version | cut -d' ' -f1)"
[ -n "$SYSCALL_TOOL" ] && versions="$versions, $(ver "$SYSCALL_TOOL" --version)"
# shellcheck disable=SC2016 # backquotes are markdown
{
	printf 'date\t%s, took %s\n' "$(date -u -d "@$START_S" '+%Y-%m-%d %H:%M UTC')" "$(awk -v s="$(($(date +%s) - START_S))" 'BEGIN {if (s < 120) printf "%d s", s; else printf "%.0f minutes", s/60}')"
	printf 'command\t`%s`\n' "$COMMAND"
	printf 'commit\t%s\n' "$COMMIT_LINE"
	printf 'machine\t%s\n' "$(machine_line)"
	printf 'versions\t%s\n' "$versions"
	printf 'background load before the run\t%s%% of one core\n' "$BG_LOAD"
	printf 'disk under the spool and fsyncrate\t%s\n' "$(findmnt -n -o SOURCE,FSTYPE --target "$TMP" 2>/dev/null | tr -s ' ' || stat -f -c %T "$TMP")"
	printf 'placement\tthe proxy under test alone on core %s (`taskset -c %s`; Go programs see one CPU, Caddy also gets GOMAXPROCS=1, HAProxy nbthread 1, nginx one process); every load generator, the upstreams, the gRPC server and the OTLP sink on core %s\n' "$PROXY_CPU" "$PROXY_CPU" "$LOAD_CPU"
	printf 'rounds\t%s, targets interleaved, each target started fresh per round and phase; medians over rounds\n' "$ROUNDS"
	printf 'load wrk\t`%s` after a %ss warm-up; CPU µs/req = the proxy'"'"'s utime+stime (/proc/PID/stat) / requests\n' \
		"$([ "$HAVE_WRK" = 1 ] && echo "wrk -t1 -c$CONNS -d${DUR_S}s --timeout 5s URL" || echo "loadgen -closed -conns $CONNS -duration $GO_DURATION URL")" "$WARM_S"
	printf 'load latency\t`loadgen -url URL -rate %s -duration %s -warmup %s -conns %s` (open loop, from each request'"'"'s scheduled time); added = target − direct\n' "$RATE" "$LAT_DURATION" "$LAT_WARMUP" "$LAT_CONNS"
	if [ -n "$SYSCALL_TOOL" ]; then
		if [ "$SYSCALL_TOOL" = perf ]; then
			printf 'load syscalls\t`perf stat -e raw_syscalls:sys_enter,syscalls:sys_enter_<each of %s> -p PID` around a %ss closed-loop run like the wrk load; syscalls / requests\n' "$(echo "$SYSCALLS_TRACED" | wc -w) common ones" "$SYS_S"
		else
			printf 'load syscalls\t`strace -c -f -p PID` around a %ss closed-loop run like the wrk load (strace slows the proxy; only counts are used); syscalls / requests\n' "$SYS_S"
		fi
	fi
	printf 'load idle\t`idleconns -url URL -n %s`: that many keep-alive connections, one GET each, then idle; VmRSS before and %s s after they are all open\n' "$IDLE_CONNS" "$([ "$SMOKE" = 1 ] && echo 0.2 || echo 2)"
	[ "$HAVE_H2LOAD" = 1 ] && printf 'load h2c\t`h2load -c %s -m %s -D %s URL` after a %ss warm-up (h2c GETs; the proxies speak HTTP/1.1 to the upstream)\n' "$H2_CONNS" "$H2_STREAMS" "$DUR_S" "$WARM_S"
	printf 'load grpc\t`grpcbench -mode client -call unary|stream -streams %s -duration %s -warmup %ss -size %s` (stream: ping-pong on %s bidi streams, each replaced every 10 s); CPU per call counts the warm-up'"'"'s calls at the measured rate\n' "$STREAMS" "$GO_DURATION" "$WARM_S" "$SIZE" "$STREAMS"
	printf 'load async\t`loadgen -closed -method POST -body-size %s -expect 202 -conns %s -warmup %ss -duration %s` to an async route (when: always, file spool, fsync: always, upstream down); fsync rate: `fsyncrate -size %s -duration %s` on the proxy core, same disk\n' "$ASYNC_SIZE" "$CONNS" "$WARM_S" "$GO_DURATION" "$ASYNC_SIZE" "$GO_DURATION"
	for t in $TARGETS; do
		case $t in
		direct) printf 'target\tdirect: the loads straight to `upstream -size %s` (HTTP/1.1; `-h2c` for h2c) and to `grpcbench -mode server`\n' "$SIZE" ;;
		*)
			ph=http1
			cfgs=""
			case $t in
			sidecar-default) cfgs="bench/sidecar.yaml, bench/sidecar-h2.yaml as they are (built-in default policy, metrics on)" ;;
			sidecar-policies) cfgs="bench/sidecar.yaml, bench/sidecar-h2.yaml plus a default policy: timeout, per-try timeout, retry with budget, circuit breaker, rate limit and max_in_flight, none limiting (metrics on)" ;;
			sidecar-traced) cfgs="as sidecar-policies plus \`$(sidecar_telemetry sidecar-traced)\`, to bench/otlpsink" ;;
			sidecar-async) cfgs="one async route, written by the script" ;;
			haproxy) cfgs="bench/haproxy.cfg, bench/haproxy-h2.cfg" ;;
			nginx) cfgs="bench/nginx.conf, bench/nginx-h2.conf" ;;
			caddy) cfgs="bench/Caddyfile" ;;
			goproxy-pool) cfgs="bench/goproxy" ;;
			esac
			printf 'target\t%s: `taskset -c %s %s` (%s)\n' "$t" "$PROXY_CPU" "$(target_cmd "$t" "$ph" | sed "s|$TMP|\$TMP|g")" "$cfgs" ;;
		esac
	done
	if [ "$MAXCONN" -gt 4096 ]; then
		printf 'maxconn\tHAProxy maxconn and nginx worker_connections raised from the templates'"'"' 4096 to %s for the idle connections\n' "$MAXCONN"
	fi
} >"$OUT/meta.tsv"

SMOKE_FLAG=()
[ "$SMOKE" = 1 ] && SMOKE_FLAG=(-smoke)
"$TMP/bin/runreport" -dir "$OUT" "${SMOKE_FLAG[@]}" || die "runreport failed: the raw records are malformed"
cat "$OUT/summary.md"
log "report: $OUT/summary.md and summary.json (raw: raw.jsonl) in $(($(date +%s) - START_S)) s"
