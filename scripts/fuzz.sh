#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang + ASan + UBSan) in their own build folder and
# runs each for SECONDS from its seed corpus (tests/fuzz/corpus/<target>, copied, so the
# repository is not written to), as many at once as there are cores. Prints executions and
# crashes per target; exits 1 when any target crashed (the inputs stay in BUILD/fuzz-out).
#
#   scripts/fuzz.sh [BUILD_DIR] [SECONDS]        # make fuzz FUZZ_S=600
set -euo pipefail
build=${1:-build-fuzz}
seconds=${2:-600}
jobs=${JOBS:-$(nproc)}
here=$(cd "$(dirname "$0")/.." && pwd)
targets=(payload safetensors idx csv yaml_config)

command -v clang++-14 >/dev/null || { echo "fuzz.sh: clang++-14 is missing (scripts/install-deps.sh --fuzz)" >&2; exit 2; }
mkdir -p "$build"
CC=clang-14 CXX=clang++-14 cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFL_BUILD_TESTS=OFF -DFL_FUZZ=ON > "$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 2; }
cmake --build "$build" -j "$jobs" --target "${targets[@]/#/fuzz_}"

out=$build/fuzz-out
rm -rf "$out"
mkdir -p "$out"
# libtorch is not instrumented: its containers look overflowed to ASan.
export ASAN_OPTIONS=detect_container_overflow=0:detect_leaks=0:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
run() {
  local t=$1
  mkdir -p "$out/$t/corpus" "$out/$t/crashes"
  cp -r "$here/tests/fuzz/corpus/$t/." "$out/$t/corpus/"
  "$build/bin/fuzz_$t" "$out/$t/corpus" -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=25 \
    -print_final_stats=1 -artifact_prefix="$out/$t/crashes/" > "$out/$t/log" 2>&1 || true
}
running=0
for t in "${targets[@]}"; do
  run "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait

failed=0
printf '%-12s %14s %8s %8s\n' target executions exec/s crashes
for t in "${targets[@]}"; do
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$t/log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out/$t/log" | tail -1)
  crashes=$(find "$out/$t/crashes" -type f | wc -l)
  printf '%-12s %14s %8s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "$crashes"
  [ "$crashes" -eq 0 ] && [ -n "$execs" ] || failed=1
done
[ "$failed" -eq 0 ] || { echo "fuzz.sh: crashes (or a target that did not run): see $out/<target>/log" >&2; exit 1; }
