# syntax=docker/dockerfile:1
#
# verifeye-bridge container image: a static binary on distroless (CA certificates,
# a non-root user, no shell). Build:
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t ghcr.io/realeyes/verifeye-bridge:dev .
#
# The go build line below is run as is by deploy/image_test.go (TestImageBuild),
# so keep it on one line, starting with CGO_ENABLED=0.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS=linux
ARG TARGETARCH=amd64
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/verifeye-bridge ./cmd/verifeye-bridge
# The data volume must belong to the non-root user (65532), or `serve` cannot write it.
RUN mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="verifeye-bridge" \
      org.opencontainers.image.description="VerifEye webhooks to a durable, de-duplicated, enriched NATS JetStream event stream" \
      org.opencontainers.image.source="https://github.com/realeyes/verifeye-bridge" \
      org.opencontainers.image.vendor="Realeyes" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/verifeye-bridge /usr/local/bin/verifeye-bridge
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
# DATA_DIR is used by `serve` with NATS_URL empty (embedded JetStream, and the
# embedded server's login in nats.url, which the terminal tools read).
ENV DATA_DIR=/data HTTP_ADDR=:8080
VOLUME /data
# 8080: webhooks, /healthz, /readyz, /metrics. The embedded NATS server of `serve`
# listens on loopback only; NATS_EMBEDDED_ADDR=:4222 also needs
# NATS_EMBEDDED_USER and NATS_EMBEDDED_PASSWORD.
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["verifeye-bridge", "healthcheck"]
ENTRYPOINT ["verifeye-bridge"]
CMD ["serve"]
