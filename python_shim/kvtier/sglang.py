"""SGLang HiCache storage backend over kvtier.

Start SGLang with:
    --hicache-storage-backend dynamic
    --hicache-storage-backend-extra-config '{"backend_name": "kvtier",
        "module_path": "kvtier.sglang", "class_name": "KvtierStorage", "interface_v1": 1,
        "tiers": "memory", "memory_capacity": "64GiB"}'

Every extra_config key other than the engine's own is a kvtier setting (a KVTIER_* variable
without the prefix, any case) and goes to the store, which refuses unknown ones by name.
"""

import logging
import threading
from typing import Any, List, Optional

from .errors import KvtierError
from .store import Store

logger = logging.getLogger("kvtier.sglang")

try:  # a real subclass when SGLang is importable, the same methods without it
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage as _Base
except Exception:  # noqa: BLE001 - any import failure means "no SGLang here"
    _Base = object

# extra_config keys that belong to SGLang's dynamic-backend loader, not to kvtier.
ENGINE_KEYS = {"backend_name", "module_path", "class_name", "interface_v1"}


def _get(cfg, name, default=None):
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def store_settings(storage_config, kwargs=None) -> dict:
    """The kvtier settings for an engine's storage_config (and the dynamic loader's kwargs)."""
    extra = dict(_get(storage_config, "extra_config") or {})
    extra.update(kwargs or {})
    settings = {}
    for key, value in extra.items():
        if key in ENGINE_KEYS:
            continue
        k = key.lower().removeprefix("kvtier_")
        if any(c in str(value) for c in ";\n") or any(c in k for c in "=;\n"):
            raise KvtierError(-7, f"extra_config {key!r}: ';', '=' and newlines are not allowed")
        settings[k] = value
    # Keys are per model; MHA pages differ per TP rank, MLA pages are the same on every rank.
    model = (_get(storage_config, "model_name") or "").replace("/", "-")
    ns = [settings.get("namespace", ""), model]
    if not _get(storage_config, "is_mla_model", False):
        ns.append(f"tp{_get(storage_config, 'tp_rank', 0)}of{_get(storage_config, 'tp_size', 1)}")
    settings["namespace"] = "/".join(p for p in ns if p)
    return settings


def _data_ptr(t) -> int:
    return t.data_ptr() if hasattr(t, "data_ptr") else t.__array_interface__["data"][0]


def _nbytes(t) -> int:
    if hasattr(t, "element_size"):
        return t.numel() * t.element_size()
    return t.nbytes


class KvtierStorage(_Base):
    """HiCache L3 storage on kvtier: zero-copy v1 calls on the engine's host pool."""

    def __init__(self, storage_config=None, kwargs: Optional[dict] = None):
        self.storage_config = storage_config
        self.is_mla = bool(_get(storage_config, "is_mla_model", False))
        self.settings = store_settings(storage_config, kwargs)
        self.store = Store(self.settings)
        self.mem_pool_host = None
        self._lock = threading.Lock()
        logger.info("kvtier %s storage: %s", type(self).__name__, self.settings)

    # -- host pool ------------------------------------------------------------------------
    def register_mem_pool_host(self, mem_pool_host) -> None:
        """Reads the pool's buffer, layout and dims once; registers the buffer and the layout."""
        pool = mem_pool_host
        buf = pool.kv_buffer
        base, nbytes = _data_ptr(buf), _nbytes(buf)
        mla = self.is_mla or hasattr(pool, "kv_lora_rank")
        itemsize = pool.dtype.itemsize
        dims = dict(page_size=pool.page_size, layer_num=pool.layer_num, dtype_size=itemsize,
                    pool_tokens=pool.size)
        if mla:
            dims["kv_cache_dim"] = pool.kv_lora_rank + pool.qk_rope_head_dim
        else:
            dims["head_num"], dims["head_dim"] = pool.head_num, pool.head_dim
        with self._lock:
            if self.mem_pool_host is not None:
                self.store.unregister_buffer(_data_ptr(self.mem_pool_host.kv_buffer))
            self.store.register_buffer(base, nbytes)
            self.store.register_layout(base, mla=mla, layout=pool.layout, **dims)
            self.mem_pool_host = pool
            self.is_mla = mla

    # -- zero-copy (interface_v1) ---------------------------------------------------------
    def _v1(self, call, keys, host_indices) -> List[bool]:
        if not keys:
            return []
        try:
            results = call(keys, host_indices)
        except Exception as e:  # noqa: BLE001 - the engine's threads must never see one
            logger.warning("kvtier: %s of %d keys failed: %s", call.__name__, len(keys), e)
            return [False] * len(keys)
        ok = [r == 0 for r in results]
        if not all(ok):
            bad = [(i, r) for i, r in enumerate(results) if r != 0 and r != -1]
            if bad:
                logger.warning("kvtier: %s: %d of %d keys failed, first key %d: %s",
                               call.__name__, len(bad), len(keys), bad[0][0],
                               KvtierError(bad[0][1]).name)
        return ok

    def batch_set_v1(self, keys: List[str], host_indices, extra_info=None) -> List[bool]:
        return self._v1(self.store.batch_set_v1_slots, keys, host_indices)

    def batch_get_v1(self, keys: List[str], host_indices, extra_info=None) -> List[bool]:
        return self._v1(self.store.batch_get_v1_slots, keys, host_indices)

    # -- generic path: flat page tensors --------------------------------------------------
    def batch_exists(self, keys: List[str], extra_info=None) -> int:
        try:
            return self.store.batch_exists(keys)
        except KvtierError as e:
            logger.warning("kvtier: batch_exists failed: %s", e)
            return 0

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    def batch_set(self, keys: List[str], values=None, target_locations=None,
                  target_sizes=None) -> bool:
        values = values if values is not None else target_locations
        if not keys or values is None or len(values) != len(keys):
            return False
        try:
            return all(r == 0 for r in self.store.batch_set(keys, values))
        except (KvtierError, TypeError, ValueError) as e:
            logger.warning("kvtier: batch_set failed: %s", e)
            return False

    def set(self, key: str, value=None, target_location=None, target_sizes=None) -> bool:
        return self.batch_set([key], [value if value is not None else target_location])

    def batch_get(self, keys: List[str], target_locations=None, target_sizes=None) -> List[Any]:
        """Fills each target (a flat page tensor); returns it, or None for a miss."""
        if not keys or target_locations is None or len(target_locations) != len(keys):
            return [None] * len(keys or [])
        try:
            results = self.store.batch_get(keys, target_locations)
        except (KvtierError, TypeError, ValueError) as e:
            logger.warning("kvtier: batch_get failed: %s", e)
            return [None] * len(keys)
        return [t if r >= 0 else None for t, r in zip(target_locations, results)]

    def get(self, key: str, target_location=None, target_sizes=None):
        return self.batch_get([key], [target_location])[0]

    def clear(self) -> None:
        self.store.clear()

    def get_stats(self):
        return self.store.stats()

    def close(self) -> None:
        self.store.close()
