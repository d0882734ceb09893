# shellcheck shell=bash
# Shared helpers for the bench scripts (bench/http1.sh, bench/h2.sh).
# Source it after setting LOG_TAG, HOST, KEEP_TMP and WAIT_QUIET:
#
#   . "$BENCH_DIR/lib.sh"
#
# It installs the EXIT/INT/TERM traps that kill every process started with
# `start` and remove $TMP (kept with KEEP_TMP=1 or on failure).

log() { printf '[%s] %s\n' "${LOG_TAG:-bench}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- tools
# ensure_packages CMD:PACKAGE...: apt-get install the PACKAGE of every CMD
# that is not on PATH (needs root), with a temporary policy-rc.d so Debian
# does not start the installed servers (nginx, haproxy) as services.
ensure_packages() {
	local missing=() pair
	command -v go >/dev/null || die "go is not on PATH"
	for pair in "$@"; do
		command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing missing packages: ${missing[*]}"
	[ "$(id -u)" -eq 0 ] || die "need root to apt-get install ${missing[*]}"
	local policy=/usr/sbin/policy-rc.d made_policy=0
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
	fi
	local rc=0
	{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"; } >&2 || rc=$?
	[ "$made_policy" -eq 1 ] && rm -f "$policy"
	[ "$rc" -eq 0 ] || die "apt-get install ${missing[*]} failed (exit $rc)"
	for pair in "$@"; do
		command -v "${pair%%:*}" >/dev/null || die "${pair%%:*} still missing after install"
	done
}

# ---------------------------------------------------------------- processes
PIDS=()
TMP=""
STATUS=0
cleanup() {
	STATUS=${STATUS:-$?}
	local pid
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [ -n "$TMP" ] && [ -d "$TMP" ]; then
		if [ "$KEEP_TMP" = 1 ] || [ "$STATUS" -ne 0 ]; then
			log "temp dir kept: $TMP"
		else
			rm -rf "$TMP"
		fi
	fi
}
trap 'STATUS=$?; cleanup' EXIT
trap 'STATUS=130; exit 130' INT TERM

# start NAME CPU CMD... : run CMD pinned to CPU in the background; sets $STARTED.
start() {
	local name=$1 cpu=$2
	shift 2
	taskset -c "$cpu" "$@" >>"$TMP/log/$name.log" 2>&1 &
	STARTED=$!
	PIDS+=("$STARTED")
}

stop() {
	local pid=$1
	kill "$pid" 2>/dev/null || true
	for _ in $(seq 1 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	local keep=() p
	for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
	PIDS=("${keep[@]+"${keep[@]}"}")
}

port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# wait_200 URL PID NAME [CURL_OPTS...]: wait up to 15 s for URL to answer
# 200; returns 1 (after showing the end of NAME's log) if it does not or
# NAME exits.
wait_200() {
	local url=$1 pid=$2 name=$3 code=""
	shift 3
	for _ in $(seq 1 150); do
		if ! kill -0 "$pid" 2>/dev/null; then
			tail -20 "$TMP/log/$name.log" >&2
			log "$name exited during startup"
			return 1
		fi
		code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" || true)
		[ "$code" = 200 ] && return 0
		sleep 0.1
	done
	tail -20 "$TMP/log/$name.log" >&2
	log "$name: $url did not answer 200 within 15 s (last: $code)"
	return 1
}

# wait_port PORT PID NAME: wait up to 15 s for a TCP listener on HOST:PORT.
wait_port() {
	local port=$1 pid=$2 name=$3
	for _ in $(seq 1 150); do
		if ! kill -0 "$pid" 2>/dev/null; then
			tail -20 "$TMP/log/$name.log" >&2
			log "$name exited during startup"
			return 1
		fi
		port_free "$port" || return 0
		sleep 0.1
	done
	tail -20 "$TMP/log/$name.log" >&2
	log "$name: nothing listens on $HOST:$port after 15 s"
	return 1
}

# ---------------------------------------------------------------- measuring
CLK_TCK=$(getconf CLK_TCK)

cpu_ticks() { # utime+stime of PID, in clock ticks
	local stat rest
	stat=$(cat "/proc/$1/stat")
	rest=${stat##*) }
	# shellcheck disable=SC2086
	set -- $rest
	echo $((${12} + ${13}))
}

core_ticks() { # "busy total" ticks of one core from /proc/stat
	awk -v c="cpu$1" '$1 == c {b=$2+$3+$4+$7+$8+$9; print b, b+$5+$6; exit}' /proc/stat
}

# core_busy "BUSY0 TOTAL0" "BUSY1 TOTAL1": % busy between two core_ticks.
core_busy() {
	awk -v a="$1" -v b="$2" 'BEGIN {split(a, x, " "); split(b, y, " "); t = y[2]-x[2]; printf "%.0f\n", (t > 0 ? 100*(y[1]-x[1])/t : 0)}'
}

rss_mib() { awk '/^VmRSS:/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

median() { # median of the numbers in FILE (mean of the middle two if even)
	sort -g "$1" | awk '{v[NR]=$1} END {if (NR==0) {print "n/a"; exit} if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
}

# background_load: % of one core used by the whole machine over 1 s.
background_load() {
	local a b
	a=$(awk '$1 == "cpu" {print $2+$3+$4+$7+$8+$9; exit}' /proc/stat)
	sleep 1
	b=$(awk '$1 == "cpu" {print $2+$3+$4+$7+$8+$9; exit}' /proc/stat)
	echo $(((b - a) * 100 / CLK_TCK))
}

# wait_quiet: wait up to WAIT_QUIET s for the machine to be quiet.
wait_quiet() {
	local waited=0 load
	[ "$WAIT_QUIET" -gt 0 ] || return 0
	while :; do
		load=$(background_load)
		[ "$load" -le 10 ] && return 0
		waited=$((waited + 1))
		if [ "$waited" -ge "$WAIT_QUIET" ]; then
			log "machine still busy (${load}% of a core) after ${WAIT_QUIET}s; measuring anyway"
			return 0
		fi
		[ "$waited" -eq 1 ] && log "waiting for the machine to be quiet (${load}% of a core busy)"
	done
}

# check_quiet_start: measure the background load before the run into BG_LOAD
# and warn (with the top processes) if the machine is busy.
check_quiet_start() {
	BG_LOAD=$(background_load)
	if [ "$BG_LOAD" -gt 10 ]; then
		log "WARNING: the machine is not quiet: ${BG_LOAD}% of a core busy before the run; results will be disturbed"
		ps -eo pid,pcpu,comm --sort=-pcpu | head -5 >&2
	fi
	[ "$(nproc)" -ge 2 ] || log "WARNING: fewer than 2 cores; load generator and proxy will share a core"
}

# Report helpers: med NAME KEY reads $TMP/res/NAME.KEY.
med() { if [ -s "$TMP/res/$1.$2" ]; then median "$TMP/res/$1.$2"; else echo "n/a"; fi; }
fmt() { awk -v v="$1" -v f="$2" 'BEGIN {if (v == "n/a" || v == "") print "—"; else printf f, v}'; }
sub_() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "n/a" || b == "n/a") print "n/a"; else print a - b}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "n/a" || b == "n/a" || b == 0) print "n/a"; else printf "%.2f", a / b}'; }

machine_line() {
	echo "$(lscpu | grep 'Model name' | sed 's/  */ /g'), $(nproc) cores, kernel $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
}

commit_line() {
	local dirty=""
	if [ -n "$(cd "$REPO" && git status --porcelain 2>/dev/null)" ]; then dirty=" (dirty tree)"; fi
	echo "$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo 'none')$dirty"
}

# ---------------------------------------------------------------- sidecar variants
# The sidecar targets: sidecar (the template as is: metrics on, the
# default), sidecar-nometrics (telemetry off: no metrics, no traces) and
# sidecar-traced (metrics plus every request traced over OTLP/HTTP to
# bench/otlpsink).
is_sidecar() { case $1 in sidecar | sidecar-nometrics | sidecar-traced) return 0 ;; esac; return 1; }

# sidecar_telemetry NAME: the telemetry block appended to NAME's rendered
# config (nothing for plain sidecar).
sidecar_telemetry() {
	case $1 in
	sidecar-nometrics) echo "telemetry: {metrics: {prometheus: false}}" ;;
	sidecar-traced) echo "telemetry: {traces: {exporter: otlp, sample_ratio: 1}}" ;;
	esac
}

# sidecar_env NAME: the environment NAME runs with, as `env VAR=...` words
# (nothing for the untraced variants). Needs SINK_PORT.
sidecar_env() {
	[ "$1" = sidecar-traced ] || return 0
	echo "env OTEL_EXPORTER_OTLP_ENDPOINT=http://$HOST:$SINK_PORT OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"
}

# sink_spans: the spans bench/otlpsink has received so far ("" if it does
# not answer).
sink_spans() { curl -s --max-time 2 "http://$HOST:$SINK_PORT/count" || true; }

# served_requests: requests the running sidecar counted (the _count of
# http_server_request_duration_seconds on its admin /metrics).
served_requests() {
	curl -s --max-time 5 "http://$HOST:$ADMIN_PORT/metrics" |
		awk '/^http_server_request_duration_seconds_count/ {s += $NF} END {printf "%.0f\n", s}'
}

# tel_bar WHAT A B BAR [PRE] [SUF] [UNIT]: one line of the telemetry bars:
# median CPU per request of target A over target B's (keys PRE A SUF and
# PRE B SUF under $TMP/res, file .cpu) against BAR, with PASS or FAIL.
# Prints nothing when either was not measured.
tel_bar() {
	local what=$1 a=$2 b=$3 bar=$4 pre=${5:-} suf=${6:-} unit=${7:-µs/req} va vb r verdict
	va=$(med "$pre$a$suf" cpu)
	vb=$(med "$pre$b$suf" cpu)
	[ "$va" = n/a ] || [ "$vb" = n/a ] && return 0
	r=$(awk -v a="$va" -v b="$vb" 'BEGIN {if (b > 0) printf "%.3f", a / b; else print "n/a"}')
	verdict=$(awk -v r="$r" -v m="$bar" 'BEGIN {print (r != "n/a" && r <= m) ? "PASS" : "FAIL"}')
	if grep -qx -e "$pre$a$suf" -e "$pre$b$suf" "$TMP/res/bad"; then verdict="$verdict (⚠ errors in a round: see Errors seen)"; fi
	echo "- $what: $a CPU $unit / $b CPU $unit = $(fmt "$va" '%.1f') / $(fmt "$vb" '%.1f') = $r (bar ≤ $bar): $verdict"
}
