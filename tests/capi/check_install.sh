#!/usr/bin/env bash
# `cmake --install --prefix DIR` gives a kvtier.pc that points into DIR, also after DIR moves.
set -euo pipefail
build="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/a" >/dev/null
mv "$tmp/a" "$tmp/b"  # the .pc must not remember where it was installed
pc=$(find "$tmp/b" -name kvtier.pc)
[ -n "$pc" ] || { echo "no kvtier.pc installed"; exit 1; }
cflags=$(PKG_CONFIG_PATH="$(dirname "$pc")" pkg-config --cflags kvtier | xargs)
libs=$(PKG_CONFIG_PATH="$(dirname "$pc")" pkg-config --libs-only-L kvtier | xargs)
inc=$(realpath "${cflags#-I}")
lib=$(realpath "${libs#-L}")
[ "$inc" = "$(realpath "$tmp/b/include")" ] || { echo "Cflags point to $inc"; exit 1; }
[ -f "$inc/kvtier/kvtier.h" ] || { echo "no header under $inc"; exit 1; }
ls "$lib"/libkvtier.so* >/dev/null || { echo "no library under $lib"; exit 1; }
echo "kvtier.pc is relocatable: $cflags $libs"
