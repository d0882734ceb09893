#!/usr/bin/env bash
# Spool crash soak: runs TestKill9LosesNothingAcknowledged (cmd/sidecar/crash_test.go)
# with many kill -9 loops. Each loop starts the real sidecar binary (race
# build) on one shared spool directory with an async route whose upstream is
# down, puts 16 concurrent POST streams on it and SIGKILLs it at a random
# instant; a last start with the upstream up must deliver every request that
# was ever answered 202. Loopback only.
#
#   bench/spool-soak.sh                  # 200 loops, a few minutes on 2 cores
#   LOOPS=1000 bench/spool-soak.sh
#   SEED=123 bench/spool-soak.sh         # replay the kill instants of a run
#   OUT=/tmp/soak.log bench/spool-soak.sh
#
# Knobs (environment): LOOPS (200), SEED (random; printed by the test),
# TIMEOUT (60m, go test -timeout), OUT (keep the full verbose log there).
# Exit status is the test's: 0 when nothing acknowledged was lost.
set -euo pipefail

cd "$(dirname "$0")/.."
LOOPS=${LOOPS:-200}
TIMEOUT=${TIMEOUT:-60m}
log=${OUT:-$(mktemp "${TMPDIR:-/tmp}/spool-soak.XXXXXX.log")}

echo "spool soak: $LOOPS kill -9 loops, log $log"
start=$(date +%s)
set +e
SIDECAR_CRASH_LOOPS=$LOOPS ${SEED:+SIDECAR_CRASH_SEED=$SEED} \
	go test -race -run 'TestKill9LosesNothingAcknowledged$' -count=1 -timeout "$TIMEOUT" -v ./cmd/sidecar >"$log" 2>&1
rc=$?
set -e
elapsed=$(($(date +%s) - start))

# The summary lines (seed, totals, delivery, duplicates) and any failure.
grep -E 'seed [0-9-]+|loops in|final start|delivery took|upstream got|lost|never reached|differs|did not|dead-lettered|refused|--- (PASS|FAIL)|^(ok|FAIL|panic)' "$log" || true
if [ "$rc" -eq 0 ]; then
	echo "RESULT: PASS ($LOOPS loops, ${elapsed}s): every acknowledged request was delivered"
else
	echo "RESULT: FAIL (exit $rc, ${elapsed}s); full log: $log"
fi
exit "$rc"
