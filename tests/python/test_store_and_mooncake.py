"""The Python store and the Mooncake-style API: round trips and return conventions."""

import ctypes
import os

import numpy as np
import pytest

import kvtier
from kvtier.mooncake import MooncakeStore


def test_store_round_trip_and_errors():
    with kvtier.Store({"tiers": "memory", "memory_capacity": "64MiB"}) as s:
        vals = [os.urandom(1000 + i) for i in range(4)]
        keys = [f"key-{i}" for i in range(4)]
        assert s.batch_set(keys, vals) == [0] * 4
        bufs = [bytearray(2000) for _ in keys]
        assert s.batch_get(keys, bufs) == [len(v) for v in vals]
        assert [bytes(b[:len(v)]) for b, v in zip(bufs, vals)] == vals
        assert s.batch_get(["nope"], [bytearray(10)]) == [kvtier.codes.NOT_FOUND]
        assert s.batch_get(keys[:1], [bytearray(10)]) == [kvtier.codes.BUFFER_TOO_SMALL]
        assert s.batch_exists(keys + ["nope"] + keys) == 4
        assert s.remove(keys[:1]) == [0]
        assert s.batch_exists(keys) == 0
        # A bad key ends the run like a miss; the per-key call names each key's code.
        assert s.batch_exists([None]) == 0
        assert s.batch_exists(keys[1:] + ["", "x" * 2000]) == 3
        assert s.batch_exists_each([keys[1], None, "", "x" * 2000, "nope"]) == [
            0, kvtier.codes.INVALID_ARG, kvtier.codes.KEY_TOO_LONG, kvtier.codes.KEY_TOO_LONG,
            kvtier.codes.NOT_FOUND]
        with pytest.raises(kvtier.KvtierError) as e:
            s.unregister_buffer(12345)
        assert e.value.name == "KVTIER_ERR_NOT_FOUND"
    with pytest.raises(kvtier.KvtierError) as e:
        kvtier.Store("tiers=tape")
    assert e.value.name == "KVTIER_ERR_CONFIG" and "tape" in str(e.value)
    assert kvtier.__version__.count(".") == 2


def test_mooncake_api_conventions():
    with MooncakeStore("tiers=memory;memory_capacity=64MiB") as mc:
        src = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8)
        dst = np.zeros(1 << 20, dtype=np.uint8)
        base, dbase = src.ctypes.data, dst.ctypes.data
        assert mc.register_buffer(base, src.nbytes) == 0
        assert mc.register_buffer(dbase, dst.nbytes) == 0
        assert mc.register_buffer(dbase + 10, 10) < 0  # overlaps
        keys = ["m0", "m1", "m2"]
        assert mc.batch_put_from(keys, [base, base + 4096, base + 8192], [4096] * 3) == [0] * 3
        assert mc.batch_get_into(keys, [dbase, dbase + 4096, dbase + 8192], [4096] * 3) == [4096] * 3
        assert np.array_equal(dst[:12288], src[:12288])
        # Multi-buffer: two fragments per key, gathered and scattered in order.
        assert mc.batch_put_from_multi_buffers(
            ["mm"], [[base + 100000, base + 50000]], [[300, 700]]) == [0]
        assert mc.batch_get_into_multi_buffers(["mm"], [[dbase + 200000]], [[1000]]) == [1000]
        assert np.array_equal(dst[200000:200300], src[100000:100300])
        assert np.array_equal(dst[200300:201000], src[50000:50700])
        assert mc.is_exist("m1") == 1 and mc.is_exist("zz") == 0
        assert mc.batch_is_exist(["m0", "zz", "mm"]) == [1, 0, 1]
        assert mc.remove("m0") == 0 and mc.remove("m0") == kvtier.codes.NOT_FOUND
        # Unregistered memory: a negative code for that key, the others go through.
        other = (ctypes.c_char * 4096)()
        res = mc.batch_put_from(["u0", "u1"], [ctypes.addressof(other), base], [4096, 4096])
        assert res == [kvtier.codes.NOT_REGISTERED, 0]
        assert mc.put("p", b"hello") == 0 and mc.get("p") == b"hello"
        assert mc.get("none") == b""  # Mooncake's answer for a missing key
