"""Input that once slipped through the Python layer: keys with NUL, strided or reversed views,
config values that smuggle settings, bad keys in batch_exists; Mooncake's get into a larger
buffer."""

import ctypes
import os

import numpy as np
import pytest

import kvtier
from kvtier.mooncake import MooncakeStore

CFG = {"tiers": "memory", "memory_capacity": "64MiB"}


def test_key_with_nul_is_refused_alone():
    with kvtier.Store(CFG) as s:
        v = os.urandom(100)
        assert s.batch_set(["a\x00b", "good"], [v, v]) == [kvtier.codes.INVALID_ARG, 0]
        assert s.batch_set([b"x\x00y"], [v]) == [kvtier.codes.INVALID_ARG]
        assert s.batch_exists(["a"]) == 0 and s.batch_exists(["x"]) == 0, "stored under a cut key"
        buf = bytearray(100)
        assert s.batch_get(["a\x00b"], [buf]) == [kvtier.codes.INVALID_ARG]
        assert s.batch_get(["good"], [buf]) == [100] and bytes(buf) == v


def test_bad_key_ends_the_exists_run():
    with kvtier.Store(CFG) as s:
        assert s.batch_set(["good1", "good2", "good3"], [os.urandom(64)] * 3) == [0, 0, 0]
        assert s.batch_exists(["good1", "good2", "", "k" * 1025]) == 2
        assert s.batch_exists(["good1", "good2", "k" * 1025, "good3"]) == 2
        assert s.batch_exists(["good1", "a\x00b", "good3"]) == 1
        assert s.batch_exists([None]) == 0


def test_strided_or_reversed_views_are_refused_and_untouched():
    rng = np.random.default_rng()
    with kvtier.Store(CFG) as s:
        mem = rng.integers(0, 256, 4096, dtype=np.uint8)
        keep = mem.copy()
        views = [mem[1000:2000][::-1], mem[::2], mem.reshape(64, 64)[:, :8]]
        for i, view in enumerate(views):
            assert s.batch_set([f"v{i}", "fine"], [view, mem[:100]]) == [kvtier.codes.INVALID_ARG, 0]
            assert s.batch_exists([f"v{i}"]) == 0
        src = rng.integers(0, 256, 1000, dtype=np.uint8)
        assert s.batch_set(["val"], [src]) == [0]
        for view in views:
            assert s.batch_get(["val"], [view]) == [kvtier.codes.INVALID_ARG]
        assert np.array_equal(mem, keep), "a refused call wrote into the array"
        # Contiguous slices and Fortran-ordered arrays are single blocks: they work.
        out = mem[2000:3000]
        assert s.batch_get(["val"], [out]) == [1000] and np.array_equal(out, src)
        f = np.asfortranarray(rng.integers(0, 256, (16, 16), dtype=np.uint8))
        assert s.batch_set(["f"], [f]) == [0]
        back = np.empty((16, 16), dtype=np.uint8, order="F")
        assert s.batch_get(["f"], [back]) == [256] and np.array_equal(back, f)


@pytest.mark.parametrize("config", [
    {"tiers": "memory;memory_capacity=1KiB"},
    {"memory_capacity": "64MiB\ntiers=file"},
    {"tiers": "memory", "memory_capacity=1KiB;namespace": "x"},
    {"namespace": "a\rtiers=remote"},
    "tiers=memory\x00;tiers=file",
])
def test_config_values_cannot_inject_settings(config):
    with pytest.raises(kvtier.KvtierError) as e:
        kvtier.Store(config)
    assert e.value.name == "KVTIER_ERR_CONFIG"


def test_mooncake_get_into_a_larger_buffer():
    rng = np.random.default_rng()
    with MooncakeStore("tiers=memory;memory_capacity=64MiB") as mc:
        src = rng.integers(0, 256, 4096, dtype=np.uint8)
        dst = rng.integers(0, 256, 8192, dtype=np.uint8)
        assert mc.register_buffer(src.ctypes.data, src.nbytes) == 0
        assert mc.register_buffer(dst.ctypes.data, dst.nbytes) == 0
        assert mc.batch_put_from(["obj"], [src.ctypes.data], [100]) == [0]
        d = dst.ctypes.data
        assert mc.batch_get_into(["obj"], [d], [128]) == [100]
        assert np.array_equal(dst[:100], src[:100])
        # Several buffers: the object fills them in order.
        assert mc.batch_get_into_multi_buffers(["obj"], [[d + 1000, d + 2000]], [[64, 64]]) == [100]
        assert np.array_equal(dst[1000:1064], src[:64])
        assert np.array_equal(dst[2000:2036], src[64:100])
        # Exact sizes, and a mix in one batch, still work; a smaller buffer does not.
        assert mc.batch_put_from(["big"], [src.ctypes.data + 200], [1000]) == [0]
        assert mc.batch_get_into(["big", "obj"], [d + 3000, d + 5000], [1000, 3000]) == [1000, 100]
        assert np.array_equal(dst[3000:4000], src[200:1200])
        assert np.array_equal(dst[5000:5100], src[:100])
        assert mc.batch_get_into(["obj"], [d + 6000], [50]) == [kvtier.codes.BUFFER_TOO_SMALL]
        # An unregistered buffer fails before any size rule applies.
        other = (ctypes.c_char * 256)()
        assert mc.batch_get_into(["obj"], [ctypes.addressof(other)], [256]) == \
            [kvtier.codes.NOT_REGISTERED]
        assert mc.batch_get_into(["none"], [d], [128]) == [kvtier.codes.NOT_FOUND]
