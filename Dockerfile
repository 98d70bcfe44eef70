# syntax=docker/dockerfile:1
#
# A static, non-root image of ctrlplane-operator.
#
#   docker build -t ghcr.io/ctrlplane/ctrlplane-operator:0.1.0 .
#
# Build stage: Rust on Alpine links against musl, so the binary is static.
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
# Dependencies first, so they are cached apart from the sources.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src bench && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in instances webhooks sandboxes; do echo 'fn main() {}' > bench/$b.rs; done \
    && cargo build --release --locked --bin ctrlplane-operator || true
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin ctrlplane-operator \
    && strip target/release/ctrlplane-operator

# Final stage: no shell, no package manager, uid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/release/ctrlplane-operator /usr/local/bin/ctrlplane-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ctrlplane-operator"]
CMD ["run", "--metrics-address=0.0.0.0:8080", "--log-format=json"]
