# Multi-stage build on Debian 12: the build stage compiles the four programs with the same
# script and CMake options as a developer machine; the runtime stage holds those programs,
# scripts/ (pki.sh) and only the shared libraries they load. Used by docker-compose.yml.
#
#   docker build -t federated:dev .
FROM debian:bookworm AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN ./scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
# Only what the programs are built from (not build folders or outputs of the work tree).
COPY CMakeLists.txt ./
COPY proto/ proto/
COPY common/ common/
COPY strategies/ strategies/
COPY simulations/ simulations/
COPY coordinator/ coordinator/
COPY client/ client/
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DFL_BUILD_TESTS=OFF \
 && cmake --build /build --target fedsim fedcoord fedclient fedctl \
 && strip /build/bin/fedsim /build/bin/fedcoord /build/bin/fedclient /build/bin/fedctl

FROM debian:bookworm-slim AS runtime
# The runtime halves of the -dev packages that install-deps.sh builds with (apt-cache depends
# libtorch-dev libgrpc++-dev librocksdb-dev libspdlog-dev libyaml-cpp-dev libprotobuf-dev libdcmtk-dev
# libssl-dev) and the data set. scripts/pki.sh runs fedctl pki (no openssl CLI needed).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libtorch1.13 libgrpc++1.51 libprotobuf32 librocksdb7.8 libspdlog1.10 libfmt9 \
      libyaml-cpp0.7 libssl3 zlib1g libdcmtk17 dataset-fashion-mnist libopenblas0-openmp \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /build/bin/fedsim /build/bin/fedcoord /build/bin/fedclient /build/bin/fedctl /usr/local/bin/
COPY scripts/ /opt/federated/scripts/
# Fail the build here, not at `docker compose up`, if a shared library is missing.
RUN for b in fedsim fedcoord fedclient fedctl; do \
      if ldd "/usr/local/bin/$b" | grep "not found"; then echo "missing libraries for $b" >&2; exit 1; fi; \
    done
ENV FASHION_MNIST_DIR=/usr/share/datasets/fashion-mnist
# The programs run as fl (uid 10001), not root. Volumes mounted at these directories start out
# owned by fl (Docker copies the ownership into a new volume); pki-init alone runs as root.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/fedcoord --shell /usr/sbin/nologin fl \
 && mkdir -p /data /var/lib/fedcoord /pki \
 && chown fl:fl /data /var/lib/fedcoord
USER 10001:10001
WORKDIR /opt/federated
# The programs handle SIGTERM (docker stop) by finishing the current step and saving state.
STOPSIGNAL SIGTERM
ENTRYPOINT []
CMD ["fedsim", "--help"]
