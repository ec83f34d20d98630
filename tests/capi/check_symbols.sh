#!/usr/bin/env bash
# Every symbol libkvtier exports is kvtier_* (plus the version node); nothing else leaks.
set -euo pipefail
lib="$1"
syms=$(nm -D --defined-only "$lib" | awk '{print $3}' | sed 's/@.*//' | sort -u)
bad=$(echo "$syms" | grep -v -E '^(kvtier_[a-z0-9_]+|KVTIER_[0-9.]+)$' || true)
if [ -n "$bad" ]; then
  echo "unexpected exported symbols:"; echo "$bad"; exit 1
fi
n=$(echo "$syms" | grep -c '^kvtier_')
[ "$n" -ge 20 ] || { echo "only $n kvtier_ symbols exported"; exit 1; }
# The header declares every exported call and nothing the library lacks.
hdr="$2"
declared=$(grep -oE 'kvtier_[a-z0-9_]+\(' "$hdr" | tr -d '(' | sort -u)
exported=$(echo "$syms" | grep '^kvtier_')
if [ "$declared" != "$exported" ]; then
  echo "header and library differ:"; diff <(echo "$declared") <(echo "$exported"); exit 1
fi
echo "exports: $n kvtier_ symbols, all declared in the header"
# Each release's node (capi/kvtier.map) versions the symbols it names; the others are KVTIER_0.
map="$3"
versioned=$(nm -D --defined-only "$lib" | awk '$3 ~ /^kvtier_/ {print $3}' | sort -u)
expected=$(awk '/^KVTIER_[0-9.]+ *\{/ {node=$1} /^ *kvtier_[a-z0-9_]+;/ {gsub(/[ ;]/, ""); print $0 "@@" node}' "$map")
for want in $expected; do
  echo "$versioned" | grep -qx "$want" || { echo "not exported as $want"; exit 1; }
done
others=$(echo "$versioned" | grep -v -x -F "$expected" | grep -v '@@KVTIER_0$' || true)
if [ -n "$others" ]; then
  echo "symbols in no node of $map:"; echo "$others"; exit 1
fi
echo "version nodes: $(echo "$expected" | wc -l) symbols named by later nodes, the rest KVTIER_0"
