#!/bin/sh
# Builds the container image's root filesystem into OUT/rootfs: the static
# binary with its version stamped, the CA certificates of the build
# machine and the default configuration; and OUT/data, the empty /data
# directory, which the Dockerfile copies owned by the runtime user.
# The Dockerfile's build stage runs it, and so does CI (.ci/image.sh)
# before it builds the runtime stage with buildah.
#
#   build/rootfs.sh OUT [VERSION [COMMIT [DATE]]]
set -eu
out=${1:?usage: build/rootfs.sh OUT [VERSION [COMMIT [DATE]]]}
version=${2:-dev}
commit=${3:-unknown}
date=${4:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
uid=65532
root="$out/rootfs"
rm -rf "$root" "$out/data"
mkdir -p "$root/etc/ssl/certs" "$root/etc/sidecar" "$out/data"
CGO_ENABLED=0 go build -trimpath \
	-ldflags "-s -w -X main.version=$version -X main.commit=$commit -X main.date=$date" \
	-o "$root/sidecar" ./cmd/sidecar
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cp examples/container.yaml "$root/etc/sidecar/sidecar.yaml"
chmod 0644 "$root/etc/ssl/certs/ca-certificates.crt" "$root/etc/sidecar/sidecar.yaml"
# The spool directory must be the runtime user's: the spool creates
# /data/spool in it, mode 0700.
chmod 0700 "$out/data"
if [ "$(id -u)" = 0 ]; then
	chown "$uid:$uid" "$out/data"
fi
