"""MLA at TP 4 on one node through the SGLang adapter: four real processes, one file-tier
namespace. Rank 0 writes, ranks 1-3 read its pages byte for byte, and no rank writes twice."""

import json
import os
import subprocess
import sys

from builds import needs_file_tier

HERE = os.path.dirname(os.path.abspath(__file__))


class Rank:
    def __init__(self, rank, size, folder):
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "mla_rank.py"),
                                      str(rank), str(size), folder],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self.proc.stdout.readline()) == {"ready": rank}

    def ask(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0


def file_tier(stats):
    return next(t for t in stats["stats"]["tiers"] if t["name"] == "file")


@needs_file_tier
def test_mla_tp4_rank0_writes_every_rank_reads_byte_exact(tmp_path):
    ranks = [Rank(r, 4, str(tmp_path)) for r in range(4)]
    try:
        n = 24
        # Ranks 1-3 back up first, as an engine without SGLang's backup_skip would: acknowledged,
        # nothing written (their pools hold other bytes: had they written, the first write of a
        # key would win and every check below would fail).
        for r in ranks[1:]:
            assert r.ask(f"set {n}")["set"] == [True] * n
        assert file_tier(ranks[0].ask("stats"))["keys"] == 0
        assert ranks[0].ask(f"set {n}")["set"] == [True] * n
        for r in ranks:
            got = r.ask(f"get {n}")
            assert got["exists"] == n
            assert got["get"] == [True] * n
            assert got["same"] == [True] * n
        # One copy of each page in the namespace, seen the same from every rank.
        for r in ranks:
            assert file_tier(r.ask("stats"))["keys"] == n
    finally:
        for r in ranks:
            r.close()
