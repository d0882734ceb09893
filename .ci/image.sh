#!/usr/bin/env bash
# Builds the container image the way the Dockerfile does, without a
# container engine: build/rootfs.sh (the Dockerfile's build stage) makes
# the root filesystem, and buildah builds the Dockerfile's runtime stage
# from it, word for word but for where it copies from. Then it checks the
# image's config and runs its binary from the image's root filesystem as
# the image's user: validate on the shipped config, and run with a spool
# on /data, checked by sidecar healthcheck.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v buildah >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah ca-certificates >/dev/null
fi
[ -f /etc/ssl/certs/ca-certificates.crt ] || { apt-get update -qq && apt-get install -y -qq ca-certificates >/dev/null; }

work=$(mktemp -d)
store="$work/storage"
bh() { buildah --storage-driver vfs --root "$store" --runroot "$work/run" "$@"; }
cleanup() {
  [ -n "${mnt:-}" ] && bh umount "$ctr" >/dev/null 2>&1 || true
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

echo "-- root filesystem (build/rootfs.sh)"
build/rootfs.sh "$work/out" ci "$(git rev-parse HEAD 2>/dev/null || echo unknown)"

echo "-- runtime stage of the Dockerfile, built with buildah"
{
  echo "FROM scratch"
  sed -n '/^FROM scratch AS runtime$/,$p' Dockerfile | tail -n +2 |
    sed -e 's#COPY --from=build /out/rootfs/ /#COPY rootfs/ /#' \
        -e 's#COPY --from=build --chown=65532:65532 /out/data /data#COPY --chown=65532:65532 data /data#'
} >"$work/out/Containerfile"
if grep -q -- '--from=' "$work/out/Containerfile"; then
  echo "the runtime stage copies from somewhere .ci/image.sh does not know:"; cat "$work/out/Containerfile"; exit 1
fi
bh build --format docker --quiet -f "$work/out/Containerfile" -t localhost/sidecar:ci "$work/out" >/dev/null

echo "-- image config"
command -v python3 >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3-minimal >/dev/null; }
cat >"$work/check.py" <<'PY'
import json, sys
c = json.load(sys.stdin)["Docker"]["config"]
print(json.dumps({k: c.get(k) for k in ("User", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "ExposedPorts", "Healthcheck")}))
want = {
    "User": "65532:65532",
    "Entrypoint": ["/sidecar"],
    "Volumes": {"/data": {}},
    "ExposedPorts": {"9902/tcp": {}},
}
bad = ["%s = %r, want %r" % (k, c.get(k), v) for k, v in want.items() if c.get(k) != v]
if (c.get("Cmd") or [])[:3] != ["run", "-config", "/etc/sidecar/sidecar.yaml"]:
    bad.append("Cmd = %r, want run -config /etc/sidecar/sidecar.yaml" % c.get("Cmd"))
if ((c.get("Healthcheck") or {}).get("Test") or [])[:3] != ["CMD", "/sidecar", "healthcheck"]:
    bad.append("Healthcheck = %r, want CMD /sidecar healthcheck" % c.get("Healthcheck"))
if bad:
    sys.exit("image config: " + "; ".join(bad))
PY
bh inspect --type image localhost/sidecar:ci | python3 "$work/check.py"

echo "-- the image's binary, run from its root filesystem as uid 65532"
ctr=$(bh from localhost/sidecar:ci)
mnt=$(bh mount "$ctr")
as_user() { chroot --userspec=65532:65532 "$mnt" "$@"; }
as_user /sidecar version
as_user /sidecar validate -config /etc/sidecar/sidecar.yaml
[ "$(stat -c %u "$mnt/data")" = 65532 ] || { echo "/data is not the runtime user's"; exit 1; }
[ -s "$mnt/etc/ssl/certs/ca-certificates.crt" ] || { echo "no CA certificates in the image"; exit 1; }
# Run the shipped config: it binds 127.0.0.1:9001, :9901 and :9902 and
# opens its spool in /data/spool. (chroot execs the sidecar: $! is its
# pid.)
chroot --userspec=65532:65532 "$mnt" /sidecar run -config /etc/sidecar/sidecar.yaml -log-format json >"$work/run.log" 2>&1 &
pid=$!
ok=0
for _ in $(seq 1 100); do
  if as_user /sidecar healthcheck -admin 127.0.0.1:9902 -ready >/dev/null 2>&1; then ok=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ "$ok" != 1 ]; then echo "the image's sidecar did not become ready:"; cat "$work/run.log"; exit 1; fi
[ "$(stat -c '%u %a' "$mnt/data/spool")" = "65532 700" ] || { echo "spool dir: $(stat -c '%u %a' "$mnt/data/spool"), want 65532 700"; exit 1; }
kill -TERM "$pid"
wait "$pid" || { echo "the image's sidecar did not exit 0 on SIGTERM:"; cat "$work/run.log"; exit 1; }
pid=""
echo "-- image OK"
