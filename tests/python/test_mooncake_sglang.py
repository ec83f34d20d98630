"""kvtier's Mooncake Store drop-in, driven by SGLang's `mooncake` HiCache backend's own call
sequence, restated here (not copied) from sgl-project/sglang,
python/sglang/srt/mem_cache/storage/mooncake_store/mooncake_store.py at commit
00fe477f32b3878f64d44cc36895e1de4a113afe:

- MooncakeStore.__init__: `from mooncake.store import MooncakeDistributedStore` (and
  ReplicateConfig), `MooncakeDistributedStore()`, `setup(...)` with 8 positional arguments
  (local_hostname, metadata_server, per-rank segment size, local buffer size, protocol, device
  name, master address, transfer engine); a non-zero return is fatal. Then warmup(): `put` of
  4 KiB of zeros under a fresh key must return 0, `is_exist` of it must be `== 1`, and
  `get(key)` (no size) must return the same bytes.
- register_mem_pool_host: `register_buffer(ptr, size)` of the host KV buffer, 0 required.
- batch_set_v1: the page keys are tagged `<model>_<key>` and expanded per page into
  `<key>_<tp rank>_k`, `<key>_<tp rank>_v` (MHA) or `<key>__k` (MLA); `batch_is_exist` of
  them, then `batch_put_from(missing keys, ptrs, sizes)` for the ones not `== 1` (MLA
  layer_first pages, several buffers per object: `batch_put_from_multi_buffers(keys, ptrs,
  sizes, ReplicateConfig())`); a page is written when all its objects returned 0.
- batch_exists: the leading run of pages whose objects all answer `batch_is_exist == 1`.
- batch_get_v1: `batch_get_into(keys, ptrs, sizes)` (or `_multi_buffers`); a page is read when
  each of its objects returned > 0 (bytes read).
- clear: `remove_all()`.

Two SGLang instances of different models on the same kvtier tiers never read each other's
pages (their tagged keys differ); a miss stays a miss; random page bytes read back exactly."""

import os
import subprocess
import sys

import numpy as np
import pytest

from hostpool import HostPool, slots_for
from kvtier.mooncake import dropin_path

MHA = dict(mla=False, layout="page_first", size=256, page_size=4, layer_num=3, head_num=2,
           head_dim=8)
MLA = dict(mla=True, layout="layer_first", size=256, page_size=8, layer_num=5, kv_cache_dim=24)


@pytest.fixture
def mooncake_store(monkeypatch):
    """The drop-in's `mooncake.store`, imported as SGLang imports it; forgotten afterwards."""
    monkeypatch.syspath_prepend(dropin_path())
    monkeypatch.setenv("KVTIER_TIERS", "memory")
    monkeypatch.setenv("KVTIER_MEMORY_CAPACITY", "256MiB")
    for name in [m for m in sys.modules if m == "mooncake" or m.startswith("mooncake.")]:
        monkeypatch.delitem(sys.modules, name)
    import mooncake.store
    yield mooncake.store
    for name in [m for m in sys.modules if m == "mooncake" or m.startswith("mooncake.")]:
        del sys.modules[name]


class SGLangMooncakeBackend:
    """The calls SGLang's backend makes, in its order, with its key scheme (see the module
    docstring); a page's success follows its rules."""

    def __init__(self, mc, pool, model, tp_rank=0):
        self.pool, self.prefix, self.mla = pool, model.replace("/", "-"), pool.mla
        self.suffixes = ["__k"] if self.mla else [f"_{tp_rank}_k", f"_{tp_rank}_v"]
        self.store = mc.MooncakeDistributedStore()
        self.replicate_config = mc.ReplicateConfig
        assert self.store.setup("localhost", "P2PHANDSHAKE", 4 << 30, 16 << 20, "tcp", "",
                                "127.0.0.1:50051", None) == 0
        # warmup
        key, value = f"sglang_mooncake_store_warmup_key{os.urandom(8).hex()}", bytes(4096)
        assert self.store.put(key, value) == 0
        assert self.store.is_exist(key) == 1
        assert self.store.get(key) == value
        # register_mem_pool_host
        assert self.store.register_buffer(pool.data_ptr(), pool.nbytes) == 0

    def _objects(self, keys, host_indices):
        keys = [f"{self.prefix}_{k}" for k in keys]
        names = [k + s for k in keys for s in self.suffixes]
        ptrs, sizes = self.pool.get_page_buffer_meta(host_indices)
        if len(ptrs) != len(names):  # several buffers per object: MLA layer_first
            per = len(ptrs) // len(names)
            ptrs = [ptrs[i:i + per] for i in range(0, len(ptrs), per)]
            sizes = [sizes[i:i + per] for i in range(0, len(sizes), per)]
        return names, ptrs, sizes

    def _pages(self, results, ok):
        m = len(self.suffixes)
        return [all(ok(r) for r in results[i:i + m]) for i in range(0, len(results), m)]

    def batch_set_v1(self, keys, host_indices):
        names, ptrs, sizes = self._objects(keys, host_indices)
        exist = self.store.batch_is_exist(names)
        results = [0 if e == 1 else -1 for e in exist]
        missing = [i for i, e in enumerate(exist) if e != 1]
        if missing:
            args = ([names[i] for i in missing], [ptrs[i] for i in missing],
                    [sizes[i] for i in missing])
            if isinstance(ptrs[0], list):
                put = self.store.batch_put_from_multi_buffers(*args, self.replicate_config())
            else:
                put = self.store.batch_put_from(*args)
            for i, r in zip(missing, put):
                results[i] = r
        return self._pages(results, lambda r: r == 0)

    def batch_exists(self, keys):
        names = [f"{self.prefix}_{k}{s}" for k in keys for s in self.suffixes]
        exist = self.store.batch_is_exist(names)
        run = next((i for i, e in enumerate(exist) if e != 1), len(names))
        return run // len(self.suffixes)

    def batch_get_v1(self, keys, host_indices):
        names, ptrs, sizes = self._objects(keys, host_indices)
        if isinstance(ptrs[0], list):
            got = self.store.batch_get_into_multi_buffers(names, ptrs, sizes)
        else:
            got = self.store.batch_get_into(names, ptrs, sizes)
        return self._pages(got, lambda r: r > 0)

    def clear(self):
        self.store.remove_all()


def keys_of(n, salt):
    return [f"{salt}-{i:04d}".ljust(64, "e") for i in range(n)]


@pytest.mark.parametrize("spec", [MHA, MLA], ids=["MHA_page_first", "MLA_layer_first"])
def test_sglang_mooncake_backend_sequence(mooncake_store, spec):
    P = spec["page_size"]
    pool = HostPool(seed=int.from_bytes(os.urandom(4), "little"), **spec)
    other_pool = HostPool(seed=int.from_bytes(os.urandom(4), "little"), **spec)
    engine = SGLangMooncakeBackend(mooncake_store, pool, "org/model-a")
    other = SGLangMooncakeBackend(mooncake_store, other_pool, "org/model-b")
    keys = keys_of(6, "mc")
    assert engine.batch_exists(keys) == 0
    assert engine.batch_set_v1(keys, slots_for(range(1, 7), P)) == [True] * 6
    assert engine.batch_set_v1(keys[:2], slots_for([1, 2], P)) == [True] * 2  # exist: written
    assert engine.batch_exists(keys) == 6
    assert engine.batch_exists(keys[:3] + ["missing".ljust(64, "0")] + keys[3:]) == 3
    assert engine.batch_get_v1(keys, slots_for(range(20, 26), P)) == [True] * 6
    for i in range(6):
        assert pool.page_bytes((20 + i) * P) == pool.page_bytes((1 + i) * P), f"page {i}"
    # Another model's instance on the same tiers: its keys are its own; a miss stays a miss.
    assert other.batch_exists(keys) == 0
    before = other_pool.bytes.copy()
    assert other.batch_get_v1(keys, slots_for(range(20, 26), P)) == [False] * 6
    assert np.array_equal(before, other_pool.bytes)
    engine.clear()
    assert engine.batch_exists(keys) == 0
    assert engine.batch_get_v1(keys[:1], slots_for([30], P)) == [False]


def test_mooncake_calls_and_return_conventions(mooncake_store):
    mc = mooncake_store.MooncakeDistributedStore()
    assert mc.setup({"local_hostname": "node-7", "protocol": "tcp"}) == 0  # vLLM's dict
    assert mc.get_hostname() == "node-7"
    assert mc.setup("node-8", "http://meta", 1 << 30, 1 << 24, "tcp", "", "m:50051") == 0  # LMCache
    src = np.random.default_rng().integers(0, 256, 1 << 20, dtype=np.uint8)
    dst = np.zeros_like(src)
    assert mc.register_buffer(src.ctypes.data, src.nbytes) == 0
    assert mc.register_buffer(dst.ctypes.data, dst.nbytes) == 0
    assert mc.put_from("pf", src.ctypes.data, 5000) == 0
    assert mc.get_into("pf", dst.ctypes.data, 5000) == 5000
    assert mc.get_into("pf", dst.ctypes.data, 9000) == 5000  # a larger buffer gets it
    assert np.array_equal(dst[:5000], src[:5000])
    assert mc.get_into("nothing", dst.ctypes.data, 10) < 0
    big = os.urandom(300 * 1024)  # past get()'s first buffer size
    assert mc.put_parts("parts", big[:1000], memoryview(big)[1000:], bytearray(b"!")) == 0
    assert mc.get("parts") == big + b"!"
    assert mc.get("nothing") == b""
    bufs = mc.batch_get_buffer(["parts", "nothing", "pf"])
    assert bytes(bufs[0]) == big + b"!" and bufs[1] is None
    assert bufs[2].size() == 5000 and bufs[2].ptr() != 0
    assert bytes(bufs[2]) == src[:5000].tobytes()
    assert mc.put("empty", b"") < 0
    # is_exist is exactly 1 or 0: a key that cannot be checked reads 0, never non-zero.
    assert mc.batch_is_exist(["pf", "nothing", "", "x" * 5000]) == [1, 0, 0, 0]
    assert mc.is_exist("pf") == 1
    assert mc.remove("pf") == 0 and mc.remove("pf") < 0 and mc.is_exist("pf") == 0
    assert mc.remove_all() >= 1 and mc.is_exist("parts") == 0
    assert mc.unregister_buffer(src.ctypes.data) == 0
    assert mc.batch_put_from(["u"], [src.ctypes.data], [100]) == [-4]  # NOT_REGISTERED
    assert mc.close() == 0


def test_get_without_a_size_reads_any_size_once(mooncake_store, monkeypatch):
    """get(key) asks the object's size (kvtier_batch_size_each) and reads it once, whatever
    its size: past 1 GiB too, where guessing buffers gave up (and each guess too small had
    moved the whole object over the remote tier's TCP)."""
    monkeypatch.setenv("KVTIER_MEMORY_CAPACITY", "2GiB")
    mc = mooncake_store.MooncakeDistributedStore()
    assert mc.setup("h", "m", 1, 1, "tcp", "", "m:1", None) == 0
    reads = []
    real = mc._s.batch_get
    monkeypatch.setattr(mc._s, "batch_get", lambda k, b: reads.append(len(k)) or real(k, b))
    sizes = [1, 4096, 300 * 1024, 5 << 20]
    values = [os.urandom(n) for n in sizes]
    assert mc.put_batch([f"sz{n}" for n in sizes], values) == 0
    assert mc.get_batch([f"sz{n}" for n in sizes] + ["nothing"]) == values + [b""]
    assert reads == [len(sizes)], f"reads per batch: {reads}"
    assert mc._s.batch_size_each(["sz4096", "nothing"]) == [4096, -1]
    # Past the largest guess the old code made (1 GiB): a random tile and a random tail.
    n = (1 << 30) + 4097
    big = np.empty(n, dtype=np.uint8)
    tile = np.random.default_rng().integers(0, 256, 1 << 20, dtype=np.uint8)
    big[: 1 << 30].reshape(-1, 1 << 20)[:] = tile
    big[1 << 30:] = np.random.default_rng().integers(0, 256, 4097, dtype=np.uint8)
    assert mc.register_buffer(big.ctypes.data, n) == 0
    assert mc.put_from("huge", big.ctypes.data, n) == 0
    assert mc.unregister_buffer(big.ctypes.data) == 0
    got = mc.get("huge")
    assert len(got) == n and got == big.tobytes(), "a >1 GiB object did not read back exactly"
    del got, big
    assert mc.remove("huge") == 0
    mc.close()


def test_multi_buffer_batches_are_checked_once_and_mixed_counts_grouped(mooncake_store):
    mc = mooncake_store.MooncakeDistributedStore()
    assert mc.setup("h", "m", 1, 1, "tcp", "", "m:1", None) == 0
    src = np.random.default_rng().integers(0, 256, 1 << 16, dtype=np.uint8)
    dst = np.zeros_like(src)
    assert mc.register_buffer(src.ctypes.data, src.nbytes) == 0
    assert mc.register_buffer(dst.ctypes.data, dst.nbytes) == 0
    a, b = src.ctypes.data, dst.ctypes.data
    # Objects of one, two and three buffers in one batch.
    spans = [[(0, 100)], [(100, 50), (1000, 700)], [(2000, 10), (3000, 20), (4000, 4000)]]
    ptrs = [[a + o for o, _ in sp] for sp in spans]
    sizes = [[n for _, n in sp] for sp in spans]
    keys = ["mb1", "mb2", "mb3"]
    assert mc.batch_put_from_multi_buffers(keys, ptrs, sizes) == [0, 0, 0]
    back = [[b + o for o, _ in sp] for sp in spans]
    assert mc.batch_get_into_multi_buffers(keys, back, sizes) == [100, 750, 4030]
    for sp in spans:
        for o, n in sp:
            assert np.array_equal(dst[o:o + n], src[o:o + n])
    # (INVALID_ARG is -2.) A shape that does not hold (a key whose buffers and sizes differ in count, lists of
    # another length than the keys, no buffers): every key fails, nothing raises.
    for call in (mc.batch_put_from_multi_buffers, mc.batch_get_into_multi_buffers):
        assert call(["x", "y"], [[a, a + 8], [a]], [[8], [8]]) == [-2, -2]
        assert call(["x", "y"], [[a]], [[8]]) == [-2, -2]
        assert call(["x"], [[]], [[]]) == [-2]
        assert call(["x"], [None], [[8]]) == [-2]
        assert call([], [], []) == []
    for call in (mc.batch_put_from, mc.batch_get_into):
        assert call(["x", "y"], [a], [8, 8]) == [-2, -2]
    assert mc.close() == 0


def test_a_bad_setting_is_a_negative_code_not_a_raise(mooncake_store, monkeypatch):
    monkeypatch.setenv("KVTIER_MEMORY_CAPACITY", "lots")
    mc = mooncake_store.MooncakeDistributedStore()
    assert mc.setup("h", "m", 1, 1, "tcp", "", "m:1", None) == -7  # KVTIER_ERR_CONFIG
    assert mc.batch_is_exist(["k"]) == [0]
    assert mc.put("k", b"v") == -7


def _import_in_child(path, env_extra=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), **(env_extra or {}))
    env.pop("KVTIER_MOONCAKE_DROPIN", None)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c",
         "import mooncake.store as m; print(m.MooncakeDistributedStore.__module__)"],
        env=env, capture_output=True, text=True, timeout=60)


def test_the_dropin_never_shadows_a_real_mooncake_by_accident(tmp_path):
    shim = os.path.dirname(os.path.dirname(dropin_path()))
    # Without the drop-in on the path, kvtier provides no `mooncake` at all.
    r = _import_in_child([shim])
    assert r.returncode != 0 and "No module named 'mooncake'" in r.stderr
    # On the path (first), it answers `mooncake.store`.
    r = _import_in_child([dropin_path(), shim])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "kvtier.mooncake"
    # A real Mooncake further down the path: refused, unless shadowing it is said to be meant.
    real = tmp_path / "site" / "mooncake"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text("")
    (real / "store.py").write_text("class MooncakeDistributedStore: pass\n")
    r = _import_in_child([dropin_path(), shim, str(tmp_path / "site")])
    assert r.returncode != 0 and "a real Mooncake is installed" in r.stderr
    r = _import_in_child([dropin_path(), shim, str(tmp_path / "site")],
                         {"KVTIER_MOONCAKE_DROPIN": "1"})
    assert r.returncode == 0 and r.stdout.strip() == "kvtier.mooncake", r.stderr
