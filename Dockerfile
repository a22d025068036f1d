# Multi-stage build on Debian 12: the build stage compiles everything, the runtime stage
# keeps the programs and the shared libraries they need.
FROM debian:bookworm AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN ./scripts/install-deps.sh
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DFL_BUILD_TESTS=OFF && cmake --build build

FROM debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends libtorch1.13 libgrpc++1.51 librocksdb7.8 \
      libspdlog1.10 libyaml-cpp0.7 libssl3 dataset-fashion-mnist && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/bin/ /usr/local/bin/
ENTRYPOINT []
