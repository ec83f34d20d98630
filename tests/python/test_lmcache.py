"""kvtier as an LMCache remote storage plugin, against LMCache's interface as upstream defines it.

LMCache is not installed here, so its interface is reproduced before kvtier.lmcache is
imported, from these files of github.com/LMCache/LMCache (read, not copied):
  - lmcache/v1/storage_backend/connector/base_connector.py (RemoteConnector: exists,
    exists_sync, get, put, list, close, the support_* flags and batched variants; at 01712fbd)
  - lmcache/v1/storage_backend/connector/__init__.py (ConnectorAdapter, ConnectorContext, and
    how remote_storage_plugins are loaded: extra_config's
    remote_storage_plugin.<name>.module_path / .class_name, an instance per adapter, the first
    whose can_parse(url) is true creates the connector; at 0109660c)
  - lmcache/v1/storage_backend/connector/fs_connector.py (the call pattern: chunks allocated
    through the local CPU backend, byte_array read into, ref_count_down on failure; at
    0219539f)
"""

import asyncio
import importlib
import os
import signal
import sys
import time
import types

import numpy as np
import pytest


from engine_apis import (  # noqa: E402
    CacheEngineKey, LocalCPUBackend, MemoryFormat, _install_lmcache, create_connector)


@pytest.fixture(scope="module")
def plugin():
    saved = {k: v for k, v in sys.modules.items() if k == "lmcache" or k.startswith("lmcache.")}
    _install_lmcache()
    sys.modules.pop("kvtier.lmcache", None)
    yield importlib.import_module("kvtier.lmcache")
    for k in [k for k in sys.modules if k == "lmcache" or k.startswith("lmcache.")]:
        del sys.modules[k]
    sys.modules.update(saved)
    sys.modules.pop("kvtier.lmcache", None)


def config(**extra):
    return types.SimpleNamespace(remote_storage_plugins=["kvtier"], extra_config={
        "remote_storage_plugin.kvtier.module_path": "kvtier.lmcache",
        "remote_storage_plugin.kvtier.class_name": "KvtierConnectorAdapter", **extra})


SHAPE = (2, 4, 256, 64)  # K/V, layers, tokens, hidden: 256 KiB of bf16


def chunk(backend):
    obj = backend.allocate(SHAPE, "bfloat16", MemoryFormat.KV_2LTD)
    obj._buf[:] = np.random.default_rng().integers(0, 256, obj._buf.size, dtype=np.uint8)
    return obj


def keys_of(n, model="org/model"):
    return [CacheEngineKey(model, 2, 1, int.from_bytes(os.urandom(8), "big")) for _ in range(n)]


def test_chunks_round_trip_through_the_plugin(plugin, tmp_path):
    async def run():
        backend = LocalCPUBackend()
        url = f"kvtier://?tiers=memory,file&file_dir={tmp_path}"
        conn = create_connector(url, asyncio.get_running_loop(), backend, config(),
                                types.SimpleNamespace(model_name="org/model"))
        keys, objs = keys_of(6), [chunk(backend) for _ in range(6)]
        sent = [bytes(o._buf) for o in objs]
        await conn.put(keys[0], objs[0])
        await conn.batched_put(keys[1:], objs[1:])
        for o in objs:  # the caller frees them at once: the store has copied them
            o._buf[:] = 0
        assert await conn.exists(keys[0]) and conn.exists_sync(keys[5])
        assert await conn.batched_async_contains("l", keys + keys_of(2)) == 6
        assert conn.batched_contains(keys_of(1) + keys) == [False] * 7
        got = [await conn.get(keys[0])] + await conn.batched_get(keys[1:])
        for g, want in zip(got, sent):
            assert g is not None and bytes(g._buf) == want
            assert g.get_shape() == SHAPE and g.get_memory_format() == MemoryFormat.KV_2LTD
        missing = keys_of(3)
        assert await conn.get(missing[0]) is None
        assert await conn.batched_get(missing) == [None] * 3
        assert not await conn.exists(missing[1]) and not conn.exists_sync(missing[2])
        assert sorted(await conn.list()) == sorted(k.to_string() for k in keys)
        assert conn.remove_sync(keys[0]) and await conn.get(keys[0]) is None
        await conn.close()
        # Another process (a restart) reads them from the file tier.
        again = create_connector(url, asyncio.get_running_loop(), backend, config(),
                                 types.SimpleNamespace(model_name="org/model"))
        [g] = await again.batched_get([keys[3]])
        assert bytes(g._buf) == sent[3]
        other = create_connector(url, asyncio.get_running_loop(), backend, config(),
                                 types.SimpleNamespace(model_name="another/model"))
        assert await other.get(keys[3]) is None, "another model's namespace read the chunk"
        await again.close()
        await other.close()

    asyncio.run(run())


def test_a_non_kvtier_url_is_left_to_other_adapters(plugin):
    adapter = plugin.KvtierConnectorAdapter()
    assert adapter.can_parse("kvtier://?tiers=memory")
    assert not adapter.can_parse("redis://localhost:6379")
    assert plugin.settings_from_url("kvtier://10.0.0.5:7471,10.0.0.6:7471?remote_replicas=2") == {
        "remote_servers": "10.0.0.5:7471,10.0.0.6:7471", "tiers": "memory,remote",
        "remote_replicas": "2"}


def test_the_event_loop_runs_while_a_server_is_stopped(plugin, kvtier_server):
    proc, address = kvtier_server

    async def run():
        backend = LocalCPUBackend()
        conn = create_connector(
            f"kvtier://{address}?tiers=remote&remote_transport=tcp&remote_timeout_ms=1000",
            asyncio.get_running_loop(), backend, config(), None)
        keys, objs = keys_of(2), [chunk(backend) for _ in range(2)]
        await conn.batched_put(keys, objs)
        proc.send_signal(signal.SIGSTOP)
        gaps, stop = [], False

        async def ticker():
            last = time.perf_counter()
            while not stop:
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        got = await conn.batched_get(keys)  # fails after the timeout, the loop running meanwhile
        stop = True
        await tick
        assert got == [None, None] or all(g is not None for g in got)
        assert len(gaps) > 50, "the loop did not run while the get waited"
        assert max(gaps) < 0.1, f"the loop was blocked for {max(gaps):.3f} s"
        proc.send_signal(signal.SIGCONT)
        await conn.close()

    asyncio.run(run())
