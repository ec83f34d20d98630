#!/bin/sh
# kvtier-bench where iperf3 (and fio) are not installed: PATH holds neither, so the loopback limit
# is the bench's own TCP loop alone. It must run to the end, say that iperf3 is missing (table and
# JSON notes), and give every row a measured limit (no 0 limit, no ratio against nothing).
set -eu
bench="$1"
out=$(env PATH=/nonexistent "$bench" transfer --tiers remote --blocks 4K,64K --transfer-batch 16 \
        --repeats 1 --warmup 0 --json -)
echo "$out" | grep -q "^transfer: iperf3 is not on PATH" || { echo "no note says iperf3 is missing"; exit 1; }
echo "$out" | tail -n 1 | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
rows = [r for r in d["rows"] if r["kind"] == "transfer"]
assert len(rows) == 4, rows
for r in rows:
    assert r["limit"] == "tcp loop 1M", r
    assert r["limit_gbps"] is not None and r["limit_gbps"] > 0, r
assert any("iperf3 is not on PATH" in n for n in d["notes"]), d["notes"]
print("ok:", len(rows), "rows, limit", rows[0]["limit"])
'
