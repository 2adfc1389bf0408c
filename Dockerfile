# Multi-stage build of the pgwarden sidecar image.
#   docker build -t pgwarden .
#   docker run -e PGWARDEN_PRIMARY_URL=postgres://app:secret@db:5432/app -p 6432:6432 pgwarden
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY proxy ./proxy
COPY bench ./bench
COPY config ./config
RUN cargo build --release --locked --bin pgwarden

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pgwarden
COPY --from=build /src/target/release/pgwarden /usr/local/bin/pgwarden
COPY config/pgwarden.toml /etc/pgwarden/pgwarden.example.toml
USER pgwarden
# Listen on all interfaces inside the container; configure everything else by env
# (PGWARDEN_PRIMARY_URL, PGWARDEN_REPLICA_URLS, PGWARDEN_POOL_SIZE, ...) or mount a
# file and set PGWARDEN_CONFIG.
ENV PGWARDEN_LISTEN=0.0.0.0:6432 \
    PGWARDEN_HTTP_LISTEN=0.0.0.0:9930 \
    RUST_LOG=info
EXPOSE 6432 9930
ENTRYPOINT ["/usr/local/bin/pgwarden"]
