#!/usr/bin/env bash
# Durable enqueue benchmark (issue 6): 1 KiB messages made durable with
# fsync per acknowledgement, at 1, 16 and 64 concurrent producers, measured
# in ONE run on the same disk:
#
#   fsync       the disk's raw single-writer rate: write 1 KiB + fdatasync,
#               back to back (bench/fsyncrate): the physical limit without
#               group commit
#   store       the spool's Store level: go test ./spool -bench Append
#               (spool/bench_test.go, FsyncAlways, producers 1/16/64)
#   sidecar     the sidecar binary end to end: POST 1 KiB to an async route
#               (when: always, spool fsync: always) whose upstream is down,
#               closed-loop producers (bench/loadgen -closed), only 202s count
#   js-default  NATS JetStream (nats-server, file storage, 1 replica), sync
#               publishes waiting for the PubAck (bench/jsload), the server's
#               default sync: it acks BEFORE any fsync (not durable on ack)
#   js-always   the same with `sync_interval: always` (durable on ack; only
#               nats-server 2.10 and later know it: older servers refuse the
#               config, and the row says so)
#   sidecar-js-default, sidecar-js-always
#               the sidecar end to end as above, with spool.backend
#               jetstream on that nats-server (default sync, or sync_interval:
#               always), both pinned to the server core (not in the default
#               TARGETS)
#
#   bench/spool-enqueue.sh                     # 10 s per measurement, ~3 minutes
#   DURATION=2s WARMUP=1s bench/spool-enqueue.sh   # smoke run
#   TARGETS="fsync sidecar" PRODUCERS="64" bench/spool-enqueue.sh
#
# Knobs (environment):
#   DURATION=10s    measured time of every measurement (the Store benchmark
#                   gets it as -benchtime per producer count)
#   WARMUP=2s       unrecorded load before each measurement
#   ROUNDS=1        rounds; targets interleaved; the table shows medians
#   PRODUCERS="1 16 64"
#   SIZE=1024       message / body size in bytes
#   TARGETS="fsync store sidecar js-default js-always"
#   LOAD_CPU=0      core for the load generators
#   SERVER_CPU=1    core for the sidecar, nats-server and fsyncrate
#   PORT_BASE=18400 ports: +1 sidecar app, +2 sidecar admin, +3 the closed
#                   (down) upstream port, +22 nats-server
#   BENCH_TMPDIR    where the run's temp dir (every spool, stream store and
#                   fsync file) goes; default $TMPDIR or /var/tmp. It must be
#                   on the disk under test: a tmpfs is refused
#   LOADGEN=loadgen the sidecar's load generator: loadgen (Go, closed loop)
#                   or wrk (C, one connection per producer, a Lua script
#                   POSTs the body; much cheaper per request, so the sidecar
#                   rather than the generator is what saturates)
#   NATS_SERVER=nats-server   the server binary (a newer one can be named)
#   JS_MSGID=0      1: every JetStream publish carries a unique Nats-Msg-Id
#   OUT             report file; default bench/results/spool-enqueue-DATE-TIME.md
#                   (the raw JSON lines go next to it, .jsonl)
#   KEEP_TMP=1      keep the temp dir (binaries, configs, logs)
#   WAIT_QUIET=30   before each measurement wait up to this many seconds for
#                   the machine to be quiet (<10% of a core busy); 0: never
#
# Only 127.0.0.1 is ever contacted. Every process this script starts is killed
# on exit, and the temp dir removed (unless KEEP_TMP=1 or the run failed).
set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-1}
PRODUCERS=${PRODUCERS:-"1 16 64"}
SIZE=${SIZE:-1024}
TARGETS=${TARGETS:-"fsync store sidecar js-default js-always"}
LOAD_CPU=${LOAD_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
PORT_BASE=${PORT_BASE:-18400}
BENCH_TMPDIR=${BENCH_TMPDIR:-${TMPDIR:-/var/tmp}}
NATS_SERVER=${NATS_SERVER:-nats-server}
LOADGEN=${LOADGEN:-loadgen}
JS_MSGID=${JS_MSGID:-0}
OUT=${OUT:-}
KEEP_TMP=${KEEP_TMP:-0}
WAIT_QUIET=${WAIT_QUIET:-30}

export PATH="$PATH:/usr/sbin:/sbin"
HOST=127.0.0.1
APP_PORT=$((PORT_BASE + 1))
ADMIN_PORT=$((PORT_BASE + 2))
DOWN_PORT=$((PORT_BASE + 3))
NATS_PORT=$((PORT_BASE + 22))

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
COMMAND="DURATION=$DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS PRODUCERS=\"$PRODUCERS\" SIZE=$SIZE LOADGEN=$LOADGEN JS_MSGID=$JS_MSGID WAIT_QUIET=$WAIT_QUIET bench/spool-enqueue.sh"

LOG_TAG=spool-enqueue
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$BENCH_DIR/lib.sh"

secs() { # Go duration (10s, 1500ms, 1m) -> seconds
	awk -v d="$1" 'BEGIN {
		if (d ~ /ms$/) { sub(/ms$/, "", d); print d / 1000; exit }
		if (d ~ /m$/) { sub(/m$/, "", d); print d * 60; exit }
		sub(/s$/, "", d); print d + 0 }'
}

json_num() { # json_num KEY JSONLINE: the number at "KEY": in JSONLINE
	printf '%s\n' "$2" | sed -n "s/.*\"$1\":\\(-\\{0,1\\}[0-9.e+]*\\).*/\\1/p" | head -1
}

# ---------------------------------------------------------------- disk
# disk_flushes: flush requests completed by the block device under $TMP
# (field 16 of /sys/class/block/DEV/stat), or "n/a". It counts every
# process's flushes, so it is only meaningful on a quiet machine.
FLUSH_STAT=""
find_flush_stat() {
	local src dev
	src=$(findmnt -n -o SOURCE --target "$TMP" 2>/dev/null || true)
	dev=$(basename "${src:-none}")
	if [ -r "/sys/class/block/$dev/stat" ] && [ "$(wc -w <"/sys/class/block/$dev/stat")" -ge 17 ]; then
		FLUSH_STAT=/sys/class/block/$dev/stat
	fi
}
disk_flushes() {
	if [ -n "$FLUSH_STAT" ]; then awk '{print $16}' "$FLUSH_STAT"; else echo n/a; fi
}
per_sec() { # per_sec A B SECONDS
	awk -v a="$1" -v b="$2" -v s="$3" 'BEGIN {if (a == "n/a" || b == "n/a" || s <= 0) print "n/a"; else printf "%.0f\n", (b - a) / s}'
}

# record NAME KEY VALUE: one value of one round.
record() {
	if [ -n "$3" ] && [ "$3" != n/a ]; then echo "$3" >>"$TMP/res/$1.$2"; fi
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f\n", b - a}'; }

busy_pct() { # busy_pct TICKS0 TICKS1 SECONDS: % of one core
	awk -v a="$1" -v b="$2" -v s="$3" -v hz="$CLK_TCK" 'BEGIN {if (s <= 0) print "n/a"; else printf "%.0f\n", 100 * (b - a) / hz / s}'
}

# ---------------------------------------------------------------- targets
measure_fsync() {
	local r=$1 out f0 f1 t0 t1
	wait_quiet
	mkdir -p "$TMP/data/fsync"
	f0=$(disk_flushes)
	t0=$(now)
	out=$(taskset -c "$SERVER_CPU" "$TMP/bin/fsyncrate" -dir "$TMP/data/fsync" -size "$SIZE" -duration "$DURATION" -warmup "$WARMUP")
	t1=$(now)
	f1=$(disk_flushes)
	echo "{\"target\":\"fsync\",\"round\":$r,\"result\":$out}" >>"$TMP/res/raw.jsonl"
	record fsync rate "$(json_num syncs_per_s "$out")"
	record fsync p50 "$(json_num p50_us "$out")"
	record fsync p99 "$(json_num p99_us "$out")"
	record fsync flush "$(per_sec "$f0" "$f1" "$(elapsed "$t0" "$t1")")"
	log "fsync round $r: $(json_num syncs_per_s "$out") syncs/s, p50 $(json_num p50_us "$out") µs"
}

STORE_NOTE=""
measure_store() {
	local r=$1 out line p rate per_sync
	if [ ! -x "$TMP/bin/spool.test" ]; then return 0; fi
	wait_quiet
	mkdir -p "$TMP/data/store"
	# b.TempDir() follows TMPDIR: the store's files land on the same disk.
	if ! out=$(cd "$REPO/spool" && TMPDIR="$TMP/data/store" "$TMP/bin/spool.test" -test.run '^$' -test.bench '^BenchmarkAppend$' -test.benchtime "$DURATION" 2>&1); then
		printf '%s\n' "$out" >>"$TMP/log/store.log"
		echo "store round $r: go test -bench Append failed (see log/store.log)" >>"$TMP/res/notes"
		return 0
	fi
	printf '== round %s ==\n%s\n' "$r" "$out" >>"$TMP/log/store.log"
	while read -r line; do
		p=$(printf '%s\n' "$line" | sed -n 's/^BenchmarkAppend\/producers=\([0-9]*\).*/\1/p')
		[ -n "$p" ] || continue
		rate=$(printf '%s\n' "$line" | awk '{for (i = 2; i <= NF; i++) if ($i == "msgs/s") print $(i-1)}')
		per_sync=$(printf '%s\n' "$line" | awk '{for (i = 2; i <= NF; i++) if ($i == "msgs/sync") print $(i-1)}')
		record "store-$p" rate "$rate"
		record "store-$p" persync "$per_sync"
		echo "{\"target\":\"store\",\"round\":$r,\"producers\":$p,\"line\":\"$line\"}" >>"$TMP/res/raw.jsonl"
		log "store round $r, $p producers: $rate msgs/s, $per_sync msgs/sync"
	done <<<"$out"
}

write_sidecar_config() { # write_sidecar_config SPOOLDIR [jetstream]
	local backend=""
	[ "${2:-}" = jetstream ] && backend="backend: jetstream, jetstream: {url: \"nats://$HOST:$NATS_PORT\", stream: BENCH_SPOOL, replicas: 1}, "
	cat >"$TMP/sidecar.yaml" <<EOF
# spool-enqueue.sh: one async route, when: always, upstream down.
version: 1
admin: {address: "$HOST:$ADMIN_PORT"}
spool: {${backend}dir: "$1", fsync: always, max_bytes: 16GiB, max_messages: 100000000}
upstreams:
  down: {endpoints: ["http://$HOST:$DOWN_PORT"], connect_timeout: 200ms}
listeners:
  - name: app
    address: "$HOST:$APP_PORT"
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
}

# wrk_post P: P connections POSTing SIZE bytes for WARMUP (unrecorded), then
# DURATION; prints loadgen's JSON fields (achieved_rps, p50_us, p99_us, ok,
# failed, errors).
wrk_post() {
	local p=$1 script="$TMP/post.lua" txt
	printf 'wrk.method = "POST"\nwrk.body = string.rep("x", %d)\nwrk.headers["Content-Type"] = "application/octet-stream"\n' "$SIZE" >"$script"
	taskset -c "$LOAD_CPU" wrk -t1 -c"$p" -d"$WARMUP" -s "$script" "http://$HOST:$APP_PORT/enqueue" >/dev/null 2>&1 || true
	txt=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$p" -d"$DURATION" --latency --timeout 10s -s "$script" "http://$HOST:$APP_PORT/enqueue")
	printf '%s\n' "$txt" >>"$TMP/res/wrk.txt"
	printf '%s\n' "$txt" | awk '
		function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1000000; return v }
		/^ +50%/ { p50 = us($2) } /^ +99%/ { p99 = us($2) }
		/requests in/ { n = $1 } /^Requests\/sec:/ { rps = $2 }
		/Non-2xx or 3xx responses:/ { bad = $NF }
		/Socket errors:/ { e = 0; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) e += $i + 0; errs = e }
		END { printf "{\"achieved_rps\":%s,\"p50_us\":%.0f,\"p99_us\":%.0f,\"ok\":%d,\"failed\":%d,\"errors\":%d,\"loadgen\":\"wrk\"}\n", rps + 0, p50, p99, n - bad, bad + 0, errs + 0 }'
}

measure_sidecar() { # measure_sidecar ROUND PRODUCERS [default|always: the JetStream backend]
	local r=$1 p=$2 js=${3:-}
	local pid out t0 t1 c0 c1 f0 f1 w0 w1 code depth name="sidecar-$p" npid="" nc0=0 target=sidecar
	wait_quiet
	rm -rf "$TMP/data/sidecar"
	if [ -n "$js" ]; then
		name="sidecar-js-$js-$p" target="sidecar-js-$js"
		start_nats "$js" || return 0
		npid=$STARTED
		write_sidecar_config "$TMP/data/sidecar" jetstream
	else
		write_sidecar_config "$TMP/data/sidecar"
	fi
	port_free "$APP_PORT" || die "port $APP_PORT is already in use"
	port_free "$ADMIN_PORT" || die "port $ADMIN_PORT is already in use"
	port_free "$DOWN_PORT" || die "port $DOWN_PORT (the upstream that must stay down) is in use"
	start sidecar "$SERVER_CPU" "$TMP/bin/sidecar" run -config "$TMP/sidecar.yaml"
	pid=$STARTED
	if ! wait_200 "http://$HOST:$ADMIN_PORT/readyz" "$pid" sidecar; then
		stop "$pid"
		[ -z "$npid" ] || stop "$npid"
		echo "$name round $r: the sidecar did not start (see log/sidecar.log)" >>"$TMP/res/notes"
		return 0
	fi
	code=$(head -c "$SIZE" /dev/zero | curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST --data-binary @- "http://$HOST:$APP_PORT/enqueue" || true)
	if [ "$code" != 202 ]; then
		stop "$pid"
		[ -z "$npid" ] || stop "$npid"
		echo "$name round $r: a test POST got $code, not 202 (see log/sidecar.log)" >>"$TMP/res/notes"
		return 0
	fi
	w0=$(now)
	f0=$(disk_flushes)
	c0=$(cpu_ticks "$pid")
	[ -z "$npid" ] || nc0=$(cpu_ticks "$npid")
	if [ "$LOADGEN" = wrk ]; then
		out=$(wrk_post "$p")
	else
		out=$(taskset -c "$LOAD_CPU" "$TMP/bin/loadgen" -closed -method POST -body-size "$SIZE" -expect 202 \
			-url "http://$HOST:$APP_PORT/enqueue" -conns "$p" -warmup "$WARMUP" -duration "$DURATION" -timeout 10s)
	fi
	c1=$(cpu_ticks "$pid")
	[ -z "$npid" ] || { c0=$((c0 + nc0)); c1=$((c1 + $(cpu_ticks "$npid"))); }
	f1=$(disk_flushes)
	w1=$(now)
	depth=$(curl -s --max-time 5 "http://$HOST:$ADMIN_PORT/v1/spool" | tr -d ' \n' | sed -n 's/.*"total":{"depth":\([0-9]*\).*/\1/p')
	stop "$pid"
	[ -z "$npid" ] || stop "$npid"
	rm -rf "$TMP/data/sidecar" "$TMP/data/js"
	echo "{\"target\":\"$target\",\"round\":$r,\"producers\":$p,\"spool_depth_after\":${depth:-null},\"result\":$out}" >>"$TMP/res/raw.jsonl"
	t0=$(elapsed "$w0" "$w1")
	record "$name" rate "$(json_num achieved_rps "$out")"
	record "$name" p50 "$(json_num p50_us "$out")"
	record "$name" p99 "$(json_num p99_us "$out")"
	# Whole loadgen run (warm-up included): flushes and CPU per second.
	record "$name" flush "$(per_sec "$f0" "$f1" "$t0")"
	record "$name" busy "$(busy_pct "$c0" "$c1" "$t0")"
	t1=$(json_num failed "$out")
	if [ "${t1:-0}" != 0 ] || [ "$(json_num errors "$out")" != 0 ]; then
		echo "$name round $r: $(json_num errors "$out") transport errors, $t1 answers other than 202: $(printf '%s' "$out" | sed -n 's/.*"statuses":\({[^}]*}\).*/\1/p')$(printf '%s' "$out" | sed -n 's/.*"first_error":"\([^"]*\)".*/; first error: \1/p')" >>"$TMP/res/notes"
	fi
	if [ -n "$depth" ] && [ "$depth" -lt "$(json_num ok "$out")" ]; then
		echo "$name round $r: spool depth after the run ($depth) is below the 202s counted ($(json_num ok "$out"))" >>"$TMP/res/notes"
	fi
	log "$name round $r: $(json_num achieved_rps "$out") enqueues/s, p50 $(json_num p50_us "$out") µs, p99 $(json_num p99_us "$out") µs, spool depth after: ${depth:-?}"
}

JS_VERSION=""
declare -A JS_NOTE=()
# start_nats MODE: a fresh nats-server (default or always sync) with
# JetStream on the run's disk, pinned to SERVER_CPU; sets STARTED to its
# pid, or fails with JS_NOTE[MODE] set.
start_nats() {
	local mode=$1 sync_line=""
	[ "$mode" = always ] && sync_line="  sync_interval: always"
	rm -rf "$TMP/data/js"
	mkdir -p "$TMP/data/js"
	cat >"$TMP/nats-$mode.conf" <<EOF
# spool-enqueue.sh: JetStream with file storage under the run's temp dir.
listen: $HOST:$NATS_PORT
jetstream {
  store_dir: "$TMP/data/js"
  max_file_store: 64GB
$sync_line
}
EOF
	port_free "$NATS_PORT" || die "port $NATS_PORT is already in use"
	start "nats-$mode" "$SERVER_CPU" "$NATS_SERVER" -c "$TMP/nats-$mode.conf"
	if ! wait_port "$NATS_PORT" "$STARTED" "nats-$mode" 2>>"$TMP/log/nats-$mode.startup"; then
		stop "$STARTED"
		if grep -q 'unknown field "sync_interval"' "$TMP/log/nats-$mode.log"; then
			JS_NOTE[$mode]="nats-server $JS_VERSION refuses \`sync_interval\` (unknown field): it has no per-write fsync option; sync_interval arrived in 2.10"
		else
			JS_NOTE[$mode]="nats-server did not start (see log/nats-$mode.log)"
		fi
		log "js-$mode: ${JS_NOTE[$mode]}"
		return 1
	fi
}

measure_js() {
	local r=$1 mode=$2 name pid out p t0 w0 w1 c0 c1 f0 f1
	start_nats "$mode" || return 0
	pid=$STARTED
	for p in $PRODUCERS; do
		name="js-$mode-$p"
		wait_quiet
		w0=$(now)
		f0=$(disk_flushes)
		c0=$(cpu_ticks "$pid")
		if ! out=$(taskset -c "$LOAD_CPU" "$TMP/bin/jsload" -url "nats://$HOST:$NATS_PORT" -producers "$p" -size "$SIZE" \
			-duration "$DURATION" -warmup "$WARMUP" -msg-id="$([ "$JS_MSGID" = 1 ] && echo true || echo false)" 2>>"$TMP/log/jsload.log"); then
			echo "$name round $r: jsload failed (see log/jsload.log)" >>"$TMP/res/notes"
			continue
		fi
		c1=$(cpu_ticks "$pid")
		f1=$(disk_flushes)
		w1=$(now)
		t0=$(elapsed "$w0" "$w1")
		echo "{\"target\":\"js-$mode\",\"round\":$r,\"producers\":$p,\"result\":$out}" >>"$TMP/res/raw.jsonl"
		record "$name" rate "$(json_num pubs_per_s "$out")"
		record "$name" p50 "$(json_num p50_us "$out")"
		record "$name" p99 "$(json_num p99_us "$out")"
		record "$name" flush "$(per_sec "$f0" "$f1" "$t0")"
		record "$name" busy "$(busy_pct "$c0" "$c1" "$t0")"
		if [ "$(json_num errors "$out")" != 0 ]; then
			echo "$name round $r: $(json_num errors "$out") failed publishes$(printf '%s' "$out" | sed -n 's/.*"first_error":"\([^"]*\)".*/; first error: \1/p')" >>"$TMP/res/notes"
		fi
		log "$name round $r: $(json_num pubs_per_s "$out") publishes/s, p50 $(json_num p50_us "$out") µs, p99 $(json_num p99_us "$out") µs"
	done
	stop "$pid"
	rm -rf "$TMP/data/js"
}

# ---------------------------------------------------------------- main
want() { case " $TARGETS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

pkgs=(curl:curl taskset:util-linux findmnt:util-linux)
if want js-default || want js-always || want sidecar-js-default || want sidecar-js-always; then
	[ "$NATS_SERVER" = nats-server ] && pkgs+=(nats-server:nats-server)
fi
ensure_packages "${pkgs[@]}"
check_quiet_start

mkdir -p "$BENCH_TMPDIR"
TMP=$(mktemp -d "$BENCH_TMPDIR/sidecar-spool-enqueue.XXXXXX")
mkdir -p "$TMP/bin" "$TMP/log" "$TMP/res" "$TMP/data"
: >"$TMP/res/notes"
: >"$TMP/res/raw.jsonl"
FS_TYPE=$(stat -f -c %T "$TMP")
[ "$FS_TYPE" != tmpfs ] || die "$BENCH_TMPDIR is a tmpfs: set BENCH_TMPDIR to a directory on the disk under test"
find_flush_stat

log "building bench binaries into $TMP/bin"
(cd "$REPO" && go build -o "$TMP/bin/" ./bench/fsyncrate ./bench/loadgen ./bench/jsload)

SIDECAR_NOTE=""
if want sidecar || want sidecar-js-default || want sidecar-js-always; then
	if ! (cd "$REPO" && go build -o "$TMP/bin/sidecar" ./cmd/sidecar) >"$TMP/log/sidecar-build.log" 2>&1; then
		SIDECAR_NOTE="sidecar: not measured: ./cmd/sidecar does not build: $(grep -v '^#' "$TMP/log/sidecar-build.log" | head -1 || true)"
		log "$SIDECAR_NOTE"
	fi
fi
STORE_NOTE=""
if want store; then
	if ! (cd "$REPO" && go test -c -o "$TMP/bin/spool.test" ./spool) >"$TMP/log/store-build.log" 2>&1; then
		STORE_NOTE="store: not measured: ./spool tests do not build: $(grep -v '^#' "$TMP/log/store-build.log" | head -1 || true)"
		rm -f "$TMP/bin/spool.test"
		log "$STORE_NOTE"
	fi
fi
if want js-default || want js-always || want sidecar-js-default || want sidecar-js-always; then
	JS_VERSION=$("$NATS_SERVER" --version 2>&1 | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p' | head -1)
fi

for r in $(seq 1 "$ROUNDS"); do
	if want fsync; then measure_fsync "$r"; fi
	if want store; then measure_store "$r"; fi
	if want sidecar && [ -z "$SIDECAR_NOTE" ]; then
		for p in $PRODUCERS; do measure_sidecar "$r" "$p"; done
	fi
	if want js-default; then measure_js "$r" default; fi
	if want js-always; then measure_js "$r" always; fi
	for m in default always; do
		if want "sidecar-js-$m" && [ -z "$SIDECAR_NOTE" ]; then
			for p in $PRODUCERS; do measure_sidecar "$r" "$p" "$m"; done
		fi
	done
done

# ---------------------------------------------------------------- report
REPORT="$TMP/report.md"
row() { # row LABEL NAME PRODUCERS
	local n=$2
	printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$3" \
		"$(fmt "$(med "$n" rate)" '%.0f')" "$(fmt "$(med "$n" p50)" '%.0f')" "$(fmt "$(med "$n" p99)" '%.0f')" \
		"$(fmt "$(med "$n" flush)" '%.0f')$([ -s "$TMP/res/$n.persync" ] && printf ' (%s msgs/sync)' "$(fmt "$(med "$n" persync)" '%.1f')")" \
		"$(fmt "$(med "$n" busy)" '%.0f')"
}
{
	echo "# Durable enqueues of ${SIZE}-byte messages, $(date -u +%Y-%m-%d)"
	echo
	echo "- machine: $(machine_line)"
	echo "- disk under test: $(findmnt -n -o SOURCE,FSTYPE,OPTIONS --target "$TMP" 2>/dev/null | tr -s ' ' || echo "? ($FS_TYPE)")"
	echo "- commit: $(commit_line); $(go version | awk '{print $3}')"
	if [ -n "$JS_VERSION" ]; then echo "- nats-server $JS_VERSION (JetStream, file storage, 1 replica, stream reset before each producer count)"; fi
	echo "- command: \`$COMMAND\`"
	echo "- background load before the run: ${BG_LOAD}% of a core; rounds: $ROUNDS (medians)"
	echo "- placement: servers (sidecar, nats-server) and fsyncrate on core $SERVER_CPU, load generators on core $LOAD_CPU; the Store benchmark is one process on all cores"
	echo
	echo "| target | producers | enqueues/s | p50 µs | p99 µs | disk flushes/s | server CPU % |"
	echo "|---|---|---|---|---|---|---|"
	if want fsync; then row "raw fsync (write ${SIZE} B + fdatasync)" fsync 1; fi
	if want store; then
		if [ -n "$STORE_NOTE" ]; then echo "| Store.Append (FsyncAlways) | — | — | — | — | — | — |"; else
			for p in $PRODUCERS; do row "Store.Append (FsyncAlways)" "store-$p" "$p"; done
		fi
	fi
	if want sidecar; then
		for p in $PRODUCERS; do row "sidecar HTTP → spool (202s)" "sidecar-$p" "$p"; done
	fi
	if want js-default; then
		for p in $PRODUCERS; do row "JetStream, default sync (acks before fsync)" "js-default-$p" "$p"; done
	fi
	if want js-always; then
		for p in $PRODUCERS; do row "JetStream, sync_interval: always" "js-always-$p" "$p"; done
	fi
	if want sidecar-js-default; then
		for p in $PRODUCERS; do row "sidecar HTTP → JetStream backend, default sync (CPU: sidecar + nats-server)" "sidecar-js-default-$p" "$p"; done
	fi
	if want sidecar-js-always; then
		for p in $PRODUCERS; do row "sidecar HTTP → JetStream backend, sync_interval: always (CPU: sidecar + nats-server)" "sidecar-js-always-$p" "$p"; done
	fi
	echo
	echo "enqueues/s: 202s (sidecar), PubAcks (JetStream), completed appends (Store), write+fdatasync pairs (raw) per second of the measured window. p50/p99: per request, closed loop (each producer sends the next message when the previous one is acknowledged); the Store benchmark reports no latencies, its msgs/sync (messages per fsync: group commit) is shown instead. Disk flushes/s: flush requests completed by the block device (/sys/class/block/DEV/stat) during the run, every process's, warm-up included: ~0 means nothing was fsync'd. Server CPU: the sidecar's or nats-server's utime+stime / wall time, warm-up included."
	echo
	F=$(med fsync rate)
	BIG=$(echo "$PRODUCERS" | tr ' ' '\n' | sort -n | tail -1)
	if [ -s "$TMP/res/sidecar-$BIG.rate" ]; then
		S=$(med "sidecar-$BIG" rate)
		echo "- sidecar at $BIG producers / raw single-writer fsync rate = $(ratio "$S" "$F") (bar: ≥ 10)"
		if [ -s "$TMP/res/js-always-$BIG.rate" ]; then
			echo "- sidecar / JetStream sync_interval always, at $BIG producers = $(ratio "$S" "$(med "js-always-$BIG" rate)") (bar: > 1)"
		fi
		if [ -s "$TMP/res/js-default-$BIG.rate" ]; then
			echo "- sidecar / JetStream default (not durable on ack), at $BIG producers = $(ratio "$S" "$(med "js-default-$BIG" rate)")"
		fi
	fi
	if [ -s "$TMP/res/store-$BIG.rate" ]; then
		echo "- Store.Append at $BIG producers / raw fsync rate = $(ratio "$(med "store-$BIG" rate)" "$F")"
	fi
	if [ -n "$SIDECAR_NOTE" ]; then echo "- $SIDECAR_NOTE"; fi
	if [ -n "$STORE_NOTE" ]; then echo "- $STORE_NOTE"; fi
	for m in default always; do
		if [ -n "${JS_NOTE[$m]:-}" ]; then echo "- js-$m: ${JS_NOTE[$m]}"; fi
	done
	if [ -s "$TMP/res/notes" ]; then
		echo
		echo "Errors seen:"
		sed 's/^/- /' "$TMP/res/notes"
	fi
} >"$REPORT"

cat "$REPORT"
if [ -z "$OUT" ]; then
	mkdir -p "$BENCH_DIR/results"
	OUT="$BENCH_DIR/results/spool-enqueue-$(date -u +%Y-%m-%d-%H%M%S).md"
fi
cp "$REPORT" "$OUT"
cp "$TMP/res/raw.jsonl" "${OUT%.md}.jsonl"
log "report written to $OUT (raw JSON lines: ${OUT%.md}.jsonl)"
