# The assent server image: `docker build -t assent .`
#
# Two stages: the release build on the Rust image, then the binary alone on Debian slim
# (glibc, CA certificates for TLS to PostgreSQL and Redis), run as an unprivileged user.
# `assent health` asks the running server's gRPC health service, so the image needs no
# curl or grpc_health_probe.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# The client crate (a workspace member) compiles proto/ with protox (pure Rust): no protoc
# needed.
COPY Cargo.toml Cargo.lock ./
COPY proto ./proto
COPY clients/rust ./clients/rust
COPY migrations ./migrations
COPY policies ./policies
COPY src ./src
# Only the binary is built, but the manifest names the benchmark and test targets, whose
# files cargo looks for when it reads it.
COPY bench ./bench
COPY tests ./tests
RUN cargo build --release --locked --bin assent \
    && cp target/release/assent /usr/local/bin/assent

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/assent --create-home assent
COPY --from=build /usr/local/bin/assent /usr/local/bin/assent
USER 10001:10001
WORKDIR /var/lib/assent
# Inside a container the server listens beyond loopback, which it allows only with TLS and
# caller authentication configured (ASSENT_TLS_CERT/KEY, and ASSENT_JWT_* or
# ASSENT_TLS_CLIENT_CA; see docs/configuration.md); the admin port serves /metrics, /healthz and /readyz.
ENV ASSENT_LISTEN=0.0.0.0:50051 \
    ASSENT_ADMIN_LISTEN=0.0.0.0:9090 \
    ASSENT_DATA_DIR=/var/lib/assent/data \
    ASSENT_LOG_FORMAT=json
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["assent", "health"]
ENTRYPOINT ["assent"]
CMD ["serve"]
