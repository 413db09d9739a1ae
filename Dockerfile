# syntax=docker/dockerfile:1
# The toolchain stays in the build stage; the runtime stage holds the
# binary and what `ldd` says it needs (glibc, libgcc_s), which
# bookworm-slim already has. Both stages are bookworm, so the glibc the
# binary was linked against is the one it runs on.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY host host
# include_str!'d into the binary.
COPY guest guest
COPY wit wit
# host/Cargo.toml names its test targets there.
COPY tests tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && cp target/release/rsgi-wasm /rsgi-wasm

FROM debian:bookworm-slim
# The cache holds compiled native code: the binary refuses a cache dir that
# is not its own or that others may write to, hence 0700 and the owner.
RUN groupadd --system --gid 10001 rsgi-wasm \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin rsgi-wasm \
 && install -d -o 10001 -g 10001 -m 0700 /var/cache/rsgi-wasm \
 && install -d -m 0755 /etc/rsgi-wasm /srv/apps
COPY --from=build /rsgi-wasm /usr/local/bin/rsgi-wasm
# Each app's private /tmp is made under $TMPDIR: with a read-only root,
# /tmp must be a tmpfs (docker run --tmpfs /tmp) or an emptyDir.
ENV RSGI_WASM_CACHE=/var/cache/rsgi-wasm \
    TMPDIR=/tmp
VOLUME ["/var/cache/rsgi-wasm"]
USER 10001:10001
# 8000: the apps; 9090: /healthz, /readyz and metrics.
EXPOSE 8000 9090
ENTRYPOINT ["rsgi-wasm"]
CMD ["serve", "/etc/rsgi-wasm/tenants.toml", "--listen", "0.0.0.0:8000", "--metrics", "0.0.0.0:9090"]
