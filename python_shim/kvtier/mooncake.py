"""Mooncake Store's Python API over kvtier: `MooncakeDistributedStore` as its consumers call it
(SGLang's `mooncake` HiCache backend, vLLM's and LMCache's Mooncake connectors), with Mooncake's
return conventions: put calls give 0 or a negative code, reads the bytes read or a negative code,
`is_exist` exactly 1 (present) or 0. No call raises into the engine.

kvtier's settings come from the KVTIER_* environment (or the constructor's `config`), not from
setup()'s Mooncake arguments: setup() opens the store and returns 0 or a negative code. The
engine's keys carry its own identity (SGLang tags them with the model and the rank); put the
model in KVTIER_NAMESPACE too. Pages written through this API share one page format, apart from
the pages kvtier's own SGLang adapter writes.

`import mooncake.store` finds this class only through the opt-in drop-in (see dropin_path())."""

import ctypes
import logging
import os
import socket
import threading
from itertools import chain
from typing import List, Optional, Sequence

from .errors import BUFFER_TOO_SMALL, INVALID_ARG, NOT_FOUND, OK, SIZE_MISMATCH, KvtierError
from .store import Closing, Store

log = logging.getLogger("kvtier.mooncake")

# The page format of every key written through this API (part of each key's identity).
PAGE_FORMAT = "mooncake-store-object"
# get(key) has no size: it asks each object's size (kvtier_batch_size_each), then reads it into
# a buffer of that size; an object written again larger in between is asked again, this often.
_GET_TRIES = 3


def dropin_path() -> str:
    """The folder to put first on PYTHONPATH so that `from mooncake.store import
    MooncakeDistributedStore` loads this class (the drop-in; never on the path by itself)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_dropin")


class ReplicateConfig:
    """Mooncake's replication settings. Accepted and not used: kvtier's own replication is
    KVTIER_REMOTE_REPLICAS."""

    def __init__(self):
        self.replica_num = 1
        self.with_soft_pin = False
        self.with_hard_pin = False
        self.preferred_segment = ""
        self.prefer_alloc_in_same_node = False


class BufferHandle(bytearray):
    """batch_get_buffer's result: the object's bytes, with Mooncake's ptr() and size()."""

    def ptr(self) -> int:
        return ctypes.addressof((ctypes.c_char * len(self)).from_buffer(self)) if self else 0

    def size(self) -> int:
        return len(self)


class MooncakeDistributedStore(Closing):
    """One kvtier store behind Mooncake Store's calls. Thread-safe."""

    def __init__(self, config=None):
        self._config = config
        self._store: Optional[Store] = None
        self._hostname: Optional[str] = None
        self._open_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------
    def setup(self, *args, **kwargs) -> int:
        """Mooncake's setup, in each consumer's form: SGLang's 8 positional arguments
        (local_hostname, metadata_server, global_segment_size, local_buffer_size, protocol,
        device_name, master_server_address, transfer_engine) and keywords, LMCache's 7, or
        vLLM's one dict. Only local_hostname is kept (get_hostname). Opens the store:
        0, or the negative code of the failure (a bad KVTIER_* setting: KVTIER_ERR_CONFIG)."""
        first = args[0] if args else kwargs.get("local_hostname")
        if isinstance(first, dict):
            first = first.get("local_hostname")
        self._hostname = str(first) if first else None
        return self._try(lambda: OK if self._s is not None else INVALID_ARG)

    def setup_dummy(self, mem_pool_size: int, local_buffer_size: int, server_address: str) -> int:
        """Mooncake's standalone-client setup: kvtier has no separate client; opens the store."""
        return self._try(lambda: OK if self._s is not None else INVALID_ARG)

    def close(self) -> int:
        store, self._store = getattr(self, "_store", None), None
        if store is not None:
            store.close()
        return OK

    @property
    def _s(self) -> Store:
        """The store, opened at setup() or the first call (raises KvtierError if it cannot)."""
        if self._store is None:
            with self._open_lock:
                if self._store is None:
                    store = Store(self._config)
                    store.set_page_format(PAGE_FORMAT)
                    self._store = store
        return self._store

    @staticmethod
    def _try(call, n: Optional[int] = None):
        """call(), or its failure's code (per key when n is given): never a raise."""
        try:
            return call()
        except KvtierError as e:
            return e.code if n is None else [e.code] * n
        except (TypeError, ValueError, OverflowError, ctypes.ArgumentError) as e:
            log.warning("kvtier.mooncake: bad argument: %s", e)
            return INVALID_ARG if n is None else [INVALID_ARG] * n

    def get_hostname(self) -> str:
        return self._hostname or socket.gethostname()

    # -- registered memory ----------------------------------------------------------------
    def register_buffer(self, buffer_ptr: int, size: int) -> int:
        return self._try(lambda: self._s.register_buffer(buffer_ptr, size) or OK)

    def unregister_buffer(self, buffer_ptr: int) -> int:
        return self._try(lambda: self._s.unregister_buffer(buffer_ptr) or OK)

    # -- zero-copy puts and gets (registered memory) --------------------------------------
    def put_from(self, key: str, buffer_ptr: int, size: int, config=None) -> int:
        return self.batch_put_from([key], [buffer_ptr], [size])[0]

    def get_into(self, key: str, buffer_ptr: int, size: int) -> int:
        return self.batch_get_into([key], [buffer_ptr], [size])[0]

    def batch_put_from(self, keys: Sequence[str], buffer_ptrs: Sequence[int],
                       sizes: Sequence[int], config=None) -> List[int]:
        """0 or a negative code per key (a key that exists already counts as written)."""
        return self._objects(keys, buffer_ptrs, sizes, self._puts, one_buffer=True)

    def batch_get_into(self, keys: Sequence[str], buffer_ptrs: Sequence[int],
                       sizes: Sequence[int]) -> List[int]:
        """Bytes read or a negative code per key."""
        return self._objects(keys, buffer_ptrs, sizes, self._gets, one_buffer=True)

    def batch_put_from_multi_buffers(self, keys, all_buffer_ptrs: Sequence[Sequence[int]],
                                     all_sizes: Sequence[Sequence[int]], config=None) -> List[int]:
        """Each object is its buffers concatenated."""
        return self._objects(keys, all_buffer_ptrs, all_sizes, self._puts)

    def batch_get_into_multi_buffers(self, keys, all_buffer_ptrs: Sequence[Sequence[int]],
                                     all_sizes: Sequence[Sequence[int]]) -> List[int]:
        return self._objects(keys, all_buffer_ptrs, all_sizes, self._gets)

    def _objects(self, keys, all_ptrs, all_sizes, call, one_buffer=False) -> List[int]:
        """The zero-copy batch calls' one check: per key a list of buffers and one of sizes,
        of the same length (one_buffer: a buffer and a size per key). A batch that does not
        have that shape fails every key with INVALID_ARG. Each C call takes one buffer count
        for all its keys, so call(keys, all_ptrs, all_sizes) runs once per count."""
        n = len(keys)

        def run():
            ptrs = [[p] for p in all_ptrs] if one_buffer else [list(p) for p in all_ptrs]
            sizes = [[x] for x in all_sizes] if one_buffer else [list(x) for x in all_sizes]
            if len(ptrs) != n or len(sizes) != n or any(
                    len(p) != len(x) or not p for p, x in zip(ptrs, sizes)):
                return [INVALID_ARG] * n
            by_count = {}
            for i, p in enumerate(ptrs):
                by_count.setdefault(len(p), []).append(i)
            out = [INVALID_ARG] * n
            for idx in by_count.values():
                res = call([keys[i] for i in idx], [ptrs[i] for i in idx],
                           [sizes[i] for i in idx])
                for i, r in zip(idx, res):
                    out[i] = r
            return out

        return self._try(run, n) if n else []

    def _puts(self, keys, all_ptrs, all_sizes) -> List[int]:
        return self._try(lambda: self._s.batch_set_v1(
            keys, list(chain.from_iterable(all_ptrs)), list(chain.from_iterable(all_sizes))),
            len(keys))

    def _gets(self, keys, all_ptrs, all_sizes) -> List[int]:
        res = self._try(lambda: self._s.batch_get_v1(
            keys, list(chain.from_iterable(all_ptrs)), list(chain.from_iterable(all_sizes))),
            len(keys))
        out = [sum(all_sizes[i]) if r == OK else r for i, r in enumerate(res)]
        # Mooncake's rule: buffers at least as large as the object get it. The zero-copy read
        # takes exact sizes only (after checking the buffers are registered), so a smaller
        # object is read again through the copying call and scattered into the buffers.
        smaller = [i for i, r in enumerate(res) if r == SIZE_MISMATCH]
        if smaller:
            got = self._get_scattered([keys[i] for i in smaller], [all_ptrs[i] for i in smaller],
                                      [all_sizes[i] for i in smaller])
            for i, r in zip(smaller, got):
                out[i] = r
        return out

    def _get_scattered(self, keys, all_ptrs, all_sizes) -> List[int]:
        bufs = [bytearray(sum(sizes)) for sizes in all_sizes]
        res = self._try(lambda: self._s.batch_get(list(keys), bufs), len(keys))
        for buf, ptrs, sizes, r in zip(bufs, all_ptrs, all_sizes, res):
            done = 0
            for p, sz in zip(ptrs, sizes):
                take = min(sz, r - done)
                if take <= 0:
                    break
                src = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
                ctypes.memmove(p, src + done, take)
                done += take
        return res

    # -- copying puts and gets ------------------------------------------------------------
    def put(self, key: str, value, config=None) -> int:
        return self.put_batch([key], [value])

    def put_parts(self, key: str, *parts, config=None) -> int:
        """The parts (bytes-like) concatenated, as one object."""
        return self._try(lambda: self.put(key, b"".join(parts)))

    def put_batch(self, keys: Sequence[str], values: Sequence, config=None) -> int:
        """0, or the first key's negative code."""
        if not keys or len(keys) != len(values):
            return INVALID_ARG
        if any(len(v) == 0 for v in values):  # Mooncake refuses empty objects, as kvtier does
            return INVALID_ARG
        res = self._try(lambda: self._s.batch_set(list(keys), values), len(keys))
        return next((r for r in res if r != OK), OK)

    def get(self, key: str) -> bytes:
        """The object's bytes; b"" when it is missing or cannot be read."""
        return self._values([key])[0] or b""

    def get_batch(self, keys: Sequence[str]) -> List[bytes]:
        return [v or b"" for v in self._values(keys)]

    def batch_get_buffer(self, keys: Sequence[str]) -> List[Optional[BufferHandle]]:
        """A buffer per key (ptr(), size(), the buffer protocol), None where missing."""
        return [None if v is None else BufferHandle(v) for v in self._values(keys)]

    def _values(self, keys: Sequence[str]) -> List[Optional[bytes]]:
        """Each key's value, None where missing or failed: its size asked first, then read
        into a buffer of that size, whatever the size."""
        out: List[Optional[bytes]] = [None] * len(keys)
        pending = list(range(len(keys)))
        for _ in range(_GET_TRIES):
            if not pending:
                break
            sizes = self._try(lambda: self._s.batch_size_each([keys[i] for i in pending]),
                              len(pending))
            found = [(i, s) for i, s in zip(pending, sizes) if s > 0]
            for i, s in zip(pending, sizes):
                if s < 0 and s != NOT_FOUND:
                    log.warning("kvtier.mooncake: size of %r not known (code %d)", keys[i], s)
            bufs = [bytearray(s) for _, s in found]
            res = self._try(lambda: self._s.batch_get([keys[i] for i, _ in found], bufs),
                            len(found)) if found else []
            for (i, _), buf, r in zip(found, bufs, res):
                if r >= 0:
                    out[i] = bytes(memoryview(buf)[:r])
                elif r not in (NOT_FOUND, BUFFER_TOO_SMALL):
                    log.warning("kvtier.mooncake: get %r failed with code %d", keys[i], r)
            # Removed and written again larger since its size was asked: ask again.
            pending = [i for (i, _), r in zip(found, res) if r == BUFFER_TOO_SMALL]
        return out

    # -- presence and removal -------------------------------------------------------------
    def is_exist(self, key: str) -> int:
        return self.batch_is_exist([key])[0]

    def batch_is_exist(self, keys: Sequence[str]) -> List[int]:
        """1 present, 0 missing. A key that cannot be checked (a bad key, a dead server) reads
        0 with a log line, never anything else: SGLang asserts == 1, LMCache counts any
        non-zero as present, and a page said present that cannot be read stalls the engine."""
        if not keys:
            return []
        res = self._try(lambda: self._s.batch_exists_each(list(keys)), len(keys))
        failed = [r for r in res if r not in (OK, NOT_FOUND)]
        if failed:
            log.warning("kvtier.mooncake: %d of %d keys could not be checked (code %d): "
                        "reported missing", len(failed), len(keys), failed[0])
        return [1 if r == OK else 0 for r in res]

    def remove(self, key: str) -> int:
        """0, or a negative code (KVTIER_ERR_NOT_FOUND when the key is not there)."""
        return self._try(lambda: self._s.remove([key])[0])

    def remove_all(self) -> int:
        """Clears the namespace; the number of objects the largest tier held before, or -1."""

        def clear():
            tiers = self._s.stats().get("tiers", [])
            held = max((t.get("keys", 0) for t in tiers), default=0)
            self._s.clear()
            return held

        res = self._try(clear)
        return res if res >= 0 else -1


# The name kvtier's earlier releases gave the class.
MooncakeStore = MooncakeDistributedStore
