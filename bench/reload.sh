#!/usr/bin/env bash
# Live reload: time from the trigger to a new route serving, and latency
# and errors under a fixed-rate load with and without reloads. Builds the
# sidecar, bench/upstream, bench/loadgen and bench/reloadbench, starts the
# upstream on CPU 0 and lets reloadbench run the sidecar pinned to CPU 1.
#
#   bench/reload.sh                                  # 3 rounds × 10 s
#   ROUNDS=1 DURATION=3s SERVE=5 bench/reload.sh     # quick check
#
# Knobs: ROUNDS (3), DURATION (10s), RATE (2000), RELOADS (10 per run),
# SERVE (20 timed reloads per trigger), OUT (also write the report there).
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
LOG_TAG=reload HOST=127.0.0.1 KEEP_TMP=${KEEP_TMP:-0} WAIT_QUIET=${WAIT_QUIET:-0}
. "$BENCH_DIR/lib.sh"

ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10s} RATE=${RATE:-2000}
RELOADS=${RELOADS:-10} SERVE=${SERVE:-20} OUT=${OUT:-}
command -v taskset >/dev/null || die "taskset (util-linux) is not on PATH"

TMP=$(mktemp -d)
mkdir -p "$TMP/bin" "$TMP/log"
log "building into $TMP/bin"
(cd "$ROOT" && go build -o "$TMP/bin/" ./cmd/sidecar ./bench/upstream ./bench/loadgen ./bench/reloadbench)

UP_PORT=${UP_PORT:-18180}
start upstream 0 "$TMP/bin/upstream" -addr "127.0.0.1:$UP_PORT"
for _ in $(seq 1 50); do
	curl -fsS "http://127.0.0.1:$UP_PORT/" >/dev/null 2>&1 && break
	sleep 0.1
done

report=$(taskset -c 0 "$TMP/bin/reloadbench" -sidecar "$TMP/bin/sidecar" -loadgen "$TMP/bin/loadgen" \
	-upstream "http://127.0.0.1:$UP_PORT" -cpu 1 -rate "$RATE" -duration "$DURATION" \
	-rounds "$ROUNDS" -reloads "$RELOADS" -serve "$SERVE")
header="# Live reload benchmark, $(date -u +%Y-%m-%dT%H:%MZ), commit $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet || echo ' (dirty tree)')
Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r), $(go version | cut -d' ' -f3)
Command: ROUNDS=$ROUNDS DURATION=$DURATION RATE=$RATE RELOADS=$RELOADS SERVE=$SERVE bench/reload.sh
"
printf '%s\n%s\n' "$header" "$report"
[ -z "$OUT" ] || printf '%s\n%s\n' "$header" "$report" >"$OUT"
