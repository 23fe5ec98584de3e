# confab: one binary, four roles, chosen by the first argument:
#   docker build -t confab .
#   docker run confab edge | router | store | presence   (docs/operations.md, "Container image")
# The Helm chart in k8s/confab runs this image.

# --- build ------------------------------------------------------------------
# rust-toolchain.toml pins the compiler (1.95.0); rustup in this image uses
# exactly that one. protoc comes from the protoc-bin-vendored crate, so no
# system protoc is needed.
FROM rust:1.95-bookworm AS builder
WORKDIR /usr/src/app
COPY . .
RUN cargo build --release --locked -p confab

# --- run --------------------------------------------------------------------
# Distroless: glibc and CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /usr/src/app/target/release/confab /usr/local/bin/confab
# 65532 is distroless' "nonroot" user; the chart runs as it too.
USER 65532:65532
# edge HTTP + Socket.IO (and /metrics), router, store, presence gRPC, and
# the /metrics port of router, store and presence (--metrics-listen).
EXPOSE 3000 7002 7003 7004 9090
ENTRYPOINT ["/usr/local/bin/confab"]
