# syntax=docker/dockerfile:1
#
# Hale's container image: a release build of the gateway on distroless (glibc, CA
# certificates, tzdata; no shell, no package manager), running as an unprivileged user.
#
#   docker build -t hale:0.1.0 .
#   docker run --rm -p 4100:4100 -v "$PWD/hale.yaml:/etc/hale/hale.yaml:ro" hale:0.1.0
#   docker run --rm -v "$PWD/hale.yaml:/etc/hale/hale.yaml:ro" \
#       --entrypoint /usr/local/bin/hale hale:0.1.0 check-config
#
# The config is read from /etc/hale/hale.yaml (HALE_CONFIG below; --config overrides it). It
# must listen on 0.0.0.0 (server.listen) to be reachable from outside the container, as
# deploy/k8s/hale.yaml does; the built-in default, 127.0.0.1, is not.

# The toolchain the project is built and tested with. Debian bookworm, like the runtime
# image below, so the binary's glibc requirements are met there.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The caches keep the crate downloads and build output between builds; the binary is
# copied out of the cached target directory within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p hale --bin hale \
    && install -D -m 0755 target/release/hale /out/hale

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/hale /usr/local/bin/hale
# distroless's "nonroot" user, numerically, so runAsNonRoot can verify it; the Kubernetes
# Deployment runs as the same uid.
USER 65532:65532
ENV HALE_CONFIG=/etc/hale/hale.yaml
EXPOSE 4100
ENTRYPOINT ["/usr/local/bin/hale", "serve"]
