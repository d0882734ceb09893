# One static binary in an empty image, run as a non-root user.
#
#   docker build --build-arg VERSION=v1.2.3 --build-arg COMMIT=$(git rev-parse HEAD) -t sidecar .
#   docker run --network host -v sidecar-data:/data -v $PWD/sidecar.yaml:/etc/sidecar/sidecar.yaml sidecar
#
# build/rootfs.sh builds the root filesystem; CI runs the same script and
# builds the runtime stage below from it (.ci/image.sh).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
ARG DATE=
RUN build/rootfs.sh /out "$VERSION" "$COMMIT" "$DATE"

FROM scratch AS runtime
COPY --from=build /out/rootfs/ /
COPY --from=build --chown=65532:65532 /out/data /data
# The configuration: mount yours over /etc/sidecar/sidecar.yaml (the
# image's default is examples/container.yaml).
# The spool: examples/container.yaml keeps it in /data/spool; mount a
# volume that outlives the container on /data.
VOLUME ["/data"]
WORKDIR /
USER 65532:65532
# The probe listener of examples/container.yaml (admin.probe_address):
# /healthz, /readyz, /metrics for kubelet probes and scrapes. The app
# listeners and the admin API listen on loopback, for the pod alone.
EXPOSE 9902
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/sidecar", "healthcheck", "-admin", "127.0.0.1:9901", "-ready"]
ENTRYPOINT ["/sidecar"]
CMD ["run", "-config", "/etc/sidecar/sidecar.yaml", "-log-format", "json"]
