# dkim-relay container image: build with the Rust toolchain, run on a slim Debian as a
# non-root user. Spool and key store are volumes; the config is a file you may replace.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config.example.toml ./
RUN cargo build --release --locked

FROM debian:bookworm-slim
# ca-certificates: the upstream's TLS certificate is checked against the system roots.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/dkim-relay dkim-relay \
    && mkdir -p /var/lib/dkim-relay/spool /var/lib/dkim-relay/keys /var/lib/dkim-relay/outbox /etc/dkim-relay \
    && chown -R dkim-relay:dkim-relay /var/lib/dkim-relay \
    && chmod 700 /var/lib/dkim-relay/keys
COPY --from=build /src/target/release/dkim-relay /usr/local/bin/dkim-relay
COPY deploy/container.toml /etc/dkim-relay/config.toml
USER dkim-relay
WORKDIR /var/lib/dkim-relay
VOLUME ["/var/lib/dkim-relay/spool", "/var/lib/dkim-relay/keys"]
EXPOSE 2525 9325
# Asks the relay's own /healthz (metrics.listen in the config); no curl needed.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/dkim-relay", "--config", "/etc/dkim-relay/config.toml", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/dkim-relay", "--config", "/etc/dkim-relay/config.toml"]
CMD ["serve"]
