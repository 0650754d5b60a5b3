# phantom-broker: a release build, then a slim runtime that runs `phantom serve` as a non-root user.
#
#   podman build -t phantom-broker .          (or docker build)
#   podman run --init -p 8443:8443 \
#     -v ./deploy/phantom.toml:/etc/phantom/phantom.toml:ro -v ./policies:/etc/phantom/policies:ro \
#     -v ./certs:/etc/phantom/certs:ro -v ./secrets:/run/secrets:ro -v phantom-audit:/var/lib/phantom/audit \
#     phantom-broker
#
# Config, policies and certificates are mounted read-only; the real tokens come from files under
# /run/secrets (`source = { file = ... }`), never from the image or its environment; the audit
# log is on a volume. The broker drains for up to 10 s on SIGTERM: give `stop` 15 s.

FROM rust:1-bookworm AS build
WORKDIR /src
# The manifest names its bench and test targets: cargo wants their files even when it builds only
# the binary. The console's templates are compiled into it.
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY templates templates
COPY benches/micro.rs benches/micro.rs
COPY tests/e2e/main.rs tests/e2e/main.rs
RUN cargo build --release --locked --bin phantom \
 && install -D -m 0755 target/release/phantom /out/phantom

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/phantom --shell /usr/sbin/nologin phantom \
 && mkdir -p /etc/phantom /var/lib/phantom/audit \
 && chown -R phantom:phantom /var/lib/phantom
# System trust anchors for the upstream registry's and the issuers' TLS: Debian's bundle, from the
# build stage (no package manager runs in this stage).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/phantom /usr/local/bin/phantom
USER 10001:10001
WORKDIR /var/lib/phantom
VOLUME ["/var/lib/phantom/audit"]
# The registry face, the admin listener, the forward proxy.
EXPOSE 8443 9090 3128
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/phantom"]
CMD ["serve", "--config", "/etc/phantom/phantom.toml"]
