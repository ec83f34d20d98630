"""The SGLang adapter, driven the way SGLang's cache controller drives it."""

import hashlib
import threading

import numpy as np
import pytest

from builds import needs_file_tier
from hostpool import ALL_POOLS, HostPool, pool_id, slots_for
from kvtier.sglang import KvtierStorage, store_settings


def storage_config(mla=False, tp_rank=0, tp_size=1, extra=None):
    return dict(tp_rank=tp_rank, tp_size=tp_size, is_mla_model=mla, model_name="org/model-7b",
                is_page_first_layout=False,
                extra_config={"interface_v1": 1, "tiers": "memory",
                              "memory_capacity": "512MiB", **(extra or {})})


def chained_keys(n, salt="k"):
    """Keys as the engine makes them: sha256 over the previous key and the page's tokens."""
    keys, prev = [], b""
    for i in range(n):
        h = hashlib.sha256(prev + f"{salt}{i}".encode()).hexdigest()
        keys.append(h)
        prev = bytes.fromhex(h)
    return keys


@pytest.fixture(params=ALL_POOLS, ids=pool_id)
def backend(request):
    spec = request.param
    pool = HostPool(size=2048, **spec)
    b = KvtierStorage(storage_config(mla=spec["mla"]), {})
    b.register_mem_pool_host(pool)
    yield b, pool
    b.close()


def test_v1_and_generic_paths_read_each_others_pages_exactly(backend):
    b, pool = backend
    P = pool.page_size
    keys = chained_keys(6, "mix")
    src = list(range(1, 7))
    assert b.batch_set_v1(keys, slots_for(src, P)) == [True] * 6
    flat = [pool.get_dummy_flat_data_page() for _ in keys]
    got = b.batch_get(keys, flat)
    # The engine's flat page is the v1 value for every layout but MHA layer_first (K of all
    # layers, then V): there kvtier reorders it, so both paths read the same page exactly.
    assert all(g is f for g, f in zip(got, flat))
    assert [f.tobytes() for f in flat] == [pool.get_data_page(p * P).tobytes() for p in src]
    # Generic write of flat pages, generic read back; v1 reads them too.
    other = chained_keys(3, "generic")
    values = [pool.get_data_page(p * P) for p in (40, 41, 42)]
    assert b.batch_set(other, values) is True
    back = [pool.get_dummy_flat_data_page() for _ in other]
    assert all(g is t for g, t in zip(b.batch_get(other, back), back))
    assert [t.tobytes() for t in back] == [v.tobytes() for v in values]
    dst = [20, 21, 30]
    assert b.batch_exists(other) == 3
    assert b.batch_get_v1(other, slots_for(dst, P)) == [True] * 3
    assert [pool.page_bytes(d * P) for d in dst] == [pool.page_bytes(p * P) for p in (40, 41, 42)]
    assert b.get(other[0], pool.get_dummy_flat_data_page()) is not None
    assert b.exists(keys[1]) and not b.exists("0" * 64)


def test_controller_prefetch_and_backup_pattern(backend):
    b, pool = backend
    P = pool.page_size
    keys = chained_keys(300, "ctl")
    present = [i for i in range(300) if i != 200]  # a hole at 200
    # Backup, as the controller does it: all(batch_set_v1(...)) per chunk.
    for start in range(0, len(present), 64):
        chunk = present[start:start + 64]
        pages = [(i % 60) + 1 for i in chunk]
        assert all(b.batch_set_v1([keys[i] for i in chunk], slots_for(pages, P)))
    # Prefetch: batch_exists in chunks of 128, stopping at the first short chunk.
    hits = 0
    for start in range(0, len(keys), 128):
        chunk = keys[start:start + 128]
        n = b.batch_exists(chunk)
        hits += n
        if n < len(chunk):
            break
    assert hits == 200
    # Then batch_get_v1 of the leading hits into fresh slots; use the leading run of True.
    fresh = [100 + (i % 100) for i in range(hits)]
    got = []
    for start in range(0, hits, 128):
        sl = range(start, min(start + 128, hits))
        got += b.batch_get_v1([keys[i] for i in sl], slots_for([fresh[i] for i in sl], P))
    assert got == [True] * hits
    for i in range(100, 200):  # pages 100..199 hold the last write of each slot
        assert pool.page_bytes(fresh[i] * P) == pool.page_bytes(((i % 60) + 1) * P)


def test_existing_key_counts_as_written(backend):
    b, pool = backend
    keys = chained_keys(2, "dup")
    assert b.batch_set_v1(keys, slots_for([3, 4], pool.page_size)) == [True, True]
    assert b.batch_set_v1(keys, slots_for([5, 6], pool.page_size)) == [True, True]


def test_bad_input_is_false_per_key_and_never_raises(backend, caplog):
    b, pool = backend
    P = pool.page_size
    keys = chained_keys(3, "bad")
    slots = slots_for([1, 2, 3], P)
    slots[P] = 1  # key 1's page starts off a page boundary
    with caplog.at_level("WARNING", logger="kvtier.sglang"):
        assert b.batch_set_v1(keys, slots) == [True, False, True]
    assert "KVTIER_ERR_OUT_OF_RANGE" in caplog.text
    slots = slots_for([1, 2, 3], P)
    slots[2 * P] = pool.size  # past the pool
    assert b.batch_get_v1(keys, slots) == [True, False, False]  # key 1 was never stored
    assert b.batch_set_v1(keys, slots_for([1, 2], P)) == [False] * 3  # wrong slot count
    assert b.batch_set_v1([], slots_for([], P)) == []
    assert b.batch_get_v1(["x" * 5000], slots_for([1], P)) == [False]  # key too long
    assert b.batch_set([keys[0]], None) is False
    assert b.batch_get(keys, None) == [None] * 3


def test_three_engine_threads_at_once(backend):
    b, pool = backend
    P = pool.page_size
    errors = []

    def backup(t):
        try:
            for r in range(20):
                keys = chained_keys(8, f"thr{t}-{r}")
                assert all(b.batch_set_v1(keys, slots_for(range(1 + 8 * t, 9 + 8 * t), P)))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    def prefetch(t):
        try:
            for r in range(20):
                keys = chained_keys(8, f"thr0-{r}")
                n = b.batch_exists(keys)
                got = b.batch_get_v1(keys[:n], slots_for(range(64 + 8 * t, 64 + 8 * t + n), P))
                assert got == [True] * n
                for i in range(n):
                    assert pool.page_bytes((64 + 8 * t + i) * P) == pool.page_bytes((1 + i) * P)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=backup, args=(0,)),
               threading.Thread(target=prefetch, args=(1,)),
               threading.Thread(target=prefetch, args=(2,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_mha_keys_depend_on_the_rank_mla_keys_do_not():
    mha = [store_settings(storage_config(False, r, 2))["namespace"] for r in (0, 1)]
    mla = [store_settings(storage_config(True, r, 2))["namespace"] for r in (0, 1)]
    assert mha[0] != mha[1]
    assert mla[0] == mla[1]
    assert all("org-model-7b" in ns for ns in mha + mla)


def test_unknown_extra_config_key_is_an_error():
    import kvtier

    with pytest.raises(kvtier.KvtierError) as e:
        KvtierStorage(storage_config(extra={"memory_capacty": "1GiB"}), {})
    assert e.value.name == "KVTIER_ERR_CONFIG" and "MEMORY_CAPACTY" in str(e.value)
    with pytest.raises(kvtier.KvtierError) as e:
        KvtierStorage(storage_config(extra={"memory_capacity": "huge"}), {})
    assert "KVTIER_MEMORY_CAPACITY" in str(e.value)


@needs_file_tier
def test_file_tier_through_the_adapter_survives_a_restart(tmp_path):
    spec = ALL_POOLS[0]
    pool = HostPool(size=256, **spec)
    cfg = storage_config(extra={"tiers": "file", "file_dir": str(tmp_path)})
    keys = chained_keys(4, "file")
    b = KvtierStorage(cfg, {})
    b.register_mem_pool_host(pool)
    assert b.batch_set_v1(keys, slots_for([1, 2, 3, 4], pool.page_size)) == [True] * 4
    b.close()
    b = KvtierStorage(cfg, {})
    b.register_mem_pool_host(pool)
    assert b.batch_exists(keys) == 4
    assert b.batch_get_v1(keys, slots_for([10, 11, 12, 13], pool.page_size)) == [True] * 4
    for src, dst in zip([1, 2, 3, 4], [10, 11, 12, 13]):
        assert pool.page_bytes(dst * pool.page_size) == pool.page_bytes(src * pool.page_size)
    b.close()


def test_stats_and_clear(backend):
    b, pool = backend
    keys = chained_keys(2, "stats")
    b.batch_set_v1(keys, slots_for([1, 2], pool.page_size))
    s = b.get_stats()
    assert s["tiers"][0]["name"] == "memory" and s["tiers"][0]["keys"] == 2
    b.clear()
    assert b.batch_exists(keys) == 0


def test_torch_host_pool():
    torch = pytest.importorskip("torch", reason="python3-torch is not installed")
    P, L, H, D, S = 4, 2, 2, 8, 64

    class TorchPool:
        layout, page_size, layer_num, head_num, head_dim, size = "layer_first", P, L, H, D, S
        kv_buffer = torch.randint(0, 256, (2, L, S, H, D), dtype=torch.bfloat16)
        dtype = torch.bfloat16

    b = KvtierStorage(storage_config(), {})
    pool = TorchPool()
    b.register_mem_pool_host(pool)
    idx = torch.arange(P, 3 * P, dtype=torch.int64)
    assert b.batch_set_v1(["a", "b"], idx) == [True, True]
    out = torch.arange(5 * P, 7 * P, dtype=torch.int64)
    assert b.batch_get_v1(["a", "b"], out) == [True, True]
    kv = pool.kv_buffer
    assert torch.equal(kv[:, :, 5 * P:7 * P], kv[:, :, P:3 * P])
