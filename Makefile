# Thin entry points; CMake does the work. `make demo` and `make test` are all a fresh
# Debian 12 machine needs.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: deps configure build test test-faults demo demo-hospitals bench clean fuzz test-sanitize

deps:
	./scripts/install-deps.sh

configure: deps
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) -LE faults

# Fault injection (issue 23), outside `make test`: fedcoord and fedclients SIGKILLed at seeded
# random moments, 20 times each, against an undisturbed run (scripts/crash_test.sh).
test-faults: build
	cd $(BUILD_DIR) && ctest --output-on-failure -L faults

# The demo needs only the four programs, not the test suite: a first `make demo` builds those
# (about 10-15 minutes on 2 cores, ninja's [n/N] counts the steps) and runs.
DEMO_TARGETS = fedcoord fedclient fedctl fedsim
demo: configure
	@echo "== building $(DEMO_TARGETS) (the first build takes 10-15 minutes on 2 cores)"
	cmake --build $(BUILD_DIR) -j $(JOBS) --target $(DEMO_TARGETS)
	./scripts/demo.sh $(BUILD_DIR)

# Tabular hospital data (README "Hospital data"): the breast cancer data over 3 hospitals, a real
# federation over mutual TLS, accuracy and ROC AUC per hospital and global. Builds only what it runs.
demo-hospitals: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target fedcoord fedclient fedctl
	./scripts/demo_hospitals.sh $(BUILD_DIR)

# Hardening, outside `make test`'s time budget. fuzz: every libFuzzer target FUZZ_S seconds
# (clang, ASan + UBSan, in build-fuzz). test-sanitize: the whole suite under ASan + UBSan.
FUZZ_S ?= 600
fuzz:
	./scripts/install-deps.sh --fuzz
	./scripts/fuzz.sh build-fuzz $(FUZZ_S)

SANITIZE_DIR ?= build-sanitize
test-sanitize: deps
	cmake -S . -B $(SANITIZE_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFL_SANITIZE=ON $(CMAKE_FLAGS)
	cmake --build $(SANITIZE_DIR) -j $(JOBS)
	cd $(SANITIZE_DIR) && ASAN_OPTIONS=detect_container_overflow=0:detect_leaks=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j $(JOBS) --timeout 3600

clean:
	rm -rf $(BUILD_DIR)
