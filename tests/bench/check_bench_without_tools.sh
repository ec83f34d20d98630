#!/bin/sh
# kvtier-bench where iperf3 and fio are not installed: PATH holds neither, so the loopback limit
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

# The file table where fio is missing: a note says so, and every file row (paired with fio round
# by round where fio is there) has no fio figure and no ratio, '-' in the table, null in JSON;
# the raw io_uring loop over the pool's pages, which needs no tool, still gives each its ratio.
out=$(env PATH=/nonexistent "$bench" file --pages 64K --file-batches 1 --repeats 1 --warmup 0 \
        --json -)
echo "$out" | grep -q "^file: fio is not on PATH" || { echo "no note says fio is missing"; exit 1; }
echo "$out" | grep -Eq "^ +64K +1 write +[0-9.]+ +- +- +[0-9.]+ +[0-9.]+ +- +- +[0-9.]+ " ||
  { echo "the side-by-side file table does not show '-' for fio"; exit 1; }
echo "$out" | tail -n 1 | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
rows = [r for r in d["rows"] if r["kind"] == "file"]
assert len(rows) == 8, rows
for r in rows:
    assert r["limit"] == "fio" and r["gbps"] > 0, r
    assert r["limit_gbps"] is None and r["limit_ratio"] is None, r
    assert r["limit2_gbps"] > 0 and r["limit2_ratio"] > 0, r
assert any("fio is not on PATH" in n for n in d["notes"]), d["notes"]
print("ok:", len(rows), "file rows without fio")
'
