# One static binary in an empty image.
#   docker build -t sidecar .
#   docker run --network host -v $PWD/sidecar.yaml:/etc/sidecar/sidecar.yaml sidecar
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/sidecar ./cmd/sidecar

FROM scratch
COPY --from=build /out/sidecar /sidecar
# The spool directory; mount a volume here for async routes.
WORKDIR /var/lib/sidecar
USER 65532:65532
ENTRYPOINT ["/sidecar"]
CMD ["run", "-config", "/etc/sidecar/sidecar.yaml"]
