#!/usr/bin/env bash
# Soak with faults (issue 16): builds the sidecar and bench/soak, then runs
# the real binary for DURATION under mixed traffic (HTTP GET/POST through a
# route with timeouts, retries and a breaker; gRPC unary calls; async POSTs
# to a when: always and a when: upstream_down route on the file spool with
# fsync: always), every upstream behind an embedded toxiproxy, with faults
# on a schedule scaled to DURATION: a SIGKILL and restart on the same
# spool, upstream restarts, latency, reset_peer and timeout toxics, a full
# disk (the spool's own tmpfs filled and freed) and a reload every minute.
# At the end it checks that every acknowledged message was delivered, that
# duplicates carry one idempotency key, that no request hung past its
# deadline and that the sidecar's descriptors and RSS came back to their
# baseline, and writes summary.md and summary.json to OUT. Loopback only.
# See bench/README.md ("Soak with faults").
#
#   bench/soak.sh                       # 10 minutes
#   DURATION=60s bench/soak.sh          # the CI run
#   DURATION=3m OUT=/tmp/soak bench/soak.sh
#
# Knobs (environment): DURATION (10m, at least 60s), OUT (default
# bench/results/<UTC date-time>/soak), PORT_BASE (19500: the 9 ports
# +0..+2, +10..+12, +20..+22 must be free), HTTP_RATE (100), GRPC_RATE
# (50), ASYNC_RATE (60) per second, TMPFS_SIZE (128m), NO_TMPFS=1 (keep
# the spool on disk, skip the disk-full fault; without root the mount fails
# and the fault is skipped anyway, never failed), GRACE (1s, added to each
# route's timeout for a request's deadline), DRAIN_MAX (90s), FD_SLACK (8),
# RSS_SLACK_MIB (48), RSS_SLACK_PCT (50), BENCH_TMPDIR (where the temp dir
# goes; default $TMPDIR or /var/tmp), KEEP_TMP=1 (keep binaries and the
# spool). Exit status: 0 every check passed, 1 a check failed, 2 the soak
# could not run.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
command -v go >/dev/null 2>&1 || export PATH="/usr/local/go/bin:$PATH"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}

DURATION=${DURATION:-10m}
OUT=${OUT:-$BENCH_DIR/results/$(date -u +%Y-%m-%dT%H%M%SZ)/soak}
PORT_BASE=${PORT_BASE:-19500}
KEEP_TMP=${KEEP_TMP:-0}

TMP=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/var/tmp}}/soak.XXXXXX")
cleanup() {
	# bench/soak unmounts its tmpfs itself; this is for a soak that was
	# killed before it could.
	if [ -d "$TMP/run/spoolfs" ] && grep -qs " $TMP/run/spoolfs " /proc/mounts; then
		umount "$TMP/run/spoolfs" 2>/dev/null || umount -l "$TMP/run/spoolfs" 2>/dev/null || true
	fi
	if [ "$KEEP_TMP" = 1 ]; then
		echo "[soak] temp dir kept: $TMP" >&2
	else
		rm -rf "$TMP"
	fi
}
trap cleanup EXIT

mkdir -p "$OUT" "$TMP/bin"
OUT=$(cd "$OUT" && pwd)
echo "[soak] building the sidecar and bench/soak" >&2
(cd "$ROOT" && go build -o "$TMP/bin/sidecar" ./cmd/sidecar && go build -o "$TMP/bin/soak" ./bench/soak)

commit=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$commit" != unknown ] && [ -n "$(cd "$ROOT" && git status --porcelain -- . 2>/dev/null)" ]; then
	commit="$commit (with uncommitted changes)"
fi

args=(-sidecar "$TMP/bin/sidecar" -commit "$commit" -duration "$DURATION" -out "$OUT" -tmp "$TMP/run" -port-base "$PORT_BASE")
[ -n "${HTTP_RATE:-}" ] && args+=(-http-rate "$HTTP_RATE")
[ -n "${GRPC_RATE:-}" ] && args+=(-grpc-rate "$GRPC_RATE")
[ -n "${ASYNC_RATE:-}" ] && args+=(-async-rate "$ASYNC_RATE")
[ -n "${TMPFS_SIZE:-}" ] && args+=(-tmpfs-size "$TMPFS_SIZE")
[ "${NO_TMPFS:-0}" = 1 ] && args+=(-no-tmpfs)
[ -n "${GRACE:-}" ] && args+=(-grace "$GRACE")
[ -n "${DRAIN_MAX:-}" ] && args+=(-drain-max "$DRAIN_MAX")
[ -n "${FD_SLACK:-}" ] && args+=(-fd-slack "$FD_SLACK")
[ -n "${RSS_SLACK_MIB:-}" ] && args+=(-rss-slack-mib "$RSS_SLACK_MIB")
[ -n "${RSS_SLACK_PCT:-}" ] && args+=(-rss-slack-pct "$RSS_SLACK_PCT")

echo "[soak] $DURATION of load and faults; report in $OUT" >&2
rc=0
"$TMP/bin/soak" "${args[@]}" || rc=$?
case $rc in
0) echo "[soak] RESULT: PASS ($OUT/summary.md)" >&2 ;;
1) echo "[soak] RESULT: FAIL: a check failed ($OUT/summary.md, sidecar log $OUT/sidecar.log)" >&2 ;;
*) echo "[soak] RESULT: ERROR: the soak could not run (exit $rc; sidecar log $OUT/sidecar.log)" >&2 ;;
esac
exit "$rc"
