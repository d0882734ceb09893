#!/usr/bin/env bash
# Spool crash soak: runs the two kill -9 tests of cmd/sidecar with many loops.
#
# TestKill9LosesNothingAcknowledged (crash_test.go), LOOPS kills: each loop
# starts the real sidecar binary (race build) on one shared spool directory
# with an async route whose upstream is down, puts 16 concurrent POST streams
# on it and SIGKILLs it at a random instant; a last start with the upstream
# up must deliver every request that was ever answered 202.
#
# TestCrashDeliveryLosesNothingAcknowledged (crash_delivery_test.go),
# DELIVERY_LOOPS kills: the upstream is up but slow and flaky (random delay,
# 10% 503s); each loop posts to a when: always route, SIGKILLs the sidecar
# while deliveries are in flight, restarts it, lets it drain and checks that
# every 202'd request was delivered with one idempotency key and that the
# spool ends empty (fifo and none alternate). Loopback only.
#
#   bench/spool-soak.sh                  # 200 + 50 loops, a few minutes on 2 cores
#   LOOPS=1000 DELIVERY_LOOPS=200 bench/spool-soak.sh
#   DELIVERY_LOOPS=0 bench/spool-soak.sh # only the upstream-down test
#   LOOPS=0 bench/spool-soak.sh          # only the during-delivery test
#   SEED=123 bench/spool-soak.sh         # replay the kill instants of a run
#   OUT=/tmp/soak.log bench/spool-soak.sh
#
# Knobs (environment): LOOPS (200), DELIVERY_LOOPS (50), SEED (random;
# printed by each test), TIMEOUT (60m, go test -timeout), OUT (keep the full
# verbose log there). Exit status is the tests': 0 when nothing acknowledged
# was lost.
set -euo pipefail

cd "$(dirname "$0")/.."
LOOPS=${LOOPS:-200}
DELIVERY_LOOPS=${DELIVERY_LOOPS:-50}
TIMEOUT=${TIMEOUT:-60m}
log=${OUT:-$(mktemp "${TMPDIR:-/tmp}/spool-soak.XXXXXX.log")}

tests=()
[ "$LOOPS" -gt 0 ] && tests+=('TestKill9LosesNothingAcknowledged$')
[ "$DELIVERY_LOOPS" -gt 0 ] && tests+=('TestCrashDeliveryLosesNothingAcknowledged$')
[ ${#tests[@]} -gt 0 ] || { echo "LOOPS and DELIVERY_LOOPS are both 0: nothing to run" >&2; exit 2; }
pattern=$(IFS='|'; echo "^(${tests[*]})")

echo "spool soak: $LOOPS kill -9 loops with the upstream down, $DELIVERY_LOOPS during delivery; log $log"
start=$(date +%s)
set +e
SIDECAR_CRASH_LOOPS=$((LOOPS > 0 ? LOOPS : 1)) SIDECAR_CRASH_DELIVERY_LOOPS=$((DELIVERY_LOOPS > 0 ? DELIVERY_LOOPS : 1)) \
	${SEED:+SIDECAR_CRASH_SEED=$SEED} \
	go test -race -run "$pattern" -count=1 -timeout "$TIMEOUT" -v ./cmd/sidecar >"$log" 2>&1
rc=$?
set -e
elapsed=$(($(date +%s) - start))

# The summary lines (seed, totals, delivery, duplicates) and any failure.
grep -E 'seed [0-9-]+|loops in|final start|delivery took|upstream got|lost|never reached|differs|did not|dead-lettered|refused|idempotency key|fifo order|end empty|--- (PASS|FAIL)|^(ok|FAIL|panic)' "$log" || true
if [ "$rc" -eq 0 ]; then
	echo "RESULT: PASS ($LOOPS + $DELIVERY_LOOPS loops, ${elapsed}s): every acknowledged request was delivered"
else
	echo "RESULT: FAIL (exit $rc, ${elapsed}s); full log: $log"
fi
exit "$rc"
