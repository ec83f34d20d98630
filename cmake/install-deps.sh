#!/usr/bin/env bash
# Installs the Debian 12 packages kvtier builds, tests and benches with; only what is missing.
set -euo pipefail
pkgs=(build-essential cmake pkg-config liburing-dev libibverbs-dev librdmacm-dev libxxhash-dev
      libzstd-dev libspdlog-dev libgtest-dev libgmock-dev libbenchmark-dev python3 python3-pytest
      python3-numpy python3-torch fio iperf3 libcurl4-openssl-dev nlohmann-json3-dev
      libcpp-httplib-dev libssl-dev etcd-server etcd-client)
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
