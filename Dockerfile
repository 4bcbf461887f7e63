# syntax=docker/dockerfile:1
# Sagaflow's one image: every service binary, the `sagaflow` command and the
# web console, run as a non-root user. compose.yaml and the Kubernetes
# manifests (deploy/k8s) pick the binary with their command:
#
#   sagaflow-orchestrator
#   sagaflow-participant order|payment|inventory|flight|hotel|car|trip
#   sagaflow-outbox-relay
#   sagaflow ...                      (docs/cli.md)
#
#   docker build -t sagaflow:local .
#
# tests/tests/deploy.rs checks this file against the code: the packages and
# binaries named here, the user, the console's path, the saga definitions
# and the ports.

# The web console: the TypeScript client is generated from the protos.
FROM node:20-bookworm AS console
WORKDIR /src
COPY protos protos
COPY console console
RUN cd console && npm ci --no-audit --no-fund && npm run build

# The binaries, from the committed Cargo.lock. The caches keep the registry
# and the build directory between builds, so the binaries are copied out of
# the build directory in the same step.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
      -p sagaflow-orchestrator -p sagaflow-participants -p sagaflow-outbox-relay \
      -p sagaflow-cli \
    && mkdir -p /out \
    && cp target/release/sagaflow-orchestrator \
          target/release/sagaflow-participant \
          target/release/sagaflow-outbox-relay \
          target/release/sagaflow /out/

# The runtime: Debian slim with the CA bundle (real Pub/Sub and OTLP over
# TLS) and curl, which compose.yaml's health checks run inside the container
# (`curl -fsS http://127.0.0.1:PORT/readyz`).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 sagaflow \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin sagaflow
COPY --from=build /out/ /usr/local/bin/
COPY --from=console /src/console/dist /usr/share/sagaflow/console
ENV SAGAFLOW_CONSOLE_DIR=/usr/share/sagaflow/console
# The saga definitions shipped with the code, for SAGAFLOW_DEFINITIONS_DIR:
# the trip saga, which exists only as a file, and the order saga, which the
# directory must hold too (when set, it replaces the built-in order saga).
# The variable is left unset here: an orchestrator pointed at this
# directory refuses to start until the trip participants have URLs, so the
# deployments that run them set it.
COPY orchestrator/definitions/order.v1.yaml participants/src/trip/trip.v1.yaml \
     /usr/share/sagaflow/definitions/
# Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
# The binaries' default ports. gRPC: orchestrator 50051, participants
# 50061-50067 (order, payment, inventory, flight, hotel, car, trip). HTTP
# (health, metrics; the orchestrator's also serves the console): 8080, the
# order saga's participants 8081-8083, the relay 8084, the trip saga's
# participants 8091-8094 (clear of the relay and of the Pub/Sub emulator's
# usual 8085, so every binary can run on one host with its defaults).
EXPOSE 50051 50061 50062 50063 50064 50065 50066 50067 8080 8081 8082 8083 8084 8091 8092 8093 8094
CMD ["sagaflow-orchestrator"]
