"""The SGLang adapter across the pools SGLang builds, driven as its cache controller drives a
backend: MHA and MLA x the three layouts x v1 and generic writes and reads x memory and file tiers
x with and without "interface_v1"; pools with unusual attributes; the model's identity beyond its
name; the engine's newest calls; close() while the engine's threads are inside calls."""

import threading
from dataclasses import dataclass
from types import SimpleNamespace
from typing import List, Optional

import numpy as np
import pytest

from builds import needs_file_tier
from hostpool import ALL_POOLS, HostPool, pool_id, slots_for
from kvtier.sglang import KvtierStorage, PoolTransferResult
from kvtier.errors import NOT_REGISTERED, KvtierError
from kvtier.store import Store

TIERS = ["memory", pytest.param("file", marks=needs_file_tier)]


def config(mla, tier, folder, flag=1, model="org/model-7b", **more):
    extra = {"interface_v1": flag, "tiers": tier, "memory_capacity": "256MiB"}
    if tier == "file":
        extra.update(file_dir=str(folder), file_capacity="64MiB")
    extra.update(more.pop("extra", {}))
    return SimpleNamespace(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0,
                           attn_cp_size=1, is_mla_model=mla, model_name=model,
                           is_page_first_layout=True, extra_config=extra, **more)


def keys_of(n, salt):
    return [f"{salt}-{i:04d}".ljust(64, "e") for i in range(n)]


def attach(cfg, pool):
    b = KvtierStorage(cfg, {})
    b.register_mem_pool_host(pool)
    return b


def write(b, pool, path, keys, pages):
    P = pool.page_size
    if path == "v1":
        return b.batch_set_v1(keys, slots_for(pages, P)) == [True] * len(keys)
    return b.batch_set(keys, [pool.get_data_page(p * P) for p in pages]) is True


def read_exact(b, pool, path, keys, pages, want_v1, want_flat):
    """Reads `keys` by `path` into `pages` and checks every byte against what was written."""
    P = pool.page_size
    if path == "v1":
        before = pool.bytes.copy()
        assert b.batch_get_v1(keys, slots_for(pages, P)) == [True] * len(keys)
        assert [pool.page_bytes(p * P) for p in pages] == want_v1
        # Nothing but those pages moved: put them back and compare the whole pool.
        for p, old in zip(pages, [HostPool.page_bytes(_Shadow(pool, before), p * P)
                                  for p in pages]):
            _put_page(pool, p, old)
        assert np.array_equal(pool.bytes, before)
        return
    targets = [pool.get_dummy_flat_data_page() for _ in keys]
    got = b.batch_get(keys, targets)
    assert all(g is t for g, t in zip(got, targets))
    assert [t.tobytes() for t in targets] == want_flat


class _Shadow:
    """A HostPool's geometry over another copy of its bytes (to read a page as it was)."""

    def __init__(self, pool, raw):
        self.__dict__.update(pool.__dict__)
        self.buffer = raw.view(pool.buffer.dtype).reshape(pool.buffer.shape)


def _put_page(pool, page, value):
    """Writes a page's v1 value back into the pool through the engine's own meta."""
    ptrs, sizes = pool.get_page_buffer_meta(slots_for([page], pool.page_size))
    base, off = pool.data_ptr(), 0
    for p, n in zip(ptrs, sizes):
        pool.bytes[p - base:p - base + n] = np.frombuffer(value[off:off + n], dtype=np.uint8)
        off += n


# ---- the matrix ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ALL_POOLS, ids=pool_id)
@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("flag", [1, 0], ids=["v1flag", "noflag"])
@pytest.mark.parametrize("wpath,rpath", [("v1", "v1"), ("v1", "generic"), ("generic", "v1"),
                                         ("generic", "generic")])
def test_every_pool_shape_round_trips_through_either_path(tmp_path, spec, tier, flag, wpath,
                                                          rpath):
    pool = HostPool(size=512, seed=7, **spec)
    P = pool.page_size
    b = attach(config(spec["mla"], tier, tmp_path, flag), pool)
    keys, src = keys_of(4, f"{wpath}"), [3, 4, 9, 10]
    want_v1 = [pool.page_bytes(p * P) for p in src]
    want_flat = [pool.get_data_page(p * P).tobytes() for p in src]
    assert write(b, pool, wpath, keys, src)
    assert b.batch_exists(keys) == 4  # whichever path wrote them, whatever the flag says
    assert b.batch_exists(keys + keys_of(1, "absent")) == 4
    read_exact(b, pool, rpath, keys, [20, 21, 22, 23], want_v1, want_flat)
    b.close()
    if tier == "file":  # and after a restart
        b = attach(config(spec["mla"], tier, tmp_path, flag), pool)
        assert b.batch_exists(keys) == 4
        read_exact(b, pool, rpath, keys, [30, 31, 32, 33], want_v1, want_flat)
        b.close()


@pytest.mark.parametrize("spec", ALL_POOLS, ids=pool_id)
def test_a_pool_still_zero_at_registration_maps_its_flat_page_right(spec):
    """SGLang registers its host pool while the pool is all zeros: its bytes prove nothing,
    so the flat page's order must come from the layout, and hold once the pool fills."""
    pool = HostPool(size=512, seed=3, **spec)
    data = pool.bytes.copy()
    pool.bytes[:] = 0
    b = attach(config(spec["mla"], "memory", None), pool)
    pool.bytes[:] = data
    P = pool.page_size
    keys = keys_of(2, "zero")
    want_v1 = [pool.page_bytes(p * P) for p in (5, 6)]
    assert write(b, pool, "generic", keys, [5, 6])
    read_exact(b, pool, "v1", keys, [40, 41], want_v1, None)
    b.close()


# ---- pools with unusual attributes --------------------------------------------------------------

class OddMlaPool(HostPool):
    """An MLA pool as some SGLang versions build it: head_num = 0, no kv_lora_rank (nor
    qk_rope_head_dim, nor kv_cache_dim): only its shape says what it is."""

    def __init__(self, with_meta=True, **kw):
        super().__init__(**kw)
        del self.kv_lora_rank, self.qk_rope_head_dim
        self.head_num, self.head_dim, self.kv_cache_dim = 0, 0, 0
        self._cdim = kw["kv_cache_dim"]
        if not with_meta:
            self.get_page_buffer_meta = None

    def get_page_buffer_meta(self, indices):  # the geometry it was built with
        self.kv_cache_dim = self._cdim
        try:
            return super().get_page_buffer_meta(indices)
        finally:
            self.kv_cache_dim = 0

    def page_bytes(self, slot):
        return HostPool.page_bytes(self, slot)


@pytest.mark.parametrize("layout", ["layer_first", "page_first", "page_first_direct"])
@pytest.mark.parametrize("with_meta", [True, False], ids=["meta", "nometa"])
def test_an_mla_pool_with_head_num_zero_is_read_as_mla(layout, with_meta):
    pool = OddMlaPool(with_meta=with_meta, mla=True, layout=layout, size=256, page_size=8,
                      layer_num=5, kv_cache_dim=24)
    b = attach(config(True, "memory", None), pool)
    assert b._pools["kv"].mode == "native"
    keys, P = keys_of(3, "oddmla"), pool.page_size
    want = [pool.page_bytes(p * P) for p in (1, 2, 3)]
    assert b.batch_set_v1(keys, slots_for([1, 2, 3], P)) == [True] * 3
    assert b.batch_exists(keys) == 3
    assert b.batch_get_v1(keys, slots_for([11, 12, 13], P)) == [True] * 3
    assert [pool.page_bytes(p * P) for p in (11, 12, 13)] == want
    b.close()


def test_a_failed_layout_registration_falls_through_to_the_pools_meta(monkeypatch, caplog):
    """Any failure of the native step (here: the store refuses the layout, as it did for the
    pool above taken for MHA) leaves the pool usable by the next path."""

    def refuse(self, *a, **k):
        raise KvtierError(NOT_REGISTERED, "the pool is not inside one registered buffer")

    monkeypatch.setattr(Store, "register_layout", refuse)
    pool = HostPool(size=256, seed=5, mla=True, layout="page_first", page_size=8, layer_num=5,
                    kv_cache_dim=24)
    with caplog.at_level("INFO", logger="kvtier.sglang"):
        b = attach(config(True, "memory", None), pool)
    assert b._pools["kv"].mode == "meta"
    assert "KVTIER_ERR_NOT_REGISTERED" in caplog.text
    keys = keys_of(2, "fall")
    want = [pool.page_bytes(p * 8) for p in (1, 2)]
    assert b.batch_set_v1(keys, slots_for([1, 2], 8)) == [True, True]
    assert b.batch_get_v1(keys, slots_for([7, 8], 8)) == [True, True]
    assert [pool.page_bytes(p * 8) for p in (7, 8)] == want
    b.close()


class NoMetaPool(HostPool):
    get_page_buffer_meta = None


class SwappedMetaPool(HostPool):
    """A pool whose own meta orders a page V then K: not the documented layout, so kvtier must
    follow the pool, and its flat page (K then V) is another format."""

    def get_page_buffer_meta(self, indices):
        ptrs, sizes = super().get_page_buffer_meta(indices)
        for i in range(0, len(ptrs), 2):
            ptrs[i], ptrs[i + 1] = ptrs[i + 1], ptrs[i]
        return ptrs, sizes

    def page_bytes(self, slot):
        k_then_v = HostPool.page_bytes(self, slot)
        half = len(k_then_v) // 2
        return k_then_v[half:] + k_then_v[:half]


class FlatOnlyPool(HostPool):
    """Neither a layout kvtier knows nor a meta call: only the engine's flat-page calls."""
    get_page_buffer_meta = None

    def __init__(self, **kw):
        super().__init__(**kw)
        self.kv_buffer = None  # no buffer kvtier could compute fragments in


@pytest.mark.parametrize("cls,mode", [(NoMetaPool, "native"), (SwappedMetaPool, "meta"),
                                      (FlatOnlyPool, "flat")], ids=["nometa", "swapped", "flat"])
@pytest.mark.parametrize("path", ["v1", "generic"])
def test_unusual_pools_round_trip_exactly(cls, mode, path):
    pool = cls(size=256, seed=9, mla=False, layout="page_first", page_size=4, layer_num=3,
               head_num=2, head_dim=8)
    b = attach(config(False, "memory", None, flag=1 if path == "v1" else 0), pool)
    assert b._pools["kv"].mode == mode
    P, keys = pool.page_size, keys_of(3, f"odd{path}")
    want_v1 = [pool.page_bytes(p * P) for p in (1, 2, 3)]
    want_flat = [pool.get_data_page(p * P).tobytes() for p in (1, 2, 3)]
    assert write(b, pool, path, keys, [1, 2, 3])
    assert b.batch_exists(keys) == 3
    if path == "generic" or cls is not FlatOnlyPool:
        targets = [pool.get_dummy_flat_data_page() for _ in keys] if path == "generic" else None
        if path == "generic":
            assert all(g is t for g, t in zip(b.batch_get(keys, targets), targets))
            assert [t.tobytes() for t in targets] == want_flat
        else:
            assert b.batch_get_v1(keys, slots_for([30, 31, 32], P)) == [True] * 3
            assert [pool.page_bytes(p * P) for p in (30, 31, 32)] == want_v1
    if cls is FlatOnlyPool:  # v1 calls move flat pages: the two paths are one
        assert b.batch_get_v1(keys, slots_for([40, 41, 42], P)) == [True] * 3
        assert [pool.get_data_page(p * P).tobytes() for p in (40, 41, 42)] == want_flat
    b.close()


def test_where_flat_and_v1_formats_differ_exists_answers_for_the_read_path():
    """The swapped pool's flat page cannot be mapped onto its v1 value: a page written by one
    path counts only where the engine reads with that path (never a hit it cannot read)."""
    pool = SwappedMetaPool(size=256, seed=2, mla=False, layout="page_first", page_size=4,
                           layer_num=3, head_num=2, head_dim=8)
    P = pool.page_size
    v1 = attach(config(False, "memory", None, flag=1), pool)
    assert v1._pools["kv"].flat is None
    generic_keys, v1_keys = keys_of(2, "g"), keys_of(2, "v")
    assert write(v1, pool, "generic", generic_keys, [1, 2])
    assert write(v1, pool, "v1", v1_keys, [3, 4])
    assert v1.batch_exists(v1_keys) == 2
    assert v1.batch_exists(generic_keys) == 0  # batch_get_v1 could not return them
    assert v1.batch_get_v1(generic_keys, slots_for([9, 10], P)) == [False, False]
    v1.close()
    generic = attach(config(False, "memory", None, flag=0), pool)
    assert write(generic, pool, "generic", generic_keys, [1, 2])
    assert generic.batch_exists(generic_keys) == 2
    generic.close()


def test_a_pool_no_path_can_move_is_refused_with_one_line_and_calls_miss(caplog):
    pool = SimpleNamespace(page_size=4, layout="page_first", dtype=np.uint16)
    with caplog.at_level("INFO", logger="kvtier.sglang"):
        b = attach(config(False, "memory", None), pool)
    lines = [r for r in caplog.records if "cannot use pool" in r.getMessage()]
    assert len(lines) == 1 and "get_page_buffer_meta" in lines[0].getMessage()
    assert b.batch_set_v1(keys_of(1, "none"), slots_for([1], 4)) == [False]
    assert b.batch_exists(keys_of(1, "none")) == 0
    b.close()


# ---- identity beyond the model's name -----------------------------------------------------------

@needs_file_tier
@pytest.mark.parametrize("field,a,b", [("model_revision", "3f2a9c1", "77e0b4d"),
                                       ("kv_cache_dtype", "fp8_e4m3", "fp8_e5m2")])
def test_two_checkpoints_under_one_name_never_read_each_other(tmp_path, field, a, b):
    def cfg(value):
        if field == "model_revision":
            return config(False, "file", tmp_path, extra={field: value})
        return config(False, "file", tmp_path, **{field: value})

    spec = dict(mla=False, layout="page_first", page_size=4, layer_num=3, head_num=2,
                head_dim=8)
    first, second = HostPool(size=256, seed=1, **spec), HostPool(size=256, seed=2, **spec)
    keys = keys_of(3, "ckpt")
    one = attach(cfg(a), first)
    assert one.batch_set_v1(keys, slots_for([1, 2, 3], 4)) == [True] * 3
    one.close()
    two = attach(cfg(b), second)
    before = second.bytes.copy()
    assert two.batch_exists(keys) == 0
    assert two.batch_get_v1(keys, slots_for([5, 6, 7], 4)) == [False] * 3
    assert np.array_equal(before, second.bytes)
    two.close()
    again = attach(cfg(a), second)  # the same checkpoint again: its pages are there
    assert again.batch_get_v1(keys, slots_for([5, 6, 7], 4)) == [True] * 3
    assert [second.page_bytes(p * 4) for p in (5, 6, 7)] == \
        [first.page_bytes(p * 4) for p in (1, 2, 3)]
    again.close()


# ---- the engine's newest calls ------------------------------------------------------------------

@dataclass
class ExtraInfo:  # SGLang's HiCacheStorageExtraInfo
    prefix_keys: Optional[List[str]] = None
    extra_info: Optional[dict] = None


@dataclass
class Transfer:  # SGLang's PoolTransfer
    name: str
    host_indices: object = None
    keys: Optional[List[str]] = None
    hit_policy: str = "all_pages"


@pytest.mark.parametrize("info", [None, ExtraInfo(prefix_keys=None), ExtraInfo(prefix_keys=[]),
                                  ExtraInfo(prefix_keys=keys_of(2, "pre")), {"pp_rank": 0}],
                         ids=["none", "off", "empty", "prefix", "pp"])
def test_every_extra_info_the_engine_passes_is_accepted_and_left_alone(info):
    pool = HostPool(size=256, seed=4, **ALL_POOLS[1])
    b = attach(config(False, "memory", None), pool)
    kept = None if not isinstance(info, ExtraInfo) or info.prefix_keys is None else \
        list(info.prefix_keys)
    keys, P = keys_of(3, "info"), pool.page_size
    assert b.batch_set_v1(keys[:1], slots_for([1], P), info) == [True]
    assert b.batch_set_v2([Transfer("kv", slots_for([2, 3], P), keys[1:])], info) == \
        {"kv": [True, True]}
    assert b.batch_exists(keys, info) == 3
    assert b.batch_exists_v2(keys, [Transfer("kv", keys=keys)], info).kv_hit_pages == 3
    assert b.batch_get_v2([Transfer("kv", slots_for([7, 8, 9], P), keys)], info) == \
        {"kv": [True] * 3}
    assert b.batch_get_v1(keys, slots_for([10, 11, 12], P), info) == [True] * 3
    if kept is not None:
        assert info.prefix_keys == kept
    b.close()


def test_pool_transfer_result_stand_in_has_the_engines_methods():
    r = PoolTransferResult.empty()
    assert (r.kv_hit_pages, r.extra_pool_hit_pages) == (0, {})
    r.update_kv_hit_pages(5)
    r.update_kv_hit_pages(3)
    assert r.kv_hit_pages == 5
    r.update_extra_pool_hit_pages({"mamba": [True, True, False, True]})
    r.update_extra_pool_hit_pages({"swa": 2})
    assert r.extra_pool_hit_pages == {"mamba": 2, "swa": 2}


@pytest.mark.parametrize("tier", TIERS)
def test_close_while_the_engines_threads_are_in_calls_and_again(tmp_path, tier):
    """The controller detaches (close) while prefetch, backup and I/O threads are inside calls,
    and may close twice: nothing raises or crashes, results keep their shape, later calls miss."""
    pool = HostPool(size=2048, seed=8, **ALL_POOLS[0])
    b = attach(config(False, tier, tmp_path), pool)
    P, errors, started = pool.page_size, [], threading.Barrier(4)

    def engine(i):
        keys = keys_of(16, f"t{i}")
        started.wait()
        try:
            for r in range(400):
                got = b.batch_set_v1(keys, slots_for(range(16 * i, 16 * i + 16), P))
                assert len(got) == 16 and all(isinstance(x, bool) for x in got)
                got = b.batch_get_v1(keys, slots_for(range(200 + 16 * i, 216 + 16 * i), P))
                assert len(got) == 16
                assert isinstance(b.batch_exists(keys), int)
                assert b.batch_get(keys[:2], [pool.get_dummy_flat_data_page()] * 2) is not None
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=engine, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    started.wait()
    b.close()
    b.close()
    for t in threads:
        t.join()
    assert not errors
    assert b.store.closed
    keys = keys_of(2, "after")
    assert b.batch_set_v1(keys, slots_for([1, 2], P)) == [False, False]
    assert b.batch_get_v1(keys, slots_for([1, 2], P)) == [False, False]
    assert b.batch_exists(keys) == 0
    assert b.batch_get_v2([Transfer("kv", slots_for([1, 2], P), keys)]) == {"kv": [False] * 2}
    b.close()


class SlowMetaPool(SwappedMetaPool):
    """A pool whose meta call takes a while, so a call is surely in flight when close() comes."""
    entered = None

    def get_page_buffer_meta(self, indices):
        if self.entered is not None:
            self.entered.set()
            threading.Event().wait(0.3)
        return super().get_page_buffer_meta(indices)


def test_close_waits_for_the_call_in_flight_which_completes_exactly():
    pool = SlowMetaPool(size=256, seed=6, mla=False, layout="page_first", page_size=4,
                        layer_num=3, head_num=2, head_dim=8)
    b = attach(config(False, "memory", None), pool)
    keys = keys_of(2, "slow")
    assert b.batch_set_v1(keys, slots_for([1, 2], 4)) == [True, True]
    want = [pool.page_bytes(p * 4) for p in (1, 2)]
    pool.entered, result = threading.Event(), []
    t = threading.Thread(target=lambda: result.append(b.batch_get_v1(keys, slots_for([8, 9], 4))))
    t.start()
    pool.entered.wait()
    b.close()  # returns only once the get has finished with the store
    assert result == [[True, True]]
    assert [pool.page_bytes(p * 4) for p in (8, 9)] == want
    t.join()


def test_the_package_definition_lists_every_subpackage():
    """`pip install ./python_shim` must ship kvtier.sglang (a package of its own)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "python_shim"
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in root.glob("kvtier/**/__init__.py")}
    assert listed == found
