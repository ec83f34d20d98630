#!/usr/bin/env bash
# The main job: installs what is missing (the build's packages and the bench's limit tools only),
# builds, and runs kvtier-bench on the embedded default tiers. Arguments go to kvtier-bench (see
# --help), e.g. bench/run.sh compare --batches 10,50,100,512
set -euo pipefail
cd "$(dirname "$0")/.."
bash cmake/install-deps.sh bench
# A build folder of its own, without the tests (their packages are the test command's).
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVTIER_BUILD_TESTS=OFF >/dev/null
cmake --build build-bench -j"$(nproc)" --target kvtier-bench >/dev/null
exec build-bench/bench/kvtier-bench "$@"
