"""kvtier as an LMCache remote storage plugin: `remote_url: kvtier://...` puts LMCache's chunks
in kvtier's tiers. LMCache's configuration loads it, with no change to LMCache:

    remote_url: "kvtier://?tiers=memory,file&file_dir=/nvme/kvtier"
    remote_storage_plugins: ["kvtier"]
    extra_config:
      remote_storage_plugin.kvtier.module_path: kvtier.lmcache
      remote_storage_plugin.kvtier.class_name: KvtierConnectorAdapter

The URL's query holds kvtier settings without the `KVTIER_` prefix; `kvtier://h1:p1,h2:p2`
names kvtier-servers (remote_servers), and then the remote tier is used unless `tiers` says
otherwise. Every setting may also come from the environment as usual.

LMCache's coroutines share one event loop, so nothing here blocks it: puts, gets and exists
are kvtier's asynchronous batches, completed through the store's eventfd on that loop. A put
has stored (or copied) the chunk's bytes when it returns, so the caller may free it at once.
A get allocates through LMCache's own allocator and reads straight into the new object.

A chunk is two kvtier keys: `<key>` holds its bytes, `<key>#meta` its shape, dtype and memory
format (when LMCache saves chunk metadata; otherwise the configured full-chunk shape is used).
The key is LMCache's own string, which carries the model, world size, worker and chunk hash.
"""

import asyncio
import json
import logging
import threading
from typing import Dict, List, Optional
from urllib.parse import parse_qsl, urlparse

import numpy as np

from . import errors as codes
from .store import Store

logger = logging.getLogger("kvtier.lmcache")

try:  # LMCache's own classes where LMCache is installed
    from lmcache.v1.storage_backend.connector import ConnectorAdapter, ConnectorContext
    from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector
except ImportError:  # pragma: no cover - importable without LMCache
    ConnectorAdapter = RemoteConnector = object
    ConnectorContext = None

SCHEME = "kvtier://"
META = "#meta"
META_BYTES = 512  # a chunk's metadata, padded: read back whole by an exact-size get


def settings_from_url(url: str) -> dict:
    """kvtier settings from a kvtier:// URL (see the module's docstring)."""
    if not url.startswith(SCHEME):
        raise ValueError(f"not a kvtier URL: {url!r}")
    rest = url[len(SCHEME):]
    parsed = urlparse("//" + rest)
    settings = dict(parse_qsl(parsed.query, keep_blank_values=False))
    servers = parsed.netloc.strip()
    if servers:
        settings.setdefault("remote_servers", servers)
        settings.setdefault("tiers", "memory,remote")
    return settings


def _address(view) -> int:
    return np.frombuffer(view, dtype=np.uint8).ctypes.data


def _meta_of(memory_obj, nbytes: int) -> np.ndarray:
    fmt = memory_obj.get_memory_format()
    text = json.dumps({"bytes": nbytes, "shape": list(memory_obj.get_shape()),
                       "dtype": str(memory_obj.get_dtype()).replace("torch.", ""),
                       "fmt": getattr(fmt, "name", str(fmt))}).encode()
    if len(text) > META_BYTES:
        raise ValueError(f"chunk metadata of {len(text)} bytes")
    return np.frombuffer(text.ljust(META_BYTES), dtype=np.uint8).copy()


class KvtierConnector(RemoteConnector):
    """LMCache's RemoteConnector on a kvtier store (see the module's docstring)."""

    # LMCache's defaults (its base class has them; init_chunk_meta may change them).
    save_chunk_meta = True
    meta_shape = meta_dtype = meta_fmt = full_chunk_size = None

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop, local_cpu_backend,
                 config=None, metadata=None):
        self.url = url
        self.loop = loop
        self.local_cpu_backend = local_cpu_backend
        settings = settings_from_url(url)
        extra = getattr(config, "extra_config", None) or {}
        for k, v in extra.items():  # extra_config: kvtier.<setting>
            if isinstance(k, str) and k.startswith("kvtier."):
                settings.setdefault(k[len("kvtier."):], v)
        model = str(getattr(metadata, "model_name", "") or "")
        settings.setdefault("namespace", "lmcache/" + model.replace("/", "-"))
        self._store = Store(settings)
        self._waiting: Dict[int, asyncio.Future] = {}
        self._lock = threading.Lock()
        self._mine: set = set()  # keys put through this connector (list())
        # Memory the requests in flight read or write, registered while they run (kvtier's
        # zero-copy calls move bytes only in registered memory): address -> [length, users].
        self._regions: Dict[int, list] = {}
        self._fd = self._store.fileno()
        self._reading = False
        if hasattr(RemoteConnector, "init_chunk_meta"):
            try:
                self.init_chunk_meta(config, metadata)
            except Exception as e:  # a configuration LMCache itself would refuse
                logger.debug("kvtier: init_chunk_meta: %s", e)

    # -- completions on the event loop ----------------------------------------------------
    def _on_readable(self) -> None:
        for c in self._store.drain(256, 0):
            fut = self._waiting.pop(c.id, None)
            if fut is not None and not fut.done():
                fut.set_result(c)
        if not self._waiting and self._reading:
            self.loop.remove_reader(self._fd)
            self._reading = False

    def _hold(self, ranges) -> None:
        for addr, n in ranges:
            held = self._regions.get(addr)
            if held is None:
                self._store.register_buffer(addr, n)
                self._regions[addr] = [n, 1]
            else:
                held[1] += 1

    def _release(self, ranges) -> None:
        for addr, _ in ranges:
            held = self._regions[addr]
            held[1] -= 1
            if held[1] == 0:
                del self._regions[addr]
                self._store.unregister_buffer(addr)

    async def _run(self, submit, keys, ptrs, sizes):
        """Submits a zero-copy request over (ptrs, sizes), on this loop's thread, and waits for
        its completion without blocking the loop. The memory is registered while it runs."""
        ranges = list(dict.fromkeys(zip(ptrs.tolist(), sizes.tolist())))
        self._hold(ranges)
        try:
            return await self._complete(submit(keys, ptrs, sizes))
        finally:
            self._release(ranges)

    async def _complete(self, rid: int):
        fut = self.loop.create_future()
        self._waiting[rid] = fut
        if not self._reading:
            self.loop.add_reader(self._fd, self._on_readable)
            self._reading = True
        self._on_readable()  # it may have completed already
        return await fut

    # -- the interface ----------------------------------------------------------------------
    async def exists(self, key) -> bool:
        c = await self._complete(self._store.submit_exists([key.to_string()]))
        return c.status == codes.OK and c.results == [codes.OK]

    def exists_sync(self, key) -> bool:
        return self._store.batch_exists_each([key.to_string()]) == [codes.OK]

    def support_batched_contains(self) -> bool:
        return True

    def batched_contains(self, keys, stop_after_first_not_exits: bool = True) -> List[bool]:
        found = [r == codes.OK for r in self._store.batch_exists_each(
            [k.to_string() for k in keys])]
        if stop_after_first_not_exits and False in found:
            first = found.index(False)
            found = found[:first] + [False] * (len(found) - first)
        return found

    def support_batched_async_contains(self) -> bool:
        return True

    async def batched_async_contains(self, lookup_id: str, keys, pin: bool = False) -> int:
        """How many keys, from the first, are present."""
        if not keys:
            return 0
        c = await self._complete(self._store.submit_exists([k.to_string() for k in keys]))
        n = 0
        for r in c.results:
            if r != codes.OK:
                break
            n += 1
        return n

    async def put(self, key, memory_obj) -> None:
        await self.batched_put([key], [memory_obj])

    def support_batched_put(self) -> bool:
        return True

    async def batched_put(self, keys, memory_objs) -> None:
        """Stores every chunk (and its metadata) in one request; the bytes are in kvtier when
        this returns."""
        names, ptrs, sizes, metas = [], [], [], []
        for key, obj in zip(keys, memory_objs):
            view = obj.byte_array
            names.append(key.to_string())
            ptrs.append(_address(view))
            sizes.append(len(view))
            if self.save_chunk_meta:
                metas.append(_meta_of(obj, len(view)))
        every = names + [n + META for n in names[:len(metas)]]
        ptrs += [m.ctypes.data for m in metas]
        sizes += [META_BYTES] * len(metas)
        c = await self._run(self._store.submit_set_v1, every, np.array(ptrs, dtype=np.uint64),
                            np.array(sizes, dtype=np.uint64))
        del metas  # copied by the store once the request completed
        for name, r in zip(names, c.results):
            if r == codes.OK:
                self._mine.add(name)
            else:
                logger.warning("kvtier: put of %s failed: %d", name, r)

    async def get(self, key):
        [obj] = await self.batched_get([key])
        return obj

    def support_batched_get(self) -> bool:
        return True

    async def _sizes(self, names):
        """Per chunk: (shape, dtype, format, bytes) from its metadata, or None (a miss)."""
        if not self.save_chunk_meta:
            return [(self.meta_shape, self.meta_dtype, self.meta_fmt, self.full_chunk_size)] * len(
                names)
        buf = np.zeros((len(names), META_BYTES), dtype=np.uint8)
        ptrs = buf.ctypes.data + np.arange(len(names), dtype=np.uint64) * np.uint64(META_BYTES)
        c = await self._run(self._store.submit_get_v1, [n + META for n in names],
                            np.asarray(ptrs, dtype=np.uint64),
                            np.full(len(names), META_BYTES, np.uint64))
        out = []
        for row, r in zip(buf, c.results):
            if r != codes.OK:
                out.append(None)
                continue
            meta = json.loads(bytes(row).rstrip())
            out.append((tuple(meta["shape"]), _dtype(meta["dtype"]), _fmt(meta["fmt"]),
                        int(meta["bytes"])))
        return out

    async def batched_get(self, keys) -> List[Optional[object]]:
        """Each chunk in a new object from LMCache's allocator, or None (a miss)."""
        names = [k.to_string() for k in keys]
        objs, ptrs, sizes = [], [], []
        try:
            sizes_of = await self._sizes(names)
        except Exception as e:  # the store refused the request (closed, queue full): misses
            logger.warning("kvtier: get of %d chunks: %s", len(names), e)
            return [None] * len(keys)
        for name, found in zip(names, sizes_of):
            obj = None
            if found is not None:
                shape, dtype, fmt, nbytes = found
                obj = self.local_cpu_backend.allocate(shape, dtype, fmt)
                if obj is not None and len(obj.byte_array) < nbytes:
                    obj.ref_count_down()
                    obj = None
            objs.append(obj)
            if obj is not None:
                ptrs.append(_address(obj.byte_array))
                sizes.append(nbytes)
        wanted = [n for n, o in zip(names, objs) if o is not None]
        results = []
        if wanted:
            try:
                c = await self._run(self._store.submit_get_v1, wanted,
                                    np.array(ptrs, dtype=np.uint64),
                                    np.array(sizes, dtype=np.uint64))
                results = c.results
            except Exception as e:
                logger.warning("kvtier: get of %d chunks: %s", len(wanted), e)
                results = [codes.NOT_FOUND] * len(wanted)
        results = iter(results)
        out = []
        for obj in objs:
            if obj is not None and next(results) != codes.OK:
                obj.ref_count_down()
                obj = None
            out.append(obj)
        return out

    def remove_sync(self, key) -> bool:
        name = key.to_string()
        self._mine.discard(name)
        return self._store.remove([name, name + META])[0] == codes.OK

    async def list(self) -> List[str]:
        """The keys this connector stored that are still there: kvtier keeps hashes of keys,
        not their names, so it cannot list what other processes stored."""
        mine = sorted(self._mine)
        if not mine:
            return []
        c = await self._complete(self._store.submit_exists(mine))
        return [k for k, r in zip(mine, c.results) if r == codes.OK]

    async def close(self) -> None:
        if self._reading:
            self.loop.remove_reader(self._fd)
            self._reading = False
        self._store.close()


def _dtype(name: str):
    try:
        import torch
        return getattr(torch, name)
    except (ImportError, AttributeError):
        return name


def _fmt(name):
    try:
        from lmcache.v1.memory_management import MemoryFormat
        return MemoryFormat[name]
    except (ImportError, KeyError):
        return name


class KvtierConnectorAdapter(ConnectorAdapter):
    """LMCache's adapter for kvtier:// URLs."""

    def __init__(self) -> None:
        if ConnectorAdapter is not object:
            super().__init__(SCHEME)
        self.schema = SCHEME

    def can_parse(self, url: str) -> bool:
        return url.startswith(SCHEME)

    def create_connector(self, context) -> "KvtierConnector":
        return KvtierConnector(context.url, context.loop, context.local_cpu_backend,
                               getattr(context, "config", None),
                               getattr(context, "metadata", None))
