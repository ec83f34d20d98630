#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs every test three ways: a normal
# build (warnings are errors), AddressSanitizer + UBSan, and ThreadSanitizer on the concurrent
# suites. It also builds the default Release configuration a user gets (warnings not errors).
set -euo pipefail
cd "$(dirname "$0")/.."
bash cmake/install-deps.sh
jobs=$(nproc)

build() {  # build DIR [cmake args...]
  local dir=$1; shift
  cmake -S . -B "$dir" -DKVTIER_WERROR=ON "$@" >/dev/null
  cmake --build "$dir" -j"$jobs"
}

echo "== build and test (RelWithDebInfo)"
build build
# The hostile-client soak runs its full minute here; the sanitizer builds run it shorter.
(cd build && KVTIER_TEST_SOAK_SECONDS=60 ctest -j"$jobs" --output-on-failure)

echo "== the default Release build a user gets (no -Werror), build only"
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-release -j"$jobs"

echo "== AddressSanitizer + UBSan"
build build-asan -DKVTIER_SANITIZE=address -DKVTIER_BUILD_BENCH=OFF
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest -j"$jobs" --output-on-failure)

echo "== ThreadSanitizer (concurrency, core and remote suites)"
build build-tsan -DKVTIER_SANITIZE=thread -DKVTIER_BUILD_BENCH=OFF
(cd build-tsan && TSAN_OPTIONS=halt_on_error=1 setarch "$(uname -m)" -R \
  ctest -j"$jobs" --output-on-failure -L "concurrency|core|remote")

echo "== all tests passed"
