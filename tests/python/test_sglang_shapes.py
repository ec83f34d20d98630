"""The SGLang adapter in the deployment shapes users run: page identity (PP, CP, TP, formats,
restarts), pools described only by their own meta, the v2 interface of hybrid models, draft
pages, attach/detach, the engine's settings, torch 1.13."""

import os
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from builds import needs_file_tier
from hostpool import HostPool, StatePool, slots_for
from kvtier.sglang import KvtierStorage, namespace_for

torch = pytest.importorskip("torch", reason="python3-torch is not installed (tests/run_all.sh "
                                            "installs it)")

MHA = dict(mla=False, layout="page_first", page_size=4, layer_num=3, head_num=2, head_dim=8)
MLA = dict(mla=True, layout="page_first", page_size=8, layer_num=5, kv_cache_dim=24)


def config(mla=False, extra=None, **ranks):
    cfg = dict(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
               is_mla_model=mla, model_name="org/model-7b", is_page_first_layout=True,
               extra_config={"interface_v1": 1, "tiers": "memory", "memory_capacity": "256MiB",
                             **(extra or {})})
    cfg.update(ranks)
    return SimpleNamespace(**cfg)


def keys_of(n, salt):
    return [f"{salt}-{i:04d}".ljust(64, "f") for i in range(n)]


def adapter(cfg, pool):
    b = KvtierStorage(cfg, {})
    b.register_mem_pool_host(pool)
    return b


@pytest.fixture
def server(kvtier_server):
    """The address of a kvtier-server started for the test."""
    return kvtier_server[1]


# ---- page identity ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [MHA, MLA], ids=["MHA", "MLA"])
def test_pipeline_stages_on_one_server_never_read_each_other(server, spec):
    remote = {"tiers": "remote", "remote_servers": server}
    pools = [HostPool(size=256, seed=s, **spec) for s in (1, 2)]
    stages = [adapter(config(spec["mla"], remote, pp_rank=r, pp_size=2), pools[r]) for r in (0, 1)]
    keys = keys_of(2, "pp")
    P = spec["page_size"]
    assert stages[0].batch_set_v1(keys, slots_for([1, 2], P)) == [True, True]
    assert stages[0].batch_exists(keys) == 2
    assert stages[1].batch_exists(keys) == 0
    before = pools[1].bytes.copy()
    assert stages[1].batch_get_v1(keys, slots_for([5, 6], P)) == [False, False]
    assert np.array_equal(before, pools[1].bytes)  # stage 1's layers untouched
    # Stage 1 stores its own layers under the same keys; each reads back its own.
    assert stages[1].batch_set_v1(keys, slots_for([1, 2], P)) == [True, True]
    for stage, pool in zip(stages, pools):
        assert stage.batch_get_v1(keys, slots_for([9, 10], P)) == [True, True]
        assert pool.page_bytes(9 * P) == pool.page_bytes(1 * P)
    for s in stages:
        s.close()


def test_namespaces_name_every_rank_that_holds_its_own_slice():
    ns = lambda mla=False, **r: namespace_for(config(mla, **r))  # noqa: E731
    assert ns() == "org-model-7b/tp0of1"  # PP = CP = 1: the names of before
    assert len({ns(pp_rank=0, pp_size=2), ns(pp_rank=1, pp_size=2), ns()}) == 3
    assert len({ns(attn_cp_rank=0, attn_cp_size=2), ns(attn_cp_rank=1, attn_cp_size=2)}) == 2
    assert ns(True, tp_rank=0, tp_size=8) == ns(True, tp_rank=5, tp_size=8)  # MLA shares TP
    assert ns(tp_rank=0, tp_size=8) != ns(tp_rank=5, tp_size=8)
    assert ns(True, attn_cp_rank=1, attn_cp_size=2) != ns(True, attn_cp_rank=0, attn_cp_size=2)
    assert ns(dp_rank=3, dp_size=4) == ns()  # attention-DP ranks share their prefixes


def torch_pool(dtype, layout="page_first", S=256, P=4, L=3, H=2, D=8, seed=0):
    """A torch host pool in SGLang's MHA shapes, with random bytes."""
    shape = {"page_first": (2, S, L, H, D), "layer_first": (2, L, S, H, D)}[layout]
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (int(np.prod(shape)) * 2,), dtype=torch.uint8, generator=g)
    pool = SimpleNamespace(layout=layout, page_size=P, layer_num=L, head_num=H, head_dim=D,
                           size=S, dtype=dtype, kv_buffer=raw.view(dtype).view(shape))
    return pool


def page(pool, slot):
    P = pool.page_size
    kv = pool.kv_buffer
    part = kv[:, slot:slot + P] if pool.layout == "page_first" else kv[:, :, slot:slot + P]
    return part.contiguous().view(torch.uint8).numpy().tobytes()


@needs_file_tier
@pytest.mark.parametrize("change", ["dtype", "layout"])
def test_file_tier_reopened_with_another_format_misses(tmp_path, change):
    cfg = config(extra={"tiers": "file", "file_dir": str(tmp_path)})
    first = torch_pool(torch.bfloat16)
    second = torch_pool(torch.float16) if change == "dtype" else \
        torch_pool(torch.bfloat16, layout="layer_first")
    keys = keys_of(3, "fmt")
    b = adapter(cfg, first)
    assert b.batch_set_v1(keys, torch.arange(4, 16)) == [True] * 3
    b.close()
    b = adapter(cfg, second)
    before = second.kv_buffer.clone()
    assert b.batch_exists(keys) == 0
    assert b.batch_get_v1(keys, torch.arange(20, 32)) == [False] * 3
    assert torch.equal(before.view(torch.uint8), second.kv_buffer.view(torch.uint8))
    b.close()
    b = adapter(cfg, first)  # the same format again: its pages are there
    assert b.batch_get_v1(keys, torch.arange(20, 32)) == [True] * 3
    assert page(first, 20) == page(first, 4)
    b.close()


def test_generic_pages_of_another_dtype_are_misses():
    one = HostPool(size=256, itemsize=1, seed=1, **MHA)
    two = HostPool(size=256, itemsize=2, seed=2, **MHA)
    cfg = config(extra={"interface_v1": 0})
    store = KvtierStorage(cfg, {})
    store.register_mem_pool_host(one)
    keys = keys_of(2, "gen")
    assert store.batch_set(keys, [one.get_data_page(4), one.get_data_page(8)]) is True
    # Another run (here: the same store, re-registered) with a 2-byte pool of the same shape.
    store.register_mem_pool_host(two)
    targets = [two.get_dummy_flat_data_page() for _ in keys]
    assert store.batch_get(keys, targets) == [None, None]
    assert store.batch_exists(keys) == 0
    # A target of the wrong size never takes a partial page either.
    store.register_mem_pool_host(one)
    assert store.batch_get(keys, [np.zeros(10, np.uint8), one.get_dummy_flat_data_page()])[0] is None
    store.close()


def test_torch_pools_register_on_this_torch(tmp_path):
    """torch 1.13 (Debian 12) has no dtype.itemsize; torch 2.x has. Both must work."""
    pool = torch_pool(torch.bfloat16)
    b = adapter(config(), pool)
    assert b.batch_set_v1(keys_of(2, "t"), torch.arange(8, 16)) == [True, True]
    assert b.batch_get_v1(keys_of(2, "t"), torch.arange(40, 48)) == [True, True]
    assert page(pool, 40) == page(pool, 8) and page(pool, 44) == page(pool, 12)
    b.close()


# ---- the pool's own meta is the truth ------------------------------------------------------------

class MockHostKVCache:
    """A pool like the one in SGLang's storage-backend comparison test: only page_size, layout,
    dtype, kv_buffer and the page calls; a page is one row with K and V side by side, and the
    engine's indices are page numbers."""

    def __init__(self, page_size=64, is_mla=False, num_pages=100):
        self.page_size, self.layout, self.dtype = page_size, "page_first", torch.float16
        self.numel_per_page = page_size * (2 if is_mla else 4)
        self.kv_buffer = torch.randn(num_pages, self.numel_per_page, dtype=self.dtype)
        self.is_mla = is_mla

    def get_data_page(self, index, flat=True):
        return self.kv_buffer[int(index)]

    def get_dummy_flat_data_page(self):
        return torch.zeros(self.numel_per_page, dtype=self.dtype)

    def set_from_flat_data_page(self, index, data_page):
        self.kv_buffer[int(index)].copy_(data_page.reshape(self.kv_buffer[int(index)].shape))

    def get_page_buffer_meta(self, indices):
        ptrs, sizes = [], []
        half = self.numel_per_page // (1 if self.is_mla else 2) * self.kv_buffer.element_size()
        for i in indices[::self.page_size].tolist():
            row = self.kv_buffer[int(i)].data_ptr()
            parts = [row] if self.is_mla else [row, row + half]
            ptrs += parts
            sizes += [half] * len(parts)
        return ptrs, sizes


@needs_file_tier
@pytest.mark.parametrize("num_keys", [10, 50, 100])
def test_sglang_backend_comparison_flow_with_its_mock(tmp_path, num_keys):
    pool = MockHostKVCache()
    cfg = config(extra={"tiers": "memory,file", "file_dir": str(tmp_path)})
    keys = [f"perf_test_key_{i}" for i in range(num_keys)]
    host_indices = torch.cat([torch.full((pool.page_size,), i, dtype=torch.int64)
                              for i in range(num_keys)])
    # Old interface: flat pages out and back.
    old = KvtierStorage(cfg, {})
    old.register_mem_pool_host(pool)
    data = [pool.get_data_page(host_indices[i * pool.page_size]) for i in range(num_keys)]
    assert old.batch_set(keys=keys, values=data) is True
    dst = [pool.get_dummy_flat_data_page() for _ in keys]
    got = old.batch_get(keys=keys, target_locations=dst)
    assert all(g is d for g, d in zip(got, dst))
    assert all(torch.equal(d, pool.kv_buffer[i]) for i, d in enumerate(dst))
    old.close()
    # New interface: zero-copy through the pool's own fragments (page numbers, not slots).
    new = KvtierStorage(cfg, {})
    new.register_mem_pool_host(pool)
    assert new._pools["kv"].mode == "meta"
    v1_keys = [f"v1_{k}" for k in keys]
    assert new.batch_set_v1(keys=v1_keys, host_indices=host_indices) == [True] * num_keys
    want = pool.kv_buffer.clone()
    pool.kv_buffer.zero_()
    assert new.batch_get_v1(keys=v1_keys, host_indices=host_indices) == [True] * num_keys
    assert torch.equal(pool.kv_buffer[:num_keys], want[:num_keys])
    new.close()


def test_native_layout_that_disagrees_with_the_pool_is_not_used():
    """A pool that offers SGLang's dims but whose entries differ (an FP8 pool with a scale
    entry per page, say): the pool's get_page_buffer_meta decides."""
    pool = torch_pool(torch.bfloat16)
    S, P = pool.size, pool.page_size
    pool.scales = torch.randint(0, 255, (S // P, 16), dtype=torch.uint8)

    def meta(indices):
        ptrs, sizes = [], []
        L, H, D, E = pool.layer_num, pool.head_num, pool.head_dim, 2
        kv = pool.kv_buffer
        for s in indices[::P].tolist():
            ptrs += [kv[0, s].data_ptr(), kv[1, s].data_ptr(), pool.scales[s // P].data_ptr()]
            sizes += [L * P * H * D * E, L * P * H * D * E, 16]
        return ptrs, sizes

    pool.get_page_buffer_meta = meta
    b = adapter(config(), pool)
    assert b._pools["kv"].mode == "meta"
    keys = keys_of(2, "fp8")
    assert b.batch_set_v1(keys, torch.arange(8, 16)) == [True, True]
    want = (page(pool, 8), pool.scales[2].clone())
    assert b.batch_get_v1(keys[:1], torch.arange(40, 44)) == [True]
    assert page(pool, 40) == want[0] and torch.equal(pool.scales[10], want[1])
    b.close()


# ---- v2: hybrid models -----------------------------------------------------------------------------

def transfer(name, keys, host_indices, policy="all_pages"):
    return SimpleNamespace(name=name, keys=keys, host_indices=host_indices, hit_policy=policy)


def test_v2_hybrid_pools_with_both_hit_policies():
    kv = HostPool(size=256, seed=3, **MHA)
    mamba, indexer = StatePool(64, 96, 4), StatePool(64, 40, 5)
    b = adapter(config(), kv)
    b.register_mem_host_pool_v2(mamba, "mamba")
    b.register_mem_host_pool_v2(indexer, "indexer")
    keys = keys_of(8, "hy")
    P = kv.page_size
    # The hybrid controller: KV by v1, the extra pools by v2.
    assert b.batch_set_v1(keys, slots_for(range(1, 9), P)) == [True] * 8
    got = b.batch_set_v2([transfer("indexer", keys[:6], torch.arange(0, 6)),
                          transfer("mamba", keys[4:5], torch.tensor([30]))])
    assert got == {"indexer": [True] * 6, "mamba": [True]}
    # KV written by v1 is KV for v2, and the reverse.
    assert b.batch_exists_v2(keys).kv_hit_pages == 8
    assert b.batch_set_v2([transfer("kv", keys_of(1, "v2kv"), slots_for([50], P))]) == \
        {"kv": [True]}
    assert b.batch_exists(keys_of(1, "v2kv")) == 1
    # ALL_PAGES: every page of the prefix (indexer holds pages 0..5).
    r = b.batch_exists_v2(keys, [transfer("indexer", None, None)])
    assert (r.kv_hit_pages, r.extra_pool_hit_pages) == (6, {"kv": 8, "indexer": 6})
    # TRAILING_PAGES with one trailing page: the longest prefix whose last page has a state.
    r = b.batch_exists_v2(keys, [transfer("mamba", keys[:1], None, "trailing_pages")])
    assert (r.kv_hit_pages, r.extra_pool_hit_pages) == (5, {"kv": 8, "mamba": 5})
    r = b.batch_exists_v2(keys, [transfer("indexer", None, None),
                                 transfer("mamba", keys[:1], None, "trailing_pages")])
    assert r.kv_hit_pages == 5
    # A window of two trailing pages: pages 3 and 4 both need a state; only 4 has one.
    r = b.batch_exists_v2(keys, [transfer("mamba", keys[:2], None, "trailing_pages")])
    assert r.kv_hit_pages == 0 and r.extra_pool_hit_pages == {"kv": 8}
    # Reads: the states land in other rows, byte for byte; a missing state is False.
    want = mamba.kv_buffer[30].copy(), indexer.kv_buffer[:6].copy()
    got = b.batch_get_v2([transfer("mamba", [keys[4], keys[5]], torch.tensor([40, 41])),
                          transfer("indexer", keys[:6], torch.arange(20, 26))])
    assert got == {"mamba": [True, False], "indexer": [True] * 6}
    assert np.array_equal(mamba.kv_buffer[40], want[0])
    assert np.array_equal(indexer.kv_buffer[20:26], want[1])
    # Pools never collide: the same key in two pools is two pages.
    assert b.batch_exists_v2(keys_of(1, "v2kv"), [transfer("indexer", None, None)]).kv_hit_pages == 0
    # Unknown pools and bad transfers are False, never an exception.
    assert b.batch_get_v2([transfer("swa", keys[:2], torch.arange(2))]) == {"swa": [False] * 2}
    assert b.batch_set_v2([transfer("mamba", keys[:2], None)]) == {"mamba": [False] * 2}
    b.close()


# ---- draft pages -----------------------------------------------------------------------------------

def test_draft_pages_take_the_generic_path_with_their_own_shape():
    kv = HostPool(size=256, seed=6, **MHA)
    draft = HostPool(size=256, seed=7, mla=False, layout="page_first", page_size=4, layer_num=1,
                     head_num=2, head_dim=8)
    b = adapter(config(), kv)  # interface_v1 on: KV by v1, drafts still generic
    keys = keys_of(4, "dr")
    assert b.batch_set_v1(keys, slots_for(range(1, 5), 4)) == [True] * 4
    drafts = [f"{k}.draft" for k in keys]
    values = [draft.get_data_page(p * 4) for p in range(10, 14)]
    assert b.batch_set(drafts, values) is True
    out = [draft.get_dummy_flat_data_page() for _ in drafts]
    assert all(o is t for o, t in zip(b.batch_get(drafts, out), out))
    assert [o.tobytes() for o in out] == [v.tobytes() for v in values]
    assert b.batch_exists(drafts) == 4 and b.batch_exists(keys) == 4
    # A draft key never reads the KV page of its hash, nor the reverse.
    assert b.batch_get([keys[0]], [draft.get_dummy_flat_data_page()]) == [None]
    assert b.batch_get([f"{keys_of(1, 'none')[0]}.draft"], [draft.get_dummy_flat_data_page()]) == [None]
    b.close()


# ---- attach / detach -------------------------------------------------------------------------------

def _process_counts():
    fds = len(os.listdir("/proc/self/fd"))
    threads = threading.active_count(), len(os.listdir("/proc/self/task"))
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return fds, threads, rss


@needs_file_tier
def test_attach_and_close_a_hundred_times_leaks_nothing(tmp_path):
    kv = HostPool(size=256, seed=8, **MHA)
    cfg = config(extra={"tiers": "memory,file", "file_dir": str(tmp_path),
                        "memory_capacity": "16MiB", "file_capacity": "16MiB"})
    keys = keys_of(4, "att")

    def cycle(i):
        b = adapter(cfg, kv)
        b.register_mem_host_pool_v2(StatePool(8, 64, i), "mamba")
        if i == 0:
            assert b.batch_set_v1(keys, slots_for(range(1, 5), 4)) == [True] * 4
        else:  # every new instance sees the pages the first one made persistent
            assert b.batch_get_v1(keys, slots_for(range(20, 24), 4)) == [True] * 4
        b.batch_set([f"{keys[0]}.draft"], [kv.get_data_page(4)])
        b.close()
        assert b.batch_exists(keys) == 0  # a closed backend answers, never raises

    for i in range(5):  # warm up allocators and caches
        cycle(i)
    fds, threads, rss = _process_counts()
    for i in range(100):
        cycle(i + 5)
    fds2, threads2, rss2 = _process_counts()
    assert fds2 == fds and threads2 == threads
    assert rss2 - rss < 16 << 20, f"RSS grew by {(rss2 - rss) >> 20} MiB over 100 cycles"
    assert kv.page_bytes(20 * 4) == kv.page_bytes(1 * 4)


# ---- settings and never raising ---------------------------------------------------------------------

@needs_file_tier
def test_engine_keys_and_storage_dir_are_accepted(tmp_path):
    extra = {"backend_name": "kvtier", "module_path": "kvtier.sglang",
             "class_name": "KvtierStorage", "interface_v1": 1, "prefetch_threshold": 256,
             "prefetch_timeout_base": 3, "prefetch_timeout_per_ki_token": 0.25,
             "hicache_storage_pass_prefix_keys": True, "tiers": "file",
             "storage_dir": str(tmp_path)}
    b = adapter(config(extra=extra), HostPool(size=64, **MHA))
    assert b.settings["file_dir"] == str(tmp_path)
    assert b.batch_set_v1(keys_of(1, "sd"), slots_for([1], 4)) == [True]
    b.close()
    assert any(tmp_path.iterdir())  # the pages went under storage_dir
    import kvtier

    with pytest.raises(kvtier.KvtierError) as e:
        KvtierStorage(config(extra={"prefetch_treshold": 1}), {})
    assert "PREFETCH_TRESHOLD" in str(e.value)


def test_no_engine_call_raises_or_returns_none_where_indexed():
    b = KvtierStorage(config(), {})  # no pool registered yet
    keys = keys_of(2, "nr")
    assert b.batch_set_v1(keys, torch.arange(8)) == [False, False]
    assert b.batch_get_v1(keys, torch.arange(8)) == [False, False]
    assert b.batch_exists_v2(keys).kv_hit_pages == 0
    assert b.batch_get_v2([transfer("kv", keys, torch.arange(8))]) == {"kv": [False, False]}
    assert b.batch_get(keys, [object(), object()]) == [None, None]
    assert b.batch_set(keys, [object(), object()]) is False
    b.register_mem_pool_host(object())  # a pool it cannot use: logged, calls give False
    assert b.batch_set_v1(keys, torch.arange(8)) == [False, False]
    b.close()
    b.close()
    assert b.batch_get_v1(keys, torch.arange(8)) == [False, False]
    assert b.get_stats() == {} and b.exists(keys[0]) is False


def test_get_stats_carries_the_remote_servers_counters(server):
    pool = HostPool(size=64, seed=3, **MHA)
    b = adapter(config(False, {"tiers": "remote", "remote_servers": server}), pool)
    P = MHA["page_size"]
    keys = keys_of(3, "stats")
    assert b.batch_set_v1(keys, slots_for([1, 2, 3], P)) == [True] * 3
    got = b.batch_get_v1(keys + keys_of(1, "absent"), slots_for([5, 6, 7, 8], P))
    assert got == [True, True, True, False]
    for src, dst in zip([1, 2, 3], [5, 6, 7]):
        assert pool.page_bytes(dst * P) == pool.page_bytes(src * P)
    (remote,) = b.get_stats()["tiers"]
    assert remote["name"] == "remote" and remote["keys"] == 3 and remote["servers"] == 1
    assert remote["server_hits"] == 3 and remote["server_misses"] == 1
    assert remote["connections"] >= 1 and remote["leases"] == 0
    assert remote["capacity"] == 64 << 20 and remote["evictions"] == 0 and remote["errors"] == 0
    b.close()
