"""SGLang HiCache storage backend over kvtier.

Start SGLang with:
    --hicache-storage-backend dynamic
    --hicache-storage-backend-extra-config '{"backend_name": "kvtier",
        "module_path": "kvtier.sglang", "class_name": "KvtierStorage", "interface_v1": 1,
        "tiers": "memory", "memory_capacity": "64GiB"}'

Every extra_config key other than the engine's own (ENGINE_KEYS) is a kvtier setting (a KVTIER_*
variable without the prefix, any case) and goes to the store, which refuses unknown ones by name;
`storage_dir`, as SGLang's file backends take it, is kvtier's `file_dir`.

A page's identity is its key plus everything that changes its bytes: the model and the ranks go
into the namespace (namespace_for), the page format of each pool into every key id (one store
view per pool, see _Pool). Methods the engine calls never raise and never return None where it
indexes the result: a failure is a False, a miss or a 0, and a log line.
"""

import functools
import logging
import threading
from typing import Any, Dict, List, Optional

from .errors import KvtierError
from .store import LAYOUTS, Store

logger = logging.getLogger("kvtier.sglang")

try:  # a real subclass when SGLang is importable, the same methods without it
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage as _Base
except Exception:  # noqa: BLE001 - any import failure means "no SGLang here"
    _Base = object

try:
    from sglang.srt.mem_cache.hicache_storage import PoolTransferResult
except Exception:  # noqa: BLE001

    class PoolTransferResult:  # the fields SGLang's controller reads
        def __init__(self, kv_hit_pages: int, extra_pool_hit_pages: Dict[str, int]):
            self.kv_hit_pages = kv_hit_pages
            self.extra_pool_hit_pages = extra_pool_hit_pages

        def __repr__(self):
            return f"PoolTransferResult({self.kv_hit_pages}, {self.extra_pool_hit_pages})"


# extra_config keys that belong to SGLang (its dynamic-backend loader and its prefetch policy).
ENGINE_KEYS = {
    "backend_name", "module_path", "class_name", "interface_v1", "prefetch_threshold",
    "prefetch_timeout_base", "prefetch_timeout_per_ki_token", "hicache_storage_pass_prefix_keys",
}
# extra_config names other storage backends use for a kvtier setting.
ALIASES = {"storage_dir": "file_dir"}
KV = "kv"  # SGLang's PoolName.KV


def _get(cfg, name, default=None):
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def _name(x) -> str:
    """A pool name or hit policy as text (SGLang passes str enums)."""
    return str(getattr(x, "value", x))


def namespace_for(storage_config, base: str = "") -> str:
    """The namespace of an engine process's pages: the model, then each rank that holds its own
    slice of a page (pipeline stage, attention-CP rank, and the TP rank for MHA; MLA pages are
    the same on every TP rank). Sizes of 1 add nothing, so PP = CP = 1 names stay as before."""
    parts = [base, (_get(storage_config, "model_name") or "").replace("/", "-")]
    for rank, size, tag in (("pp_rank", "pp_size", "pp"), ("attn_cp_rank", "attn_cp_size", "cp")):
        if int(_get(storage_config, size, 1) or 1) > 1:
            parts.append(f"{tag}{int(_get(storage_config, rank, 0) or 0)}of"
                         f"{int(_get(storage_config, size, 1))}")
    if not _get(storage_config, "is_mla_model", False):
        parts.append(f"tp{int(_get(storage_config, 'tp_rank', 0) or 0)}of"
                     f"{int(_get(storage_config, 'tp_size', 1) or 1)}")
    return "/".join(p for p in parts if p)


def store_settings(storage_config, kwargs=None) -> dict:
    """The kvtier settings for an engine's storage_config (and the dynamic loader's kwargs)."""
    extra = dict(_get(storage_config, "extra_config") or {})
    extra.update(kwargs or {})
    settings = {}
    for key, value in extra.items():
        if key in ENGINE_KEYS:
            continue
        k = key.lower().removeprefix("kvtier_")
        k = ALIASES.get(k, k)
        settings[k] = value  # Store refuses ';', '=' and newlines in names and values
    settings["namespace"] = namespace_for(storage_config, str(settings.get("namespace", "")))
    return settings


# ---- buffers and dtypes ------------------------------------------------------------------------

def _is_tensor(t) -> bool:
    return hasattr(t, "data_ptr") and hasattr(t, "element_size")


def _is_array(t) -> bool:
    return hasattr(t, "__array_interface__") and hasattr(t, "nbytes")


def _itemsize(dtype) -> int:
    """Bytes per element of a torch or numpy dtype (torch.dtype.itemsize is torch >= 2.1)."""
    size = getattr(dtype, "itemsize", None)
    if size:
        return int(size)
    import torch

    return torch.empty(0, dtype=dtype).element_size()


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _span(t):
    """(first byte, bytes) of the whole allocation behind a tensor or array, or None."""
    if _is_tensor(t):
        storage = t.untyped_storage() if hasattr(t, "untyped_storage") else t.storage()
        nbytes = storage.nbytes() if callable(getattr(storage, "nbytes", None)) else \
            storage.size() * t.element_size()
        return storage.data_ptr(), int(nbytes)
    if _is_array(t):
        while getattr(t, "base", None) is not None and _is_array(t.base):
            t = t.base
        return t.__array_interface__["data"][0], t.nbytes
    return None


def _buffers_of(pool):
    """The tensors and arrays a host pool holds (its attributes, and lists of them)."""
    for value in list(vars(pool).values()):
        items = value if isinstance(value, (list, tuple)) else [value]
        for t in items:
            if _is_tensor(t) or _is_array(t):
                yield t


def _indices(like, values):
    """int64 slot indices of the kind the pool works with (torch when its buffer is torch)."""
    import numpy as np

    arr = np.asarray(values, dtype=np.int64)
    if _is_tensor(like):
        import torch

        return torch.from_numpy(arr)
    return arr


class _Regions:
    """The engine memory registered with the store: unions of the pools' allocations (the
    store refuses overlapping regions, and pools may share an allocation)."""

    def __init__(self, store: Store):
        self.store = store
        self.spans: Dict[int, int] = {}  # start -> end, disjoint

    def add(self, spans) -> None:
        for start, n in spans:
            end = start + n
            merged = [s for s, e in self.spans.items() if s < end and start < e]
            for s in merged:
                start, end = min(start, s), max(end, self.spans[s])
            if len(merged) == 1 and (start, end) == (merged[0], self.spans[merged[0]]):
                continue  # already inside one registered region
            for s in merged:
                self.store.unregister_buffer(s)
                del self.spans[s]
            self.store.register_buffer(start, end - start)
            self.spans[start] = end

    def clear(self) -> None:
        for s in list(self.spans):
            try:
                self.store.unregister_buffer(s)
            except KvtierError:
                pass
        self.spans.clear()


# ---- one host pool -----------------------------------------------------------------------------

class _Pool:
    """A host pool and the store view that holds its pages. Data moves by the first of:
    native  - kvtier computes each page's fragments from the pool's layout (one C call);
    meta    - the pool's own get_page_buffer_meta (one call per batch), zero-copy;
    flat    - the pool's get_data_page / set_from_flat_data_page, copying (pools with neither).
    The view's page format names the pool's byte layout, so another format reads as misses."""

    def __init__(self, name: str, pool, view: Store, regions: _Regions, is_mla: bool):
        self.name, self.pool, self.view = name, pool, view
        self.page_size = int(getattr(pool, "page_size", 1) or 1)
        self.mode = None
        dtype = getattr(pool, "dtype", None)
        self.dtype = _dtype_name(dtype) if dtype is not None else "?"
        self.desc = ""  # the page format in words, also for the generic path's formats
        self.flat_same = False  # the engine's flat page holds the v1 value's bytes in order
        layout = getattr(pool, "layout", "?")
        native = self._native_dims(is_mla)
        if native is not None:
            regions.add([_span(pool.kv_buffer)])
            view.register_layout(**native)
            if self._native_matches_meta():
                self.mode = "native"
                self.desc = "native/" + "/".join(f"{k}={v}" for k, v in sorted(native.items())
                                                 if k != "base" and k != "pool_tokens")
        if self.mode is None and callable(getattr(pool, "get_page_buffer_meta", None)):
            regions.add(_span(t) for t in _buffers_of(pool))
            sizes = [int(x) for x in pool.get_page_buffer_meta(self._first_page())[1]]
            self.desc = (f"meta/{type(pool).__name__}/{self.dtype}/{layout}/P={self.page_size}/"
                         f"{sizes}")
            view.set_page_format(self.desc)
            self.mode = "meta"
        elif self.mode is None and callable(getattr(pool, "get_data_page", None)) and \
                callable(getattr(pool, "set_from_flat_data_page", None)):
            page = pool.get_data_page(0, flat=True)
            self.desc = f"flat/{type(pool).__name__}/{self.dtype}/{layout}/{_nbytes(page)}"
            view.set_page_format(self.desc)
            self.mode = "flat"
        self.flat_same = self.mode == "flat" or (self.mode is not None and self._flat_is_v1())
        logger.info("kvtier: pool %r (%s) moves pages by the %s path", name, type(pool).__name__,
                    self.mode or "no")

    def _native_dims(self, is_mla: bool) -> Optional[dict]:
        """The layout kvtier can compute fragments from, or None if the pool lacks a piece."""
        p = self.pool
        try:
            buf, layout = p.kv_buffer, p.layout
            if layout not in LAYOUTS or not (_is_tensor(buf) or _is_array(buf)):
                return None
            mla = hasattr(p, "kv_lora_rank") or (is_mla and not hasattr(p, "head_num"))
            dims = dict(base=buf.data_ptr() if _is_tensor(buf) else buf.__array_interface__[
                "data"][0], mla=mla, layout=layout, page_size=int(p.page_size),
                layer_num=int(p.layer_num), dtype_size=_itemsize(p.dtype),
                pool_tokens=int(p.size), dtype_name=_dtype_name(p.dtype))
            if mla:
                dims["kv_cache_dim"] = int(getattr(p, "kv_cache_dim", 0) or
                                           p.kv_lora_rank + p.qk_rope_head_dim)
            else:
                dims["head_num"], dims["head_dim"] = int(p.head_num), int(p.head_dim)
            return dims
        except (AttributeError, TypeError, ValueError):
            return None

    def _first_page(self):
        return _indices(self.pool.kv_buffer, range(self.page_size))

    def _flat_is_v1(self) -> bool:
        """Whether the engine's flat page (get_data_page) is the v1 value byte for byte: then
        the generic and the v1 paths share one page format (checked on the pool's first page)."""
        import ctypes

        get_page = getattr(self.pool, "get_data_page", None)
        if not callable(get_page):
            return False
        try:
            flat = get_page(0, flat=True)
            addr = flat.data_ptr() if _is_tensor(flat) else flat.__array_interface__["data"][0]
            if self.mode == "native":
                ptrs, sizes = self.view.page_buffer_meta(self._first_page())
            else:
                ptrs, sizes = self.pool.get_page_buffer_meta(self._first_page())
            value = b"".join(ctypes.string_at(int(p), int(n)) for p, n in zip(ptrs, sizes))
            return len(value) == _nbytes(flat) and ctypes.string_at(addr, len(value)) == value
        except Exception:  # noqa: BLE001 - unknown means "not the same"
            return False

    def _sample_slots(self):
        """Token slots of the first, a middle and the last page of the pool."""
        pages = max(int(getattr(self.pool, "size", self.page_size)) // self.page_size, 1)
        picks = sorted({0, pages // 2, pages - 1})
        return _indices(self.pool.kv_buffer, [p * self.page_size + t for p in picks
                                              for t in range(self.page_size)])

    def _native_matches_meta(self) -> bool:
        """The pool's own get_page_buffer_meta is the truth; kvtier's must match it exactly."""
        meta = getattr(self.pool, "get_page_buffer_meta", None)
        if not callable(meta):
            return True  # nothing to check against: the documented layout it claims
        slots = self._sample_slots()
        try:
            ptrs, sizes = meta(slots)
        except Exception as e:  # noqa: BLE001 - a pool whose meta fails takes another path
            logger.warning("kvtier: pool %r: get_page_buffer_meta failed: %s", self.name, e)
            return False
        mine = self.view.page_buffer_meta(slots)
        theirs = ([int(x) for x in ptrs], [int(x) for x in sizes])
        if mine != theirs:
            logger.warning("kvtier: pool %r: its get_page_buffer_meta differs from the %s "
                           "layout kvtier computes; using the pool's", self.name,
                           self.pool.layout)
            return False
        return True

    # -- data paths: each returns one code per key (0 = done) --------------------------------
    def io(self, keys: List[str], host_indices, write: bool) -> List[int]:
        if self.mode == "native":
            call = self.view.batch_set_v1_slots if write else self.view.batch_get_v1_slots
            return call(keys, host_indices)
        if len(host_indices) < len(keys) * self.page_size:
            raise KvtierError(-2, f"{len(host_indices)} host indices for {len(keys)} pages of "
                                  f"{self.page_size}")
        if self.mode == "meta":
            import numpy as np

            ptrs, sizes = self.pool.get_page_buffer_meta(host_indices)
            ptrs, sizes = np.asarray(ptrs, dtype=np.uint64), np.asarray(sizes, dtype=np.uint64)
            call = self.view.batch_set_v1 if write else self.view.batch_get_v1
            return call(keys, ptrs, sizes)
        if self.mode == "flat":
            return self._flat_io(keys, host_indices, write)
        raise KvtierError(-14, f"pool {self.name!r} offers no way to reach its pages")

    def _flat_io(self, keys, host_indices, write) -> List[int]:
        starts = [int(host_indices[i * self.page_size]) for i in range(len(keys))]
        if write:
            pages = [self.pool.get_data_page(s, flat=True) for s in starts]
            return self.view.batch_set(keys, [p.contiguous() for p in pages])
        pages = [self.pool.get_dummy_flat_data_page() for _ in keys]
        got = self.view.batch_get(keys, pages)
        out = []
        for s, page, r in zip(starts, pages, got):
            if r == _nbytes(page):
                self.pool.set_from_flat_data_page(s, page)
                r = 0
            out.append(r if r < 0 else -6)
        return out

    def close(self) -> None:
        self.view.close()


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if _is_tensor(t) else t.nbytes


def _never_raise(default):
    """Engine-facing methods: an exception becomes a log line and a safe result."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except Exception as e:  # noqa: BLE001 - the engine's threads must never see one
                logger.warning("kvtier: %s failed: %s: %s", fn.__name__, type(e).__name__, e)
                return default(self, *args, **kwargs)

        return inner

    return wrap


def _falses(keys):
    return [False] * len(keys or [])


class KvtierStorage(_Base):
    """HiCache L3 storage on kvtier: zero-copy v1/v2 calls on the engine's host pools."""

    def __init__(self, storage_config=None, kwargs: Optional[dict] = None):
        self.storage_config = storage_config
        self.is_mla = bool(_get(storage_config, "is_mla_model", False))
        # MLA pages are the same on every TP rank: rank 0 writes them and every rank reads them
        # from the one shared namespace. SGLang's cache controller already skips the backup on
        # the other ranks (backup_skip) and acknowledges it; this does the same for a caller
        # that does not, so a page is never written once per rank.
        self.writes = not (self.is_mla and int(_get(storage_config, "tp_rank", 0) or 0) != 0)
        # The engine moves KV pages by v1 (interface_v1 set) or by the generic path.
        self._v1 = bool((_get(storage_config, "extra_config") or {}).get("interface_v1"))
        self.settings = store_settings(storage_config, kwargs)
        self.store = Store(self.settings)
        self._regions = _Regions(self.store)
        self._pools: Dict[str, _Pool] = {}
        self._flat_views: Dict[str, Store] = {}  # generic path: page format -> view
        self._lock = threading.Lock()
        self.mem_pool_host = None
        self.registered_pools: Dict[str, Any] = {}
        logger.info("kvtier %s storage: %s", type(self).__name__, self.settings)

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
            old = self._pools.pop(name, None)
            if old is not None:
                old.close()
            view = self.store.view()
            try:
                self._pools[name] = _Pool(name, pool, view, self._regions, self.is_mla)
            except Exception as e:  # noqa: BLE001 - a pool kvtier cannot use gives misses
                view.close()
                logger.error("kvtier: cannot use pool %r (%s): %s: %s; its calls will fail",
                             name, type(pool).__name__, type(e).__name__, e)

    def _pool(self, name: str) -> _Pool:
        pool = self._pools.get(name)
        if pool is None:
            raise KvtierError(-15, f"no host pool named {name!r} is registered")
        return pool

    # -- zero-copy (interface_v1) ---------------------------------------------------------
    def _io(self, name: str, keys: List[str], host_indices, write: bool) -> List[bool]:
        if not keys:
            return []
        results = self._pool(name).io(list(keys), host_indices, write)
        bad = [(i, r) for i, r in enumerate(results) if r not in (0, -1)]
        if bad:
            logger.warning("kvtier: %s %r: %d of %d keys failed, first key %d: %s",
                           "set" if write else "get", name, len(bad), len(keys), bad[0][0],
                           KvtierError(bad[0][1]).name)
        return [r == 0 for r in results]

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
                    raise KvtierError(-2, "transfer has no host_indices")
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
    def _flat_view(self, key: str) -> Store:
        """The view for a flat page under `key`. KV pages share the KV pool's view when its
        flat page is the v1 value; otherwise flat pages have a format of their own, named by the
        pool (`<hash>.draft`: the suffix; the pool registered under that name if any, else the
        KV pool) — their sizes are checked on every get."""
        suffix = key.rpartition(".")[2] if "." in key else KV
        kv = self._pools.get(KV)
        if suffix == KV and kv is not None and kv.flat_same:
            return kv.view
        owner = self._pools.get(suffix) or kv
        fmt = f"flat/{suffix}/{owner.desc if owner is not None else ''}"
        view = self._flat_views.get(fmt)
        if view is None:
            with self._lock:
                view = self._flat_views.get(fmt)
                if view is None:
                    view = self.store.view()
                    view.set_page_format(fmt)
                    self._flat_views[fmt] = view
        return view

    def _grouped(self, keys, values, op, view_of=None) -> List[int]:
        """One native batch per view in the call (usually one)."""
        groups: Dict[int, Any] = {}
        for i, k in enumerate(keys):
            view = (view_of or self._flat_view)(k)
            groups.setdefault(id(view), (view, []))[1].append(i)
        results = [0] * len(keys)
        for view, idx in groups.values():
            batch = op(view, [keys[i] for i in idx], [values[i] for i in idx])
            for i, r in zip(idx, batch):
                results[i] = r
        return results

    @_never_raise(lambda self, *a, **k: False)
    def batch_set(self, keys: List[str], values=None, target_locations=None,
                  target_sizes=None) -> bool:
        values = values if values is not None else target_locations
        if not keys or values is None or len(values) != len(keys):
            return False
        if not self.writes:
            return True  # rank 0 writes this page (see __init__)
        return all(r == 0 for r in self._grouped(keys, values, Store.batch_set))

    @_never_raise(lambda self, *a, **k: False)
    def set(self, key: str, value=None, target_location=None, target_sizes=None) -> bool:
        return self.batch_set([key], [value if value is not None else target_location])

    @_never_raise(lambda self, keys, *a, **k: [None] * len(keys or []))
    def batch_get(self, keys: List[str], target_locations=None, target_sizes=None) -> List[Any]:
        """Fills each target (a flat page tensor) with exactly its bytes; returns it, or None."""
        if not keys or target_locations is None or len(target_locations) != len(keys):
            return [None] * len(keys or [])
        results = self._grouped(keys, target_locations, Store.batch_get)
        return [t if r == _nbytes(t) else None for t, r in zip(target_locations, results)]

    @_never_raise(lambda self, *a, **k: None)
    def get(self, key: str, target_location=None, target_sizes=None):
        return self.batch_get([key], [target_location])[0]

    @_never_raise(lambda self, *a, **k: 0)
    def batch_exists(self, keys: List[str], extra_info=None) -> int:
        """The leading run of keys present, in the path the engine stores KV pages by."""
        if not keys:
            return 0
        if any("." in k for k in keys):  # pages of other pools too: each view answers its own
            present = self._grouped(keys, keys, lambda v, ks, _: v.batch_exists_each(ks),
                                    self._exists_view)
            return next((i for i, r in enumerate(present) if r != 0), len(keys))
        return self._exists_view(keys[0]).batch_exists(list(keys))

    def _exists_view(self, key: str) -> Store:
        if "." not in key and self._v1 and KV in self._pools:
            return self._pools[KV].view
        return self._flat_view(key)

    @_never_raise(lambda self, *a, **k: False)
    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    @_never_raise(lambda self, *a, **k: None)
    def clear(self) -> None:
        self.store.clear()

    @_never_raise(lambda self, *a, **k: {})
    def get_stats(self):
        """kvtier_stats_json as a dict: per tier keys, bytes, capacity, hits, misses, evictions,
        errors; a remote tier adds its servers' own counters (servers, server_hits,
        server_misses, leases, connections)."""
        return self.store.stats()

    @_never_raise(lambda self, *a, **k: None)
    def close(self) -> None:
        """Releases everything: pools' views, registered memory, the store (file-tier lock,
        threads, sockets). The engine may attach a new instance afterwards."""
        with self._lock:
            for pool in self._pools.values():
                pool.close()
            for view in self._flat_views.values():
                view.close()
            self._pools.clear()
            self._flat_views.clear()
            if not self.store.closed:
                self._regions.clear()
            self.store.close()
