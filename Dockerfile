# syntax=docker/dockerfile:1
#
# archway's image, for linux/amd64 and linux/arm64 alike:
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -t REGISTRY/archway:TAG --push .
#
# The build stage runs on the build machine's own platform ($BUILDPLATFORM)
# and cross-compiles for the image's ($TARGETARCH), so neither image is
# built under QEMU emulation. Targets are the glibc ones
# (x86_64/aarch64-unknown-linux-gnu): Debian packages the cross gcc and libc
# that ring's C and assembly need, and the binary runs on distroless "cc",
# the same Debian release's glibc, CA certificates and nonroot user (65532).
# (musl would allow a fully static image, but Debian ships a musl compiler
# only for the build machine's own architecture, and musl's allocator is
# slow under tokio's threads.)

# The Rust toolchain (Cargo.toml's rust-version or newer). The build stage's
# Debian release must match the runtime's: bookworm = debian12.
ARG RUST_VERSION=1.95

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-bookworm AS build
ARG TARGETARCH
ARG BUILDARCH
# Which Rust target, and for a foreign one the cross gcc (compiler and
# linker) with its libc: written to /target.env for the build step below.
# (The cross packages are not pinned: they follow the rust image's Debian
# release, as its own gcc does. $pkgs is split into names on purpose.)
# hadolint ignore=SC2086,DL3008
RUN set -eu; \
    case "$TARGETARCH" in \
      amd64) triple=x86_64-unknown-linux-gnu; prefix=x86_64-linux-gnu; \
             pkgs="gcc-x86-64-linux-gnu libc6-dev-amd64-cross"; \
             linker_var=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER; \
             cc_var=CC_x86_64_unknown_linux_gnu; ar_var=AR_x86_64_unknown_linux_gnu ;; \
      arm64) triple=aarch64-unknown-linux-gnu; prefix=aarch64-linux-gnu; \
             pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross"; \
             linker_var=CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER; \
             cc_var=CC_aarch64_unknown_linux_gnu; ar_var=AR_aarch64_unknown_linux_gnu ;; \
      *) echo "archway images are built for amd64 and arm64, not $TARGETARCH" >&2; exit 1 ;; \
    esac; \
    echo "export TRIPLE=$triple" > /target.env; \
    if [ "$TARGETARCH" != "$BUILDARCH" ]; then \
      apt-get update; \
      apt-get install -y --no-install-recommends $pkgs; \
      rm -rf /var/lib/apt/lists/*; \
      { echo "export $linker_var=$prefix-gcc"; \
        echo "export $cc_var=$prefix-gcc"; \
        echo "export $ar_var=$prefix-ar"; } >> /target.env; \
    fi; \
    rustup target add "$triple"; \
    cat /target.env

WORKDIR /src
COPY . .
# Release build without debug info (Cargo.toml keeps it for profiling
# locally; in the image it would only triple the size). Symbols stay, so
# a panic's backtrace still names functions.
ENV CARGO_PROFILE_RELEASE_DEBUG=0
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    set -eu; \
    . /target.env; \
    cargo build --release --locked --bin archway --target "$TRIPLE"; \
    cp "target/$TRIPLE/release/archway" /archway

# gcr.io/distroless/cc-debian12: glibc, libgcc, CA certificates (archway
# verifies registries over HTTPS against them) and no shell. Pin it by digest
# (…:nonroot@sha256:…) for reproducible images.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="archway" \
      org.opencontainers.image.description="Kubernetes admission webhook that steers pods to the CPU architectures their images publish" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /archway /archway
# nonroot, by number, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# 8443: the webhook (HTTPS); 8080: /healthz and /readyz.
EXPOSE 8443 8080
ENTRYPOINT ["/archway"]
CMD ["serve"]
