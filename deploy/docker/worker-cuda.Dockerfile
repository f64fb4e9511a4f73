# The baton worker image with the CUDA backend (sm_90: H100/H200).
#   docker build -f deploy/docker/worker-cuda.Dockerfile -t baton-cuda:dev .
# Debian 12 with NVIDIA's CUDA repository, so that every other library is the
# same Debian package the CPU image and the tests use. Needs the NVIDIA
# container runtime on the node (the device plugin's nvidia.com/gpu).

ARG DEBIAN=debian:12
ARG CUDA_PKG=13-0

FROM ${DEBIAN} AS cuda-base
ARG CUDA_PKG
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && curl -fsSL -o /tmp/keyring.deb \
         https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb \
    && dpkg -i /tmp/keyring.deb && rm /tmp/keyring.deb \
    && rm -rf /var/lib/apt/lists/*

FROM cuda-base AS build
ARG CUDA_PKG
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config git \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto \
      libabsl-dev prometheus-cpp-dev libcurl4-openssl-dev nlohmann-json3-dev \
      libpcre2-dev libre2-dev libdnnl-dev \
      cuda-nvcc-${CUDA_PKG} cuda-cudart-dev-${CUDA_PKG} libnccl-dev \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/local/cuda/bin:${PATH}
WORKDIR /src
COPY . .
RUN cmake --preset cuda -DBATON_BUILD_TESTS=OFF -DBATON_BUILD_BENCH=OFF \
      -DCMAKE_CUDA_ARCHITECTURES=90 \
    && cmake --build --preset cuda --target baton \
    && install -D -m 0755 build-cuda/bin/baton /out/usr/local/bin/baton

FROM cuda-base
ARG CUDA_PKG
RUN apt-get update && apt-get install -y --no-install-recommends \
      libgrpc++1.51 libprotobuf32 libabsl20220623 libprometheus-cpp-core1.0 \
      libprometheus-cpp-pull1.0 libcurl4 libpcre2-8-0 libre2-9 libdnnl2 \
      cuda-cudart-${CUDA_PKG} libnccl2 \
    && apt-get purge -y curl && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /
ENV LD_LIBRARY_PATH=/usr/local/cuda/lib64 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# libcuda.so.1 comes from the host driver at run time; everything else must
# resolve now.
RUN ! ldd /usr/local/bin/baton | grep "not found" | grep -v libcuda.so
USER 65532:65532
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/baton"]
CMD ["serve", "--help"]
