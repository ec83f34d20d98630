"""KvtierStorage: the class SGLang's dynamic backend loader builds.

Methods the engine calls never raise and never return None where it indexes the result: a
failure is a False, a miss or a 0, and a log line. close() may come from the controller while
the engine's threads are inside calls, and more than once: it waits for the calls in flight,
and every later call answers like a miss.
"""

import functools
import logging
import threading
from contextlib import contextmanager
from typing import Any, Dict, List, Optional

from ..errors import INVALID_ARG, NO_LAYOUT, NOT_FOUND, SIZE_MISMATCH, KvtierError
from ..store import Store
from .config import get, store_settings
from .pools import SAME, SPLIT, Pool, Regions, nbytes

logger = logging.getLogger("kvtier.sglang")

try:  # a real subclass when SGLang is importable, the same methods without it
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage as _Base
except Exception:  # noqa: BLE001 - any import failure means "no SGLang here"
    _Base = object

try:
    from sglang.srt.mem_cache.hicache_storage import PoolTransferResult
except Exception:  # noqa: BLE001

    class PoolTransferResult:  # SGLang's, as its controller uses it
        def __init__(self, kv_hit_pages: int, extra_pool_hit_pages: Dict[str, int]):
            self.kv_hit_pages = kv_hit_pages
            self.extra_pool_hit_pages = extra_pool_hit_pages

        @classmethod
        def empty(cls) -> "PoolTransferResult":
            return cls(0, {})

        def update_kv_hit_pages(self, kv_hit_pages: int) -> None:
            self.kv_hit_pages = max(self.kv_hit_pages, kv_hit_pages)

        def update_extra_pool_hit_pages(self, results: Dict[str, Any]) -> None:
            """Per pool: a count, or the per-key results of a transfer (their leading run)."""
            for name, r in results.items():
                self.extra_pool_hit_pages[name] = r if isinstance(r, int) else \
                    next((i for i, ok in enumerate(r) if not ok), len(r))

        def __repr__(self):
            return f"PoolTransferResult({self.kv_hit_pages}, {self.extra_pool_hit_pages})"


KV = "kv"  # SGLang's PoolName.KV


def _name(x) -> str:
    """A pool name or hit policy as text (SGLang passes str enums)."""
    return str(getattr(x, "value", x))


class _Closed(Exception):
    """A call after close(): answered like a miss, without a warning per call."""


def _never_raise(default):
    """Engine-facing methods: counted in flight (close waits for them); an exception becomes a
    log line and a safe result."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(self, *args, **kwargs):
            try:
                with self._in_call():
                    return fn(self, *args, **kwargs)
            except _Closed:
                logger.debug("kvtier: %s after close", fn.__name__)
            except Exception as e:  # noqa: BLE001 - the engine's threads must never see one
                logger.warning("kvtier: %s failed: %s: %s", fn.__name__, type(e).__name__, e)
            return default(self, *args, **kwargs)

        return inner

    return wrap


def _falses(keys):
    return [False] * len(keys or [])


def _leading_run(codes) -> int:
    return next((i for i, r in enumerate(codes) if r != 0), len(codes))


class KvtierStorage(_Base):
    """HiCache L3 storage on kvtier: zero-copy v1/v2 calls on the engine's host pools, and the
    generic calls on flat pages, which read and write the same pages wherever the engine's flat
    page can be mapped onto the v1 value (every layout of SGLang's MHA and MLA pools)."""

    def __init__(self, storage_config=None, kwargs: Optional[dict] = None):
        self.storage_config = storage_config
        self.is_mla = bool(get(storage_config, "is_mla_model", False))
        # MLA pages are the same on every TP rank: rank 0 writes them and every rank reads them
        # from the one shared namespace. SGLang's cache controller already skips the backup on
        # the other ranks (backup_skip) and acknowledges it; this does the same for a caller
        # that does not, so a page is never written once per rank.
        self.writes = not (self.is_mla and int(get(storage_config, "tp_rank", 0) or 0) != 0)
        # Where a pool's flat page has a format of its own, batch_exists answers for the path
        # the engine reads KV pages with: v1 when the flag says so or a v1 call was seen.
        self._v1 = bool((get(storage_config, "extra_config") or {}).get("interface_v1"))
        self.settings = store_settings(storage_config, kwargs)
        self.store = Store(self.settings)
        self._regions = Regions(self.store)
        self._pools: Dict[str, Pool] = {}
        self._flat_views: Dict[str, Store] = {}  # flat pages of a format of their own
        self._retired: List[Pool] = []  # replaced pools: a call may still use their view
        self._lock = threading.Lock()
        self._calls = threading.Condition()
        self._active = 0
        self._closed = False
        self.mem_pool_host = None
        self.registered_pools: Dict[str, Any] = {}
        logger.info("kvtier %s storage: %s", type(self).__name__, self.settings)

    @contextmanager
    def _in_call(self):
        with self._calls:
            if self._closed:
                raise _Closed()
            self._active += 1
        try:
            yield
        finally:
            with self._calls:
                self._active -= 1
                if self._active == 0:
                    self._calls.notify_all()

    # -- host pools -------------------------------------------------------------------------
    def register_mem_pool_host(self, mem_pool_host) -> None:
        """The KV pool (v1 calls and the KV pool of the v2 calls)."""
        self.mem_pool_host = mem_pool_host
        self._register(KV, mem_pool_host)

    def register_mem_host_pool_v2(self, host_pool, host_pool_name) -> None:
        """An extra pool of a hybrid model (Mamba, SWA, indexer, draft, ...) by name."""
        self.registered_pools[_name(host_pool_name)] = host_pool
        self._register(_name(host_pool_name), host_pool)

    def _register(self, name: str, pool) -> None:
        with self._lock:
            if self._closed:
                logger.warning("kvtier: pool %r registered after close: ignored", name)
                return
            old = self._pools.pop(name, None)
            if old is not None:
                self._retired.append(old)
            view = self.store.view()
            try:
                self._pools[name] = Pool(name, pool, view, self._regions, self.is_mla)
            except Exception as e:  # noqa: BLE001 - a pool kvtier cannot use gives misses
                view.close()
                logger.error("kvtier: cannot use pool %r (%s): %s", name, type(pool).__name__, e)

    def _pool(self, name: str) -> Pool:
        pool = self._pools.get(name)
        if pool is None:
            raise KvtierError(NO_LAYOUT, f"no usable host pool named {name!r} is registered")
        return pool

    # -- zero-copy (interface_v1) ---------------------------------------------------------
    def _io(self, name: str, keys: List[str], host_indices, write: bool) -> List[bool]:
        if not keys:
            return []
        if name == KV:
            self._v1 = True
        results = self._pool(name).io(list(keys), host_indices, write)
        self._log_failures("set" if write else "get", name, keys, results)
        return [r == 0 for r in results]

    @staticmethod
    def _log_failures(what: str, name: str, keys, results) -> None:
        bad = [(i, r) for i, r in enumerate(results) if r not in (0, NOT_FOUND)]
        if bad:
            logger.warning("kvtier: %s %r: %d of %d keys failed, first key %d: %s", what, name,
                           len(bad), len(keys), bad[0][0], KvtierError(bad[0][1]).name)

    @_never_raise(lambda self, keys, *a, **k: _falses(keys))
    def batch_set_v1(self, keys: List[str], host_indices, extra_info=None) -> List[bool]:
        if not self.writes:
            return [True] * len(keys or [])  # rank 0 writes this page (see __init__)
        return self._io(KV, keys, host_indices, True)

    @_never_raise(lambda self, keys, *a, **k: _falses(keys))
    def batch_get_v1(self, keys: List[str], host_indices, extra_info=None) -> List[bool]:
        return self._io(KV, keys, host_indices, False)

    # -- v2: KV plus the extra pools of hybrid models -------------------------------------
    @staticmethod
    def _pool_keys(name: str, keys: List[str]) -> List[str]:
        """An extra pool's page for KV page `key` is `key.<pool>`; KV pages are `key`."""
        return list(keys) if name == KV else [f"{k}.{name}" for k in keys]

    @_never_raise(lambda self, *a, **k: PoolTransferResult(0, {}))
    def batch_exists_v2(self, keys: List[str], pool_transfers=None, extra_info=None):
        """The usable prefix: the KV run, cut by each extra pool's hit policy — ALL_PAGES: every
        page of the prefix; TRAILING_PAGES: the last len(transfer.keys) pages of it."""
        kv = self._pool(KV).view.batch_exists(list(keys)) if keys else 0
        hits = {KV: kv} if kv else {}
        final = kv
        for transfer in pool_transfers or []:
            if final == 0:
                break
            name = _name(transfer.name)
            if name == KV:
                continue
            present = [r == 0 for r in self._pool(name).view.batch_exists_each(
                self._pool_keys(name, keys[:kv]))]
            if _name(getattr(transfer, "hit_policy", "all_pages")) == "trailing_pages":
                window = max(1, len(transfer.keys or []))
                boundary = next((n for n in range(kv, 0, -1)
                                 if all(present[max(0, n - window):n])), 0)
            else:
                boundary = present.index(False) if False in present else kv
            if boundary:
                hits[name] = boundary
            final = min(final, boundary)
        return PoolTransferResult(final, hits)

    def _v2(self, transfers, write: bool) -> Dict[str, List[bool]]:
        out = {}
        for transfer in transfers or []:
            name = _name(transfer.name)
            keys = list(transfer.keys or [])
            try:
                if transfer.host_indices is None:
                    raise KvtierError(INVALID_ARG, "transfer has no host_indices")
                out[name] = self._io(name, self._pool_keys(name, keys), transfer.host_indices,
                                     write)
            except Exception as e:  # noqa: BLE001 - one pool's failure is its own
                logger.warning("kvtier: %s_v2 %r failed: %s", "set" if write else "get", name, e)
                out[name] = _falses(keys)
        return out

    @_never_raise(lambda self, transfers, *a, **k: {_name(t.name): _falses(t.keys)
                                                    for t in transfers or []})
    def batch_get_v2(self, transfers, extra_info=None) -> Dict[str, List[bool]]:
        return self._v2(transfers, False)

    @_never_raise(lambda self, transfers, *a, **k: {_name(t.name): _falses(t.keys)
                                                    for t in transfers or []})
    def batch_set_v2(self, transfers, extra_info=None) -> Dict[str, List[bool]]:
        if not self.writes:
            return {_name(t.name): [True] * len(t.keys or []) for t in transfers or []}
        return self._v2(transfers, True)

    # -- generic path: flat page tensors (engines without v1; draft pages always) ---------
    def _flat_route(self, key: str):
        """(pool, view) for a flat page under `key`: the pool's own view and format where its
        flat page maps onto the v1 value (pool set), else a view of a format of its own, named
        by the pool (`<hash>.draft`: the suffix; the pool registered under that name if any,
        else the KV pool), whose sizes are checked on every get (pool None)."""
        suffix = key.rpartition(".")[2] if "." in key else KV
        owner = self._pools.get(suffix) or self._pools.get(KV)
        if owner is not None and owner.flat in (SAME, SPLIT) and (suffix == KV or
                                                               owner.name == suffix):
            return owner, owner.view
        fmt = f"flat/{suffix}/{owner.desc if owner is not None else ''}"
        view = self._flat_views.get(fmt)
        if view is None:
            with self._lock:
                view = self._flat_views.get(fmt)
                if view is None:
                    view = self.store.view()
                    view.set_page_format(fmt)
                    self._flat_views[fmt] = view
        return None, view

    def _flat_io(self, keys, values, write: bool) -> List[int]:
        """One batch per route in the call (usually one); 0 or a code per key."""
        groups: Dict[int, Any] = {}
        for i, k in enumerate(keys):
            pool, view = self._flat_route(k)
            groups.setdefault(id(view), (pool, view, []))[2].append(i)
        results = [0] * len(keys)
        for pool, view, idx in groups.values():
            ks, vs = [keys[i] for i in idx], [values[i] for i in idx]
            if pool is not None:
                batch = pool.set_flat(ks, vs) if write else pool.get_flat(ks, vs)
            elif write:
                batch = view.batch_set(ks, vs)
            else:
                batch = [0 if r == nbytes(v) else (r if r < 0 else SIZE_MISMATCH)
                         for r, v in zip(view.batch_get(ks, vs), vs)]
            for i, r in zip(idx, batch):
                results[i] = r
        self._log_failures("set" if write else "get", "flat", keys, results)
        return results

    @_never_raise(lambda self, *a, **k: False)
    def batch_set(self, keys: List[str], values=None, target_locations=None,
                  target_sizes=None) -> bool:
        values = values if values is not None else target_locations
        if not keys or values is None or len(values) != len(keys):
            return False
        if not self.writes:
            return True  # rank 0 writes this page (see __init__)
        return all(r == 0 for r in self._flat_io(list(keys), list(values), True))

    @_never_raise(lambda self, *a, **k: False)
    def set(self, key: str, value=None, target_location=None, target_sizes=None) -> bool:
        return self.batch_set([key], [value if value is not None else target_location])

    @_never_raise(lambda self, keys, *a, **k: [None] * len(keys or []))
    def batch_get(self, keys: List[str], target_locations=None, target_sizes=None) -> List[Any]:
        """Fills each target (a flat page tensor) with exactly its bytes; returns it, or None."""
        if not keys or target_locations is None or len(target_locations) != len(keys):
            return [None] * len(keys or [])
        results = self._flat_io(list(keys), list(target_locations), False)
        return [t if r == 0 else None for t, r in zip(target_locations, results)]

    @_never_raise(lambda self, *a, **k: None)
    def get(self, key: str, target_location=None, target_sizes=None):
        return self.batch_get([key], [target_location])[0]

    @_never_raise(lambda self, keys, *a, **k: 0)
    def batch_exists(self, keys: List[str], extra_info=None) -> int:
        """The leading run of keys present, whichever path stored them: both paths store a
        pool's pages in one format where its flat page maps onto the v1 value; where it does
        not, a page counts if the path the engine reads KV pages with can return it."""
        if not keys:
            return 0
        groups: Dict[int, Any] = {}
        for i, k in enumerate(keys):
            view = self._exists_view(k)
            groups.setdefault(id(view), (view, []))[1].append(i)
        if len(groups) == 1:
            return next(iter(groups.values()))[0].batch_exists(list(keys))
        present = [0] * len(keys)
        for view, idx in groups.values():
            for i, r in zip(idx, view.batch_exists_each([keys[i] for i in idx])):
                present[i] = r
        return _leading_run(present)

    def _exists_view(self, key: str) -> Store:
        kv = self._pools.get(KV)
        if "." not in key and kv is not None and self._v1:
            return kv.view
        return self._flat_route(key)[1]

    @_never_raise(lambda self, *a, **k: False)
    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    @_never_raise(lambda self, *a, **k: None)
    def clear(self) -> None:
        self.store.clear()

    @_never_raise(lambda self, *a, **k: {})
    def get_stats(self):
        """kvtier_stats_json as a dict: per tier keys, bytes, capacity, hits, misses,
        evictions, errors; a remote tier adds its servers' own counters (servers, server_hits,
        server_misses, leases, connections)."""
        return self.store.stats()

    def close(self) -> None:
        """Releases everything: pools' views, registered memory, the store (file-tier lock,
        threads, sockets). Waits for the calls in flight; later calls answer like misses. Safe
        to call again, from any thread. The engine may attach a new instance afterwards."""
        with self._calls:
            if self._closed:
                return
            self._closed = True
            self._calls.wait_for(lambda: self._active == 0)
        try:
            with self._lock:
                for pool in list(self._pools.values()) + self._retired:
                    pool.close()
                for view in self._flat_views.values():
                    view.close()
                self._pools.clear()
                self._retired.clear()
                self._flat_views.clear()
                self._regions.clear()
                self.store.close()
        except Exception as e:  # noqa: BLE001 - close never raises into the controller
            logger.warning("kvtier: close failed: %s: %s", type(e).__name__, e)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
