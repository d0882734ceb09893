#!/usr/bin/env bash
# Long fuzzing: runs every fuzz target of the repository, one after the
# other, each for FUZZTIME, and reports the ones that failed with the
# crasher Go saved (testdata/fuzz/<FuzzName>/<hash> in the target's
# package: commit it with the fix, and `go test` replays it from then on).
#
# The targets are found, not listed: every `func FuzzXxx(f *testing.F)` in
# a _test.go file. CI (.ci/run) runs each of them for a few seconds; this
# runs them long.
#
#   bench/fuzz.sh                          # every target, 5 minutes each
#   FUZZTIME=30s bench/fuzz.sh             # a quick pass
#   TARGETS='Route|Admin' bench/fuzz.sh    # the targets whose name matches (grep -E)
#   LIST=1 bench/fuzz.sh                   # print package and target, run nothing
#   OUT=/tmp/fuzz bench/fuzz.sh            # keep every target's log there
#
# A target that ends with Go's own "context deadline exceeded" and wrote no
# input is not a failure (ok*): a race in Go 1.26's fuzzing engine at the
# -fuzztime deadline, described in bench/README.md.
#
# Knobs (environment): FUZZTIME (5m: go test -fuzztime, a duration or
# Nx for N inputs), TARGETS (all), PARALLEL (go test -parallel: fuzzing
# workers, default GOMAXPROCS), OUT (a temp dir), LIST. Exit status 0
# when no target failed, 1 otherwise.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
FUZZTIME=${FUZZTIME:-5m}
TARGETS=${TARGETS:-.}
out=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/fuzz.XXXXXX")}
mkdir -p "$out"

# "<package dir> <FuzzName>" per target, sorted.
targets=$(grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*(f \*testing\.F)' . |
	sed -E 's|^\./(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*)\(.*|\1 \2|' |
	grep -E " .*(${TARGETS})" | sort -u || true)
[ -n "$targets" ] || { echo "no fuzz target matches TARGETS=$TARGETS" >&2; exit 2; }
if [ -n "${LIST:-}" ]; then
	echo "$targets"
	exit 0
fi

n=$(echo "$targets" | wc -l)
echo "fuzzing $n targets for $FUZZTIME each; logs in $out"
failed=()
flaked=()
while read -r dir name; do
	log="$out/${dir//\//_}.$name.log"
	corpus="$dir/testdata/fuzz/$name"
	before=$(ls "$corpus" 2>/dev/null || true)
	start=$(date +%s)
	set +e
	go test "./$dir" -run '^$' -fuzz "^$name\$" -fuzztime "$FUZZTIME" ${PARALLEL:+-parallel "$PARALLEL"} >"$log" 2>&1
	rc=$?
	set -e
	elapsed=$(($(date +%s) - start))
	execs=$(grep -Eo 'execs: [0-9]+' "$log" | tail -1 | cut -d' ' -f2 || true)
	new=$(comm -13 <(echo "$before") <(ls "$corpus" 2>/dev/null || true) | grep . || true)
	if [ "$rc" -eq 0 ]; then
		printf 'ok    %-40s %6ss %12s execs\n' "$dir.$name" "$elapsed" "${execs:-?}"
	elif [ -z "$new" ] && grep -q '^    context deadline exceeded$' "$log" && ! grep -q -e 'Failing input' -e 'panic:' "$log"; then
		# Go 1.26's fuzzing coordinator can report its own -fuzztime
		# deadline as a failure, with no input (bench/README.md, "Long
		# fuzzing"): not a finding.
		flaked+=("$dir.$name")
		printf 'ok*   %-40s %6ss %12s execs (ended by the fuzzing engine, no input)\n' "$dir.$name" "$elapsed" "${execs:-?}"
	else
		failed+=("$dir.$name")
		printf 'FAIL  %-40s %6ss (exit %d)\n' "$dir.$name" "$elapsed" "$rc"
		# The failure and the input Go saved for it.
		{ grep -E -A12 -- '--- FAIL|panic:' "$log" || true; } | head -30 | sed 's/^/      /' || true
		for f in $new; do echo "      crasher: $corpus/$f"; done
	fi
done <<<"$targets"

if [ ${#failed[@]} -eq 0 ]; then
	note=""
	[ ${#flaked[@]} -eq 0 ] || note="; ok* (the engine's deadline race, no input): ${flaked[*]}"
	echo "RESULT: PASS ($n targets, $FUZZTIME each$note)"
	exit 0
fi
echo "RESULT: FAIL (${#failed[@]} of $n: ${failed[*]}); logs in $out"
exit 1
