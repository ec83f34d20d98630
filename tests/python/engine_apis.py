"""vLLM's and LMCache's plug-in interfaces, reproduced from their upstream source where the
engine is not installed (the tests and bench/python_bench.py install them as modules before
importing kvtier's plug-ins). What each follows, file and commit, is said in the tests that use
them: test_vllm.py and test_lmcache.py.
"""

import abc
import enum
import importlib
import sys
import types
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np


# ---- vLLM's interface, as upstream defines it -----------------------------------------------
class LookupResult(enum.Enum):
    MISS = enum.auto()
    HIT = enum.auto()
    HIT_PENDING = enum.auto()
    RETRY = enum.auto()


@dataclass
class RequestOffloadingContext:
    policy: str = "chunk_level"


@dataclass
class ReqContext:
    req_id: str
    kv_transfer_params: Optional[dict] = None


@dataclass
class TransferJob:
    job_id: int
    keys: Any
    chunk_ids: np.ndarray
    is_promotion: bool
    req_context: ReqContext


@dataclass
class JobResult:
    job_id: int
    success: bool


class SecondaryTierManager(ABC):
    def __init__(self, offloading_spec, primary_kv_view: memoryview, tier_type: str):
        self._offloading_spec = offloading_spec
        self._primary_kv_view = primary_kv_view
        self.tier_type = tier_type

    @abstractmethod
    def on_new_request(self, req_context): ...

    @abstractmethod
    def lookup(self, key, req_context): ...

    @abstractmethod
    def submit_store(self, job): ...

    @abstractmethod
    def submit_load(self, job): ...

    @abstractmethod
    def get_finished_jobs(self): ...

    @abstractmethod
    def drain_jobs(self): ...

    @abstractmethod
    def has_pending_work(self): ...


def create_secondary_tier(tier_config: dict, primary_kv_view, offloading_spec):
    """The factory's out-of-tree path: import module_path, take the class named by type."""
    config = dict(tier_config)
    tier_type = config.pop("type")
    module = importlib.import_module(config.pop("module_path"))
    cls = getattr(module, tier_type)
    assert issubclass(cls, SecondaryTierManager)
    return cls(offloading_spec=offloading_spec, primary_kv_view=primary_kv_view,
               tier_type=tier_type, **config)


def _install_vllm():
    mods = {name: types.ModuleType(name) for name in (
        "vllm", "vllm.v1", "vllm.v1.kv_offload", "vllm.v1.kv_offload.base",
        "vllm.v1.kv_offload.tiering", "vllm.v1.kv_offload.tiering.base")}
    base = mods["vllm.v1.kv_offload.base"]
    base.LookupResult, base.RequestOffloadingContext, base.ReqContext = (
        LookupResult, RequestOffloadingContext, ReqContext)
    tiering = mods["vllm.v1.kv_offload.tiering.base"]
    tiering.SecondaryTierManager, tiering.JobResult, tiering.TransferJob = (
        SecondaryTierManager, JobResult, TransferJob)
    sys.modules.update(mods)



# ---- LMCache's interface, as upstream defines it -----------------------------------------------
class MemoryFormat(enum.Enum):
    UNDEFINED = 0
    KV_2LTD = 1
    KV_MLA_FMT = 3


class MemoryObj:
    """A chunk in LMCache's CPU memory: its bytes, shape, dtype, format and a ref count; at
    zero its memory goes back to the allocator (as LMCache's does)."""

    def __init__(self, shape, dtype, fmt, nbytes, buf=None, backend=None):
        self._buf = buf if buf is not None else np.zeros(nbytes, dtype=np.uint8)
        self.shape, self.dtype, self.fmt, self.refs = shape, dtype, fmt, 1
        self._backend = backend

    @property
    def byte_array(self):
        return memoryview(self._buf)

    def get_shape(self):
        return self.shape

    def get_dtype(self):
        return self.dtype

    def get_memory_format(self):
        return self.fmt

    def ref_count_down(self):
        self.refs -= 1
        if self.refs == 0 and self._backend is not None:
            self._backend.free.setdefault(self._buf.size, []).append(self._buf)


class LocalCPUBackend:
    def __init__(self):
        self.free = {}  # bytes -> buffers given back

    def allocate(self, shape, dtype, fmt):
        n = int(np.prod(shape)) * 2  # bf16
        reuse = self.free.get(n)
        return MemoryObj(shape, dtype, fmt, n, reuse.pop() if reuse else None, self)


class CacheEngineKey:
    def __init__(self, model, world_size, worker_id, chunk_hash, fmt="vllm"):
        self.model, self.world_size, self.worker_id, self.chunk_hash, self.fmt = (
            model, world_size, worker_id, chunk_hash, fmt)

    def to_string(self):
        return f"{self.fmt}@{self.model}@{self.world_size}@{self.worker_id}@{self.chunk_hash:x}"


class RemoteConnector(metaclass=abc.ABCMeta):
    save_chunk_meta = True
    meta_shape = meta_dtype = meta_fmt = full_chunk_size = None

    def init_chunk_meta(self, config, metadata):
        return None

    @abc.abstractmethod
    async def exists(self, key): ...

    @abc.abstractmethod
    def exists_sync(self, key): ...

    @abc.abstractmethod
    async def get(self, key): ...

    @abc.abstractmethod
    async def put(self, key, memory_obj): ...

    @abc.abstractmethod
    async def list(self): ...

    @abc.abstractmethod
    async def close(self): ...


class ConnectorContext:
    def __init__(self, url, loop, local_cpu_backend, config, metadata, plugin_name=None):
        self.url, self.loop, self.local_cpu_backend = url, loop, local_cpu_backend
        self.config, self.metadata, self.plugin_name = config, metadata, plugin_name


class ConnectorAdapter(abc.ABC):
    def __init__(self, schema: str = "") -> None:
        self.schema = schema

    def can_parse(self, url: str) -> bool:
        return self.schema != "" and url.startswith(self.schema)

    @abc.abstractmethod
    def create_connector(self, context): ...


def create_connector(url, loop, backend, config, metadata):
    """The plugin launcher, then the first adapter that can parse the URL."""
    adapters = []
    for name in config.remote_storage_plugins:
        module = importlib.import_module(
            config.extra_config[f"remote_storage_plugin.{name}.module_path"])
        adapter = getattr(module, config.extra_config[f"remote_storage_plugin.{name}.class_name"])()
        assert isinstance(adapter, ConnectorAdapter)
        adapters.append(adapter)
    for adapter in adapters:
        if adapter.can_parse(url):
            connector = adapter.create_connector(
                ConnectorContext(url, loop, backend, config, metadata))
            assert isinstance(connector, RemoteConnector)
            return connector
    raise ValueError(f"No adapter found for URL: {url}")


def _install_lmcache():
    names = ("lmcache", "lmcache.v1", "lmcache.v1.storage_backend",
             "lmcache.v1.storage_backend.connector",
             "lmcache.v1.storage_backend.connector.base_connector",
             "lmcache.v1.memory_management")
    mods = {n: types.ModuleType(n) for n in names}
    conn = mods["lmcache.v1.storage_backend.connector"]
    conn.ConnectorAdapter, conn.ConnectorContext = ConnectorAdapter, ConnectorContext
    mods["lmcache.v1.storage_backend.connector.base_connector"].RemoteConnector = RemoteConnector
    mods["lmcache.v1.memory_management"].MemoryFormat = MemoryFormat
    mods["lmcache.v1.memory_management"].MemoryObj = MemoryObj
    sys.modules.update(mods)


