# The baton-operator image.
#   docker build -f deploy/docker/operator.Dockerfile -t baton-operator:dev .
# It links only absl, nlohmann_json, libcurl and prometheus-cpp, but the
# top-level CMake project finds every dependency, so the build stage has them
# all; the runtime stage has the operator's few.

ARG DEBIAN=debian:12

FROM ${DEBIAN} AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config git ca-certificates \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto \
      libabsl-dev prometheus-cpp-dev libcurl4-openssl-dev nlohmann-json3-dev \
      libpcre2-dev libre2-dev libdnnl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake --preset release -DBATON_CUDA=OFF -DBATON_BUILD_TESTS=OFF -DBATON_BUILD_BENCH=OFF \
    && cmake --build --preset release --target baton-operator \
    && install -D -m 0755 build/bin/baton-operator /out/usr/local/bin/baton-operator

FROM ${DEBIAN}-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      libabsl20220623 libprometheus-cpp-core1.0 libcurl4 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /
RUN ! ldd /usr/local/bin/baton-operator | grep "not found"
# The chart runs it with a read-only root filesystem; it writes nothing.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/baton-operator"]
