# syntax=docker/dockerfile:1
#
# The image of ctrlplane-operator, for people who have Docker:
#
#   docker build -t ghcr.io/ctrlplane/ctrlplane-operator:0.1.0 .
#
# hack/image.sh builds the same image without Docker (an OCI layout, with umoci). Both
# lay out the root filesystem with `hack/image.sh rootfs` and set the same configuration
# below; tests/image.rs checks that this file and hack/image.sh agree. The layout:
#
#   /usr/local/bin/ctrlplane-operator   static binary (glibc, crt-static), 0755, root
#   /etc/ssl/certs/ca-certificates.crt  CA bundle (Debian's ca-certificates)
#   /etc/passwd, /etc/group             root, nobody, and nonroot (65532:65532)
#   /etc/nsswitch.conf                  hosts: files dns
#   /home/nonroot (0700, 65532), /tmp (1777)
#
# Build stage: Debian bookworm's glibc (2.36, as on the machines hack/image.sh runs on),
# linked statically, with the same command as hack/image.sh.
FROM rust:1.95-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=symbols
WORKDIR /src
# Dependencies first, so they are cached apart from the sources.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src bench && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in instances webhooks sandboxes; do echo 'fn main() {}' > bench/$b.rs; done \
    && cargo build --release --locked --target x86_64-unknown-linux-gnu --bin ctrlplane-operator || true
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --target x86_64-unknown-linux-gnu --bin ctrlplane-operator
COPY hack/image.sh hack/image.sh
RUN hack/image.sh rootfs target/x86_64-unknown-linux-gnu/release/ctrlplane-operator \
    /etc/ssl/certs/ca-certificates.crt /rootfs

# Final stage: nothing but that root filesystem. COPY --from keeps the owners set in the
# build stage (root, and 65532 for /home/nonroot).
FROM scratch
COPY --from=build /rootfs/ /
USER 65532:65532
WORKDIR /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
EXPOSE 8080
LABEL org.opencontainers.image.source="https://github.com/ctrlplane/ctrlplane-operator" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.title="ctrlplane-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/ctrlplane-operator"]
CMD ["run", "--metrics-address=0.0.0.0:8080", "--log-format=json"]
