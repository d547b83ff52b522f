# Build stage: compile the release binary.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN apt-get update && apt-get install -y --no-install-recommends cmake nasm make && rm -rf /var/lib/apt/lists/*
RUN cargo build --release --locked --bin imgmirror

# Runtime stage: a slim Debian with CA certificates, running as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/imgmirror --create-home imgmirror
COPY --from=build /src/target/release/imgmirror /usr/local/bin/imgmirror
COPY config/imgmirror.toml /etc/imgmirror/imgmirror.toml
WORKDIR /var/lib/imgmirror
ENV IMGMIRROR_CONFIG=/etc/imgmirror/imgmirror.toml \
    IMGMIRROR_SERVER__LISTEN=0.0.0.0:8080 \
    IMGMIRROR_CACHE__DIR=/var/lib/imgmirror/mirror
RUN mkdir -p /var/lib/imgmirror/mirror && chown imgmirror /var/lib/imgmirror/mirror
VOLUME ["/var/lib/imgmirror/mirror"]
USER imgmirror
EXPOSE 8080
ENTRYPOINT ["imgmirror"]
CMD ["serve"]
