"""The asynchronous batch calls through the Python store: submit returns a request id at once,
fileno() wakes select.poll, drain() hands out per-key results; byte-exact pages; a request
stuck on a stopped kvtier-server (SIGSTOP, a real process) is cancelled and, once reported
done, never writes its buffer again."""

import ctypes
import select
import signal
import time

import numpy as np

import kvtier
from kvtier import codes

PAGE = 8192


def wait(store, timeout_s=10.0):
    """Polls the store's fd, then drains one batch of completions."""
    p = select.poll()
    p.register(store.fileno(), select.POLLIN)
    assert p.poll(int(timeout_s * 1000)), "no completion in time"
    return store.drain()


def frags(base, n, page=PAGE):
    """Two fragments per page, split unevenly: numpy arrays as the shim passes them."""
    ptrs, sizes = [], []
    for i in range(n):
        ptrs += [base + i * page, base + i * page + 100]
        sizes += [100, page - 100]
    return np.array(ptrs, dtype=np.uint64), np.array(sizes, dtype=np.uint64)


def test_round_trip_is_byte_exact_and_wakes_poll():
    n = 32
    with kvtier.Store({"tiers": "memory", "memory_capacity": "64MiB"}) as s:
        src = np.random.default_rng().integers(0, 256, n * PAGE, dtype=np.uint8)
        dst = np.zeros_like(src)
        s.register_buffer(src.ctypes.data, src.nbytes)
        s.register_buffer(dst.ctypes.data, dst.nbytes)
        keys = [f"async-py-{i}" for i in range(n)]
        rid = s.submit_set_v1(keys, *frags(src.ctypes.data, n), user_data=11)
        [c] = wait(s)
        assert (c.id, c.user_data, c.op, c.status) == (rid, 11, kvtier.store.OP_SET_V1, 0)
        assert c.results == [0] * n
        assert not select.select([s.fileno()], [], [], 0)[0], "readable with nothing to drain"
        rid = s.submit_get_v1(keys, *frags(dst.ctypes.data, n), user_data=12)
        [c] = wait(s)
        assert c.id == rid and c.status == 0 and c.results == [0] * n
        assert np.array_equal(src, dst)
        s.submit_exists([keys[0], "async-py-missing", keys[-1]])
        [c] = wait(s)
        assert c.results == [0, codes.NOT_FOUND, 0]
        assert s.cancel(c.id) is False  # completed already


def test_a_failed_key_s_detail_reaches_its_completion():
    with kvtier.Store({"tiers": "memory", "memory_capacity": "64MiB"}) as s:
        src = np.random.default_rng().integers(0, 256, 2 * PAGE, dtype=np.uint8)
        elsewhere = np.zeros(PAGE, dtype=np.uint8)  # not registered
        s.register_buffer(src.ctypes.data, src.nbytes)
        s.submit_set_v1(["detail-0", "detail-1"], *frags(src.ctypes.data, 2))
        [c] = wait(s)
        assert c.results == [0, 0] and c.detail == ""
        ptrs, sizes = frags(src.ctypes.data, 2)
        ptrs[2] = elsewhere.ctypes.data
        rid = s.submit_get_v1(["detail-0", "detail-1"], ptrs, sizes)
        [c] = wait(s)
        assert c.id == rid and c.results == [0, codes.NOT_REGISTERED]
        assert c.detail.startswith("KVTIER_ERR_NOT_REGISTERED"), c.detail


def test_slots_round_trip_is_byte_exact():
    P, L, H, D, S = 4, 2, 2, 8, 64
    pool = np.random.default_rng().integers(0, 256, 2 * L * S * H * D * 2, dtype=np.uint8)
    with kvtier.Store({"tiers": "memory", "memory_capacity": "64MiB"}) as s:
        s.register_buffer(pool.ctypes.data, pool.nbytes)
        s.register_layout(pool.ctypes.data, mla=False, layout="page_first", page_size=P,
                          layer_num=L, dtype_size=2, pool_tokens=S, head_num=H, head_dim=D,
                          dtype_name="bfloat16")
        keys = [f"async-slots-{i}" for i in range(3)]
        src = np.concatenate([np.arange(P) + p * P for p in (0, 1, 2)]).astype(np.int64)
        dst = np.concatenate([np.arange(P) + p * P for p in (5, 6, 7)]).astype(np.int64)
        s.submit_set_v1_slots(keys, src)
        assert wait(s)[0].results == [0, 0, 0]
        s.submit_get_v1_slots(keys, dst)
        assert wait(s)[0].results == [0, 0, 0]
        a, b = s.page_buffer_meta(src), s.page_buffer_meta(dst)
        for (pa, sa), (pb, sb) in zip(zip(*a), zip(*b)):
            assert sa == sb and ctypes.string_at(pa, sa) == ctypes.string_at(pb, sb)


def test_cancel_of_a_request_stuck_on_a_stopped_server(kvtier_server):
    proc, address = kvtier_server
    timeout_ms = 1200
    n = 4
    with kvtier.Store({"tiers": "remote", "remote_transport": "tcp", "remote_servers": address,
                       "remote_timeout_ms": timeout_ms, "async_threads": 1}) as s:
        src = np.random.default_rng().integers(0, 256, n * PAGE, dtype=np.uint8)
        dst = np.full(n * PAGE, 0xA5, dtype=np.uint8)
        s.register_buffer(src.ctypes.data, src.nbytes)
        s.register_buffer(dst.ctypes.data, dst.nbytes)
        keys = [f"async-stuck-{i}" for i in range(n)]
        assert s.batch_set_v1(keys, *frags(src.ctypes.data, n)) == [0] * n
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.2)
        rid = s.submit_get_v1(keys, *frags(dst.ctypes.data, n))
        assert s.drain() == [], "the submit waited for the stopped server"
        time.sleep(0.3)  # running now
        assert s.cancel(rid) is True
        [c] = wait(s, timeout_s=10 * timeout_ms / 1000)
        assert c.id == rid and c.status == codes.CANCELLED
        assert all(r < 0 for r in c.results)
        before = dst.copy()
        proc.send_signal(signal.SIGCONT)
        time.sleep(timeout_ms / 1000 + 0.7)
        assert np.array_equal(before, dst), "bytes landed after the request was reported done"
