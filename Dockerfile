# syntax=docker/dockerfile:1
# killreport's image: every binary (server, the four workers, queue, loadgen) on a small
# Debian, run as a user without privileges. `docker compose up` builds and
# runs it; alone:
#   docker build -t killreport . && docker run --rm killreport server --help

# --- build: the same command CI's release build uses, queries checked against .sqlx/ ---
FROM rust:1-bookworm AS builder
WORKDIR /build
ENV SQLX_OFFLINE=true
COPY . .
# The registry and target/ are cached between builds (BuildKit), so a code change rebuilds
# killreport alone, not its dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bins \
    && mkdir /out \
    && cd target/release \
    && cp server worker-killmails worker-redisq worker-enrich worker-user-killmails queue loadgen /out/

# --- run: the binaries (static data, migrations and GraphiQL are compiled in), CA roots for
# TLS to managed services and ESI, curl for the health checks ---
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home killreport
COPY --from=builder /out/ /usr/local/bin/
USER killreport:killreport
ENV LISTEN_ADDR=0.0.0.0:4000 \
    RUST_LOG=info
EXPOSE 4000
CMD ["server"]
