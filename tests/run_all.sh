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

# A stage whose tests fail does not stop the later ones (each says what it found); the command
# fails at the end, naming them.
failed=()
run_tests() {  # run_tests NAME DIR [env and ctest args...]
  local name=$1 dir=$2; shift 2
  (cd "$dir" && env "$@" --output-on-failure) || failed+=("$name")
}

echo "== build and test (RelWithDebInfo)"
build build
# The hostile-client soak runs its full minute here; the sanitizer builds run it shorter.
run_tests normal build KVTIER_TEST_SOAK_SECONDS=60 ctest -j"$jobs"

echo "== the default Release build a user gets (no -Werror), build only"
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-release -j"$jobs"

echo "== AddressSanitizer + UBSan"
build build-asan -DKVTIER_SANITIZE=address -DKVTIER_BUILD_BENCH=OFF
run_tests asan build-asan ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest -j"$jobs"

echo "== ThreadSanitizer (concurrency, core, remote, file and cluster suites)"
build build-tsan -DKVTIER_SANITIZE=thread -DKVTIER_BUILD_BENCH=OFF
run_tests tsan build-tsan TSAN_OPTIONS=halt_on_error=1 setarch "$(uname -m)" -R \
  ctest -j"$jobs" -L "concurrency|core|remote|file|cluster"

if [ ${#failed[@]} -gt 0 ]; then
  echo "== tests failed in: ${failed[*]}"
  exit 1
fi
echo "== all tests passed"
