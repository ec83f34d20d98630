"""kvtier as a vLLM secondary tier, against vLLM's interface as upstream defines it.

vLLM is not installed here, so the interface is reproduced from upstream before kvtier.vllm is
imported, from these files of github.com/vllm-project/vllm (read, not copied):
  - vllm/v1/kv_offload/tiering/base.py (SecondaryTierManager, JobResult; at 2ac00577)
  - vllm/v1/kv_offload/tiering/factory.py (an out-of-tree tier: `type` names the class,
    `module_path` the module; the rest of the dict reaches the constructor; at 46d0bd47)
  - vllm/v1/kv_offload/tiering/fs/manager.py (the call pattern: lookup answers HIT, MISS or
    RETRY; submit_store/submit_load with job ids and primary rows; get_finished_jobs;
    drain_jobs; at 0255eeaa)
and the newest job shape (TransferJob with chunk_ids, has_pending_work abstract) as llm-d's
tests of that interface reproduce it. The scheduler's calls are made as vLLM makes them: from
one thread, never waiting.
"""

import importlib
import os
import signal
import sys
import time
import types

import numpy as np
import pytest


from engine_apis import (  # noqa: E402
    LookupResult, ReqContext, TransferJob, create_secondary_tier, _install_vllm)


@pytest.fixture(scope="module")
def kvtier_vllm():
    saved = {k: v for k, v in sys.modules.items() if k == "vllm" or k.startswith("vllm.")}
    _install_vllm()
    sys.modules.pop("kvtier.vllm", None)
    module = importlib.import_module("kvtier.vllm")
    yield module
    for k in [k for k in sys.modules if k == "vllm" or k.startswith("vllm.")]:
        del sys.modules[k]
    sys.modules.update(saved)
    sys.modules.pop("kvtier.vllm", None)


def spec(model="Qwen/Qwen3-8B", dtype="bfloat16", cache_dtype="auto", block_size=16, rank=0,
         tp=1):
    ns = types.SimpleNamespace
    return ns(blocks_per_chunk=1, vllm_config=ns(
        model_config=ns(model=model, revision=None, dtype=dtype),
        cache_config=ns(block_size=block_size, cache_dtype=cache_dtype),
        parallel_config=ns(rank=rank, tensor_parallel_size=tp, pipeline_parallel_size=1)))


ROWS, ROW = 64, 12288  # the primary buffer: one row of bytes per chunk


def primary():
    buf = np.random.default_rng().integers(0, 256, (ROWS, ROW), dtype=np.uint8)
    return buf, memoryview(buf)


def tier_of(kvtier_vllm, view, **settings):
    cfg = {"type": "KvtierSecondaryTier", "module_path": "kvtier.vllm", "tiers": "memory",
           "model_revision": "r1", **settings}
    offloading = settings.pop("_spec", None) or spec()
    cfg.pop("_spec", None)
    return create_secondary_tier(cfg, view, offloading)


def keys_of(n, tag=b"k"):
    """OffloadKeys: block hash bytes (NUL included) and a group index, as vLLM makes them."""
    return [tag + bytes([0, i % 256, 0]) + os.urandom(8) + (0).to_bytes(4, "big")
            for i in range(n)]


def finish(tier, job_ids, timeout_s=10.0):
    """Polls get_finished_jobs as the scheduler does, once a step, until the jobs are done."""
    got = {}
    until = time.monotonic() + timeout_s
    while set(job_ids) - set(got):
        assert time.monotonic() < until, f"jobs {set(job_ids) - set(got)} never finished"
        for r in tier.get_finished_jobs():
            got[r.job_id] = r.success
        time.sleep(0.002)
    return got


def settle(tier, keys, timeout_s=10.0, req="r"):
    """Looks the keys up, for request `req`, until none answers RETRY."""
    until = time.monotonic() + timeout_s
    while True:
        answers = [tier.lookup(k, ReqContext(req)) for k in keys]
        if LookupResult.RETRY not in answers:
            return answers
        assert time.monotonic() < until, "lookups kept answering RETRY"
        time.sleep(0.002)


def test_store_then_load_is_byte_exact(kvtier_vllm):
    buf, view = primary()
    tier = tier_of(kvtier_vllm, view)
    try:
        keys = keys_of(12)
        rows = np.arange(12, dtype=np.int64) * 3 % ROWS
        sent = buf[rows].copy()
        tier.submit_store(TransferJob(1, keys, rows, False, ReqContext("a")))
        assert finish(tier, [1]) == {1: True}
        assert settle(tier, keys) == [LookupResult.HIT] * 12
        back = np.arange(12, dtype=np.int64) + 40
        buf[back] = 0x5A
        tier.submit_load(TransferJob(2, keys, back, True, ReqContext("a")))
        assert finish(tier, [2]) == {2: True}
        assert np.array_equal(buf[back], sent), "loaded blocks differ from the stored ones"
        assert not tier.has_pending_work()
    finally:
        tier.shutdown()


def test_a_miss_stays_a_miss_and_a_failed_load_turns_a_hit_into_a_miss(kvtier_vllm):
    buf, view = primary()
    tier = tier_of(kvtier_vllm, view, memory_capacity="64MiB")
    try:
        unknown = keys_of(5, b"never")
        assert tier.lookup(unknown[0], ReqContext("r")) == LookupResult.RETRY
        assert settle(tier, unknown) == [LookupResult.MISS] * 5
        # A load of blocks the store does not have fails its job, and its keys read as misses.
        before = buf[10:15].copy()
        tier.submit_load(TransferJob(7, unknown, np.arange(10, 15), True, ReqContext("r")))
        assert finish(tier, [7]) == {7: False}
        assert settle(tier, unknown) == [LookupResult.MISS] * 5
        assert np.array_equal(buf[10:15], before), "a failed load wrote the primary buffer"
        # A load no lookup promised, of blocks gone by then (another process removed them):
        # the job fails and the blocks are misses from then on, not hits asked for again and
        # again.
        keys = keys_of(4, b"gone")
        tier.submit_store(TransferJob(8, keys, np.arange(4), False, ReqContext("r")))
        assert finish(tier, [8]) == {8: True}
        tier._store.remove([k.hex() for k in keys[:2]])
        tier.submit_load(TransferJob(9, keys, np.arange(20, 24), True, ReqContext("r")))
        assert finish(tier, [9]) == {9: False}
        assert settle(tier, keys) == [LookupResult.MISS] * 2 + [LookupResult.HIT] * 2
        tier.drain_jobs()
    finally:
        tier.shutdown()


def test_the_misses_remembered_are_bounded(kvtier_vllm, monkeypatch):
    """Keys learnt to be absent are remembered up to MISSING_CAPACITY, the latest ones: a key
    forgotten is asked about again (RETRY while kvtier reads), one remembered is a MISS at once."""
    monkeypatch.setattr(kvtier_vllm, "MISSING_CAPACITY", 8, raising=False)
    buf, view = primary()
    tier = tier_of(kvtier_vllm, view)
    try:
        unknown = keys_of(20, b"absent")
        for k in unknown:
            assert settle(tier, [k]) == [LookupResult.MISS]
        assert len(tier._missing) == 8
        assert tier.lookup(unknown[-1], ReqContext("r")) == LookupResult.MISS
        assert tier.lookup(unknown[0], ReqContext("r")) == LookupResult.RETRY
        assert settle(tier, [unknown[0]]) == [LookupResult.MISS]
        assert len(tier._missing) == 8
        tier.drain_jobs()
    finally:
        tier.shutdown()


def test_a_hit_holds_until_its_load_whatever_is_evicted_meanwhile(kvtier_vllm):
    """A lookup that said HIT pins the block until the load that follows: the memory tier
    evicting it for capacity (another handle on the same tiers filling it) or a clear of the
    namespace in between must not fail the load, and the bytes are the stored ones."""
    buf, view = primary()
    tier = tier_of(kvtier_vllm, view, memory_capacity="1MiB")
    other = tier._store.view()  # the same tiers, as another engine's handle would be
    try:
        rng = np.random.default_rng()
        for job, evict in ((1, "capacity"), (3, "clear")):
            keys = keys_of(6, b"pin")
            buf[0:6] = rng.integers(0, 256, (6, ROW), dtype=np.uint8)
            sent = buf[0:6].copy()
            tier.submit_store(TransferJob(job, keys, np.arange(6), False, ReqContext("p")))
            assert finish(tier, [job]) == {job: True}
            assert settle(tier, keys, req="p") == [LookupResult.HIT] * 6
            if evict == "capacity":
                filler = [os.urandom(16).hex() for _ in range(200)]  # 2.4 MB into 1 MiB
                other.batch_set(filler, [rng.integers(0, 256, ROW, dtype=np.uint8)] * 200)
            else:
                other.clear()
            assert other.batch_exists_each([k.hex() for k in keys]) == [
                kvtier_vllm.codes.NOT_FOUND] * 6, "the blocks were not evicted: no test"
            rows = np.arange(6) + 30
            buf[rows] = 0
            tier.submit_load(TransferJob(job + 1, keys, rows, True, ReqContext("p")))
            assert finish(tier, [job + 1]) == {job + 1: True}, f"a HIT's load failed ({evict})"
            assert np.array_equal(buf[rows], sent), f"loaded bytes differ ({evict})"
            assert tier.staged_blocks() == 0, "a loaded block's staged copy was kept"
    finally:
        other.close()
        tier.shutdown()


def test_staged_copies_are_released_and_bounded(kvtier_vllm):
    """Staged copies go when their load ends or their request finishes (abort, preemption),
    so many requests leave nothing behind; past `staging_capacity` a lookup answers MISS."""
    buf, view = primary()
    tier = tier_of(kvtier_vllm, view, staging_capacity=8 * ROW)
    try:
        keys = keys_of(12, b"bound")
        tier.submit_store(TransferJob(1, keys, np.arange(12), False, ReqContext("w")))
        assert finish(tier, [1]) == {1: True}
        sent = buf[0:12].copy()
        # Twelve blocks looked up, room for eight: the last four are misses, not RETRY forever.
        assert settle(tier, keys) == [LookupResult.HIT] * 8 + [LookupResult.MISS] * 4
        assert tier.staged_blocks() == 8
        tier.on_request_finished(ReqContext("r"))
        assert tier.staged_blocks() == 0
        job = 10
        for i in range(60):  # requests that load, and requests that abort after their lookups
            req = ReqContext(f"q{i}")
            picked = [(i + j) % 12 for j in range(4)]
            ks = [keys[p] for p in picked]
            until = time.monotonic() + 10
            while (answers := [tier.lookup(k, req) for k in ks]) != [LookupResult.HIT] * 4:
                assert LookupResult.MISS not in answers, answers
                assert time.monotonic() < until
                time.sleep(0.001)
            if i % 3 == 2:
                tier.on_request_finished(req)
                continue
            rows = np.arange(4) + 40
            tier.submit_load(TransferJob(job, ks, rows, True, req))
            assert finish(tier, [job]) == {job: True}
            assert np.array_equal(buf[rows], sent[picked])
            tier.on_request_finished(req)
            job += 1
        assert tier.staged_blocks() == 0, "staged copies outlived their requests"
        assert not tier._held and not tier._staged, "bookkeeping grows with requests"
        assert not tier.has_pending_work()
    finally:
        tier.shutdown()


def test_identities_keep_blocks_apart(kvtier_vllm, tmp_path):
    """Another revision, dtype or rank is another namespace; so is an SGLang adapter's."""
    import kvtier
    from kvtier.sglang import config as sglang_config

    folder = str(tmp_path / "shared")
    buf, view = primary()
    writer = tier_of(kvtier_vllm, view, tiers="file", file_dir=folder)
    keys = keys_of(6)
    writer.submit_store(TransferJob(1, keys, np.arange(6), False, ReqContext("w")))
    assert finish(writer, [1]) == {1: True}
    writer.drain_jobs()
    writer.shutdown()
    same = tier_of(kvtier_vllm, primary()[1], tiers="file", file_dir=folder)
    assert settle(same, keys) == [LookupResult.HIT] * 6
    same.shutdown()
    for other in ({"model_revision": "r2"}, {"_spec": spec(cache_dtype="fp8_e4m3")},
                  {"_spec": spec(rank=1, tp=2)}):
        t = tier_of(kvtier_vllm, primary()[1], tiers="file", file_dir=folder, **other)
        assert settle(t, keys) == [LookupResult.MISS] * 6, other
        t.shutdown()
    # An SGLang adapter on the same folder, with the same key strings: its namespace is its own.
    ns = sglang_config.namespace_for({"model_name": "Qwen/Qwen3-8B", "tp_rank": 0, "tp_size": 1})
    with kvtier.Store({"tiers": "file", "file_dir": folder, "namespace": ns}) as sg:
        assert sg.batch_exists_each([k.hex() for k in keys]) == [kvtier.codes.NOT_FOUND] * 6
        sg.batch_set([keys[0].hex()], [np.full(ROW, 7, dtype=np.uint8)])
    reader = tier_of(kvtier_vllm, primary()[1], tiers="file", file_dir=folder)
    assert settle(reader, keys[:1]) == [LookupResult.HIT]
    rows = np.array([30])
    reader.submit_load(TransferJob(2, keys[:1], rows, True, ReqContext("r")))
    assert finish(reader, [2]) == {2: True}
    assert not np.all(np.asarray(reader._buf).reshape(ROWS, ROW)[30] == 7), "SGLang's bytes"
    reader.shutdown()


def test_scheduler_calls_return_at_once_while_io_is_stuck(kvtier_vllm, kvtier_server):
    proc, address = kvtier_server
    buf, view = primary()
    tier = tier_of(kvtier_vllm, view, tiers="remote", remote_transport="tcp",
                   remote_servers=address, remote_timeout_ms=1500)
    try:
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.1)
        took = []
        keys = keys_of(16)
        for j in range(8):
            t0 = time.perf_counter()
            tier.submit_store(TransferJob(100 + j, keys[2 * j:2 * j + 2],
                                          np.array([2 * j, 2 * j + 1]), False, ReqContext("s")))
            took.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert tier.lookup(keys[j], ReqContext("s")) == LookupResult.RETRY
            took.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            tier.get_finished_jobs()
            took.append(time.perf_counter() - t0)
        took.sort()
        assert took[len(took) // 2] < 0.005, f"median scheduler call {took[len(took) // 2]:.4f} s"
        assert took[-1] < 0.1, f"slowest scheduler call {took[-1]:.3f} s"
        assert tier.has_pending_work()
        proc.send_signal(signal.SIGCONT)
        tier.drain_jobs()
        done = {r.job_id: r.success for r in tier.get_finished_jobs()}
        assert set(done) == set(range(100, 108)), done
        assert not tier.has_pending_work()
    finally:
        proc.send_signal(signal.SIGCONT)
        tier.shutdown()
