#!/usr/bin/env bash
# The main job: installs what is missing, builds, and runs kvtier-bench on the embedded default
# tiers. Arguments go to kvtier-bench (see --help), e.g. bench/run.sh compare --batches 10,50,100,512
set -euo pipefail
cd "$(dirname "$0")/.."
bash cmake/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target kvtier-bench >/dev/null
exec build/bench/kvtier-bench "$@"
