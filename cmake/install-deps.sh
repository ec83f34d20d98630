#!/usr/bin/env bash
# Installs the Debian 12 packages kvtier needs; only what is missing.
#   install-deps.sh bench   what the library, kvtier-server and kvtier-bench build with, the
#                           tools the bench measures the machine's limits with (fio, iperf3), and
#                           Python with numpy for bench/python_bench.py
#   install-deps.sh         all of that, and what the tests use (GoogleTest, pytest, torch,
#                           etcd)
set -euo pipefail
pkgs=(build-essential cmake pkg-config liburing-dev libibverbs-dev librdmacm-dev libxxhash-dev
      libzstd-dev libspdlog-dev libcurl4-openssl-dev nlohmann-json3-dev libcpp-httplib-dev
      libssl-dev fio iperf3 python3 python3-numpy)
if [ "${1:-}" != "bench" ]; then
  pkgs+=(libgtest-dev libgmock-dev python3-pytest python3-torch
         etcd-server etcd-client)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q "${missing[@]}"
fi
