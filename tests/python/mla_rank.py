"""One TP rank of an MLA model, as its own process, for test_mla_tp.py. Its host pool holds
random bytes of its own (seed = rank); rank 0's pool is the truth every rank must read back.
Reads commands from stdin, one a line, and answers each with one JSON line:
    set K     batch_set_v1 of pages 0..K-1 (slots of pages 1..K) -> {"set": [bools]}
    get K     batch_exists, then batch_get_v1 into pages 100.. -> {"exists": n, "get": [bools],
              "same": whether each page read equals rank 0's page byte for byte}
    stats     -> the store's stats
"""

import json
import sys
from types import SimpleNamespace

from hostpool import HostPool, slots_for
from kvtier.sglang import KvtierStorage

MLA = dict(mla=True, layout="page_first", page_size=8, layer_num=5, kv_cache_dim=24)


def main():
    rank, size, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    cfg = SimpleNamespace(tp_rank=rank, tp_size=size, pp_rank=0, pp_size=1, attn_cp_rank=0,
                          attn_cp_size=1, is_mla_model=True, model_name="org/mla-model",
                          is_page_first_layout=True,
                          extra_config={"interface_v1": 1, "tiers": "file", "file_dir": folder})
    pool = HostPool(size=2048, seed=rank, **MLA)
    truth = HostPool(size=2048, seed=0, **MLA)  # what rank 0's pool holds
    keys = [f"{i:064x}" for i in range(200)]
    b = KvtierStorage(cfg, {})
    b.register_mem_pool_host(pool)
    P = pool.page_size
    print(json.dumps({"ready": rank}), flush=True)
    for line in sys.stdin:
        cmd, *arg = line.split()
        if cmd == "set":
            k = int(arg[0])
            out = {"set": b.batch_set_v1(keys[:k], slots_for(range(1, k + 1), P))}
        elif cmd == "get":
            k = int(arg[0])
            exists = b.batch_exists(keys[:k])
            got = b.batch_get_v1(keys[:k], slots_for(range(100, 100 + k), P))
            same = [pool.page_bytes((100 + i) * P) == truth.page_bytes((1 + i) * P)
                    for i in range(k)]
            out = {"exists": exists, "get": got, "same": same}
        elif cmd == "stats":
            out = {"stats": b.get_stats()}
        else:
            break
        print(json.dumps(out), flush=True)
    b.close()


if __name__ == "__main__":
    main()
