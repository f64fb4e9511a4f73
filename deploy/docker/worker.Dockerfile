# The baton worker image, CPU build: `baton` runs as router, prefill, decode
# or serve (the operator passes the subcommand as the first argument).
#   docker build -f deploy/docker/worker.Dockerfile -t baton:dev .
# Non-root (uid 65532) and fine with a read-only root filesystem: it writes
# only to /tmp, and reads the model from a read-only mount at /model.

ARG DEBIAN=debian:12

FROM ${DEBIAN} AS build
# The build dependencies scripts/setup installs, minus the test-only ones.
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config git ca-certificates \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto \
      libabsl-dev prometheus-cpp-dev libcurl4-openssl-dev nlohmann-json3-dev \
      libpcre2-dev libre2-dev libdnnl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake --preset release -DBATON_CUDA=OFF -DBATON_BUILD_TESTS=OFF -DBATON_BUILD_BENCH=OFF \
    && cmake --build --preset release --target baton \
    && install -D -m 0755 build/bin/baton /out/usr/local/bin/baton

FROM ${DEBIAN}-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      libgrpc++1.51 libprotobuf32 libabsl20220623 libprometheus-cpp-core1.0 \
      libprometheus-cpp-pull1.0 libcurl4 libpcre2-8-0 libre2-9 libdnnl2 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /
# Fail the build, not the pod, if a shared library is missing.
RUN ! ldd /usr/local/bin/baton | grep "not found"
USER 65532:65532
# 50051: gRPC (--port); 9090: /metrics (--metrics-port).
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/baton"]
CMD ["serve", "--help"]
