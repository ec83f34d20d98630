"""kvtier as a secondary tier of vLLM's OffloadingConnector (TieringOffloadingSpec).

vLLM loads it from the connector's extra config, with no change to vLLM:

    "kv_connector_extra_config": {"secondary_tiers": [{
        "type": "KvtierSecondaryTier", "module_path": "kvtier.vllm",
        "tiers": "memory,file", "file_dir": "/nvme/kvtier", "model_revision": "c1b0e5f"}]}

Every key but `type` and `module_path` reaches the constructor; those that are not identity
keys are kvtier settings without the `KVTIER_` prefix.

It follows `vllm/v1/kv_offload/tiering/base.py` as of mid-2026: `lookup` answers a
`LookupResult` (HIT, MISS, RETRY), jobs are `TransferJob`s with `chunk_ids` (the earlier
`JobMetadata` with `block_ids` is read too), `get_finished_jobs`, `on_new_request`,
`drain_jobs` and `has_pending_work`.

Every method runs on the scheduler's thread and returns at once: a lookup starts an
asynchronous read of the block into the tier's staging memory and answers RETRY until it is
there; stores and loads are asynchronous batches (kvtier's own threads move the bytes, between
the primary CPU buffer and kvtier's tiers, with no per-block Python loop). A HIT is a promise:
the block's bytes are staged before it is said, and the load that follows copies them from
there, whatever the tiers evict meanwhile (see KvtierSecondaryTier.lookup). A load that fails
reports `success=False` and its keys read as misses from then on, so a block kvtier cannot give
back is recomputed, not retried forever.
"""

import hashlib
import json
import logging
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

import numpy as np

from . import errors as codes
from .store import Store

logger = logging.getLogger("kvtier.vllm")

try:  # vLLM's own types where vLLM is installed
    from vllm.v1.kv_offload.tiering.base import JobResult, SecondaryTierManager
except ImportError:  # pragma: no cover - the module stays importable without vLLM
    SecondaryTierManager = object

    @dataclass
    class JobResult:
        job_id: int
        success: bool

try:
    from vllm.v1.kv_offload.base import LookupResult, RequestOffloadingContext
except ImportError:  # pragma: no cover
    LookupResult = None
    RequestOffloadingContext = None

# Constructor keys that name the weights beyond the model's name: identity, not settings.
IDENTITY_KEYS = ("model_revision",)
# The staging memory's default size (constructor key `staging_capacity`, bytes or "256MiB").
STAGING_CAPACITY = 256 << 20
# How many keys learnt to be absent a tier remembers (about 10 MiB of keys): past it, the one
# learnt longest ago is forgotten and asked about again.
MISSING_CAPACITY = 1 << 16
_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


class _Recent:
    """A set of at most `capacity` keys that forgets the one added longest ago first; each call
    O(1)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._keys: "OrderedDict[str, None]" = OrderedDict()

    def __contains__(self, k) -> bool:
        return k in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, k) -> None:
        self._keys[k] = None
        self._keys.move_to_end(k)
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)

    def update(self, keys) -> None:
        for k in keys:
            self.add(k)

    def discard(self, k) -> None:
        self._keys.pop(k, None)


def _bytes(value) -> int:
    """A size as kvtier's settings write it: 1048576, "1MiB", "64 GiB"."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(value))
    if m is None or m.group(2).lower() not in _UNITS:
        raise ValueError(f"kvtier: staging_capacity {value!r} is not a size")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


@dataclass
class _Staged:
    """A block's copy in the staging memory: `slot` is its row there; `ready` once its bytes
    have arrived; `holders` the requests (and loads) it was promised to."""
    slot: int
    ready: bool = False
    holders: set = field(default_factory=set)


def _attr(obj, *path, default=None):
    for name in path:
        obj = getattr(obj, name, None) if not isinstance(obj, dict) else obj.get(name)
        if obj is None:
            return default
    return obj


def identity(offloading_spec, extra: Dict[str, Any], row_bytes: int) -> dict:
    """Everything that changes a block's bytes, from the spec's vLLM config: model and
    revision, the KV dtype (`auto` resolved to the model's dtype), block size, TP and PP size
    and rank, the KV layout and the bytes of a block as the primary buffer holds it."""
    vc = _attr(offloading_spec, "vllm_config")
    model_dtype = _attr(vc, "model_config", "dtype")
    cache_dtype = _attr(vc, "cache_config", "cache_dtype", default="auto")
    out = {
        "model": str(_attr(vc, "model_config", "model", default="")),
        "revision": str(extra.get("model_revision") or _attr(vc, "model_config", "revision",
                                                                default="") or ""),
        "dtype": str(model_dtype if cache_dtype in (None, "", "auto") else cache_dtype),
        "block_size": int(_attr(vc, "cache_config", "block_size", default=0) or 0),
        "blocks_per_chunk": int(_attr(offloading_spec, "blocks_per_chunk", default=1) or 1),
        "tp": [int(_attr(vc, "parallel_config", "rank", default=0) or 0),
               int(_attr(vc, "parallel_config", "tensor_parallel_size", default=1) or 1)],
        "pp": int(_attr(vc, "parallel_config", "pipeline_parallel_size", default=1) or 1),
        "kv_layout": str(_attr(offloading_spec, "kv_layout", default="") or
                         extra.get("kv_layout", "")),
        "row_bytes": row_bytes,
    }
    return out


def namespace_for(ident: dict) -> str:
    """vllm/<model>@<16 hex digits of the identity>: another model, revision, dtype, rank or
    layout is another namespace, so its blocks are misses, never another block's bytes."""
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return f"vllm/{ident['model'].replace('/', '-')}@{digest}"


def _key(offload_key) -> str:
    """An OffloadKey is bytes that may hold NUL: hex keeps every byte and fits a C string."""
    return bytes(offload_key).hex()


def _request_id(req_context):
    """Whom a staged block was promised to: the request's id (one holder when vLLM gives none)."""
    return getattr(req_context, "req_id", None)


class KvtierSecondaryTier(SecondaryTierManager):
    """A vLLM secondary tier on kvtier's tiers (see the module's docstring)."""

    def __init__(self, offloading_spec=None, primary_kv_view: memoryview = None,
                 tier_type: str = "KvtierSecondaryTier", vllm_config=None, **config):
        if SecondaryTierManager is not object:
            super().__init__(offloading_spec, primary_kv_view, tier_type)
        self.tier_type = tier_type
        self._view = primary_kv_view
        if offloading_spec is None and vllm_config is not None:  # an earlier factory's form
            offloading_spec = {"vllm_config": vllm_config}
        # The primary buffer: one row per chunk (block), rows `row` bytes apart.
        self._buf = np.frombuffer(primary_kv_view, dtype=np.uint8)
        self._row = int(primary_kv_view.strides[0]) if primary_kv_view.ndim > 1 else int(
            config.pop("row_bytes", 0) or primary_kv_view.nbytes)
        self._base = self._buf.__array_interface__["data"][0]
        extra = {k: config.pop(k) for k in IDENTITY_KEYS if k in config}
        self.identity = identity(offloading_spec, {**extra, **config}, self._row)
        config.pop("kv_layout", None)
        settings = {k[len("kvtier_"):] if k.startswith("kvtier_") else k: v
                    for k, v in config.items()}
        staging = _bytes(settings.pop("staging_capacity", STAGING_CAPACITY))
        settings["namespace"] = namespace_for(self.identity)
        self._store = Store(settings)
        self._store.register_buffer(self._base, self._buf.nbytes)
        # The staging memory: a row per staged block. np.empty takes address space only; the
        # pages are the kernel's until a block lands in them.
        self._stage = np.empty((max(1, staging // self._row), self._row), dtype=np.uint8)
        self._store.register_buffer(self._stage.ctypes.data, self._stage.nbytes)
        self._free: List[int] = list(range(len(self._stage)))  # rows of _stage not in use
        self._lock = threading.Lock()  # the scheduler's thread, drain_jobs' and the copier's
        self._staged: Dict[str, _Staged] = {}  # key -> its staged copy (arriving or ready)
        self._staging: Dict[int, str] = {}  # get request id -> the key it stages
        self._held: Dict[Any, set] = {}  # request id -> keys staged for it
        # Keys learnt to be absent (a miss stays a miss), the MISSING_CAPACITY latest.
        self._missing = _Recent(MISSING_CAPACITY)
        self._jobs: Dict[int, tuple] = {}  # request id -> (job id, "store"|"load", keys)
        self._copies: Dict[int, Future] = {}  # job id -> its copy from the staged blocks
        self._copier = ThreadPoolExecutor(1, thread_name_prefix="kvtier-vllm-load")
        self._finished: List[JobResult] = []
        if not self.identity["revision"]:
            logger.warning("kvtier: no model_revision given: blocks are shared by the model "
                           "name %r alone", self.identity["model"])

    # -- lookups --------------------------------------------------------------------------
    # A HIT must stay true until the load that follows it: between the two, the memory tier may
    # evict the block for capacity, the file tier for space, another process may clear the
    # namespace. kvtier has no pin that outlives a call, so the tier keeps the promise itself:
    # a lookup reads the block into staging memory the tier owns (an asynchronous get) and says
    # HIT only once the bytes are there; the load copies them from there (on a thread of the
    # tier's, off the scheduler's), and the copy is released when that load ends or every
    # request it was staged for has finished. The staging memory is bounded
    # (`staging_capacity`): when it is full a lookup answers MISS (vLLM recomputes that block),
    # never RETRY, which could wait forever on rows held by the very request that asks.
    def lookup(self, key, req_context=None):
        """HIT once the block is staged, MISS when absent (or staging is full), else RETRY
        while kvtier reads it (never waits)."""
        self._poll()
        k = _key(key)
        holder = _request_id(req_context)
        with self._lock:
            staged = self._staged.get(k)
            if staged is not None:
                staged.holders.add(holder)
                self._held.setdefault(holder, set()).add(k)
                return self._answer(True if staged.ready else None)
            if k in self._missing:
                return self._answer(False)
            if not self._free:
                logger.debug("kvtier: staging memory full (%d blocks): %s answered MISS",
                             len(self._stage), k)
                return self._answer(False)
            slot = self._free.pop()
            try:
                rid = self._store.submit_get_v1([k], [self._stage.ctypes.data + slot * self._row],
                                                [self._row])
            except Exception as e:  # a full queue, a closed store: ask again later
                self._free.append(slot)
                logger.debug("kvtier: staging read not submitted: %s", e)
                return self._answer(None)
            self._staged[k] = _Staged(slot, holders={holder})
            self._staging[rid] = k
            self._held.setdefault(holder, set()).add(k)
        return self._answer(None)

    @staticmethod
    def _answer(known: Optional[bool]):
        if LookupResult is None:
            return known
        if known is None:
            return LookupResult.RETRY
        return LookupResult.HIT if known else LookupResult.MISS

    def _release(self, k: str, holder) -> None:  # REQUIRES self._lock
        """`holder` no longer needs k's staged copy; the last holder's release frees its row."""
        staged = self._staged.get(k)
        if staged is None:
            return
        staged.holders.discard(holder)
        keys = self._held.get(holder)
        if keys is not None:
            keys.discard(k)
            if not keys:
                del self._held[holder]
        if not staged.holders and staged.ready:  # one still arriving is freed on arrival
            del self._staged[k]
            self._free.append(staged.slot)

    def staged_blocks(self) -> int:
        """Blocks staged now, arriving or ready (rows of the staging memory in use)."""
        with self._lock:
            return len(self._stage) - len(self._free)

    # -- transfers ------------------------------------------------------------------------
    def _frags(self, job):
        ids = self._ids(job).astype(np.uint64)
        ptrs = (np.uint64(self._base) + ids * np.uint64(self._row)).astype(np.uint64)
        sizes = np.full(len(ids), self._row, dtype=np.uint64)
        return ptrs, sizes

    def _ids(self, job) -> np.ndarray:
        ids = getattr(job, "chunk_ids", None)
        return np.asarray(job.block_ids if ids is None else ids, dtype=np.int64)

    def _submit(self, job, kind: str):
        keys = [_key(k) for k in job.keys]
        if kind == "load" and self._load_staged(job, keys):
            return
        ptrs, sizes = self._frags(job)
        call = self._store.submit_set_v1 if kind == "store" else self._store.submit_get_v1
        try:
            rid = call(keys, ptrs, sizes, job.job_id)
        except Exception as e:  # refused at once (queue full, bad input): the job failed
            logger.warning("kvtier: %s of %d blocks not submitted: %s", kind, len(keys), e)
            with self._lock:
                if kind == "load":
                    self._missing.update(keys)
                self._finished.append(JobResult(job_id=job.job_id, success=False))
            return
        with self._lock:
            self._jobs[rid] = (job.job_id, kind, keys)

    def _load_staged(self, job, keys: List[str]) -> bool:
        """A load of blocks that are all staged: copied from the staging memory on the tier's
        thread (numpy's copy lets the scheduler's thread run meanwhile). False when some block
        is not staged (a load no lookup promised): kvtier reads the job then."""
        holder = ("load", job.job_id)
        with self._lock:
            staged = [self._staged.get(k) for k in keys]
            if not all(s is not None and s.ready for s in staged):
                return False
            for k, s in zip(keys, staged):  # the rows stay until the copy is done
                s.holders.add(holder)
            slots = np.fromiter((s.slot for s in staged), dtype=np.int64, count=len(staged))
            self._copies[job.job_id] = self._copier.submit(
                self._copy, job.job_id, keys, self._ids(job), slots,
                _request_id(getattr(job, "req_context", None)))
        return True

    def _copy(self, job_id: int, keys: List[str], rows: np.ndarray, slots: np.ndarray,
              requester) -> None:
        ok = True
        try:
            self._buf.reshape(-1, self._row)[rows] = self._stage[slots]
        except Exception as e:  # rows outside the buffer: the job fails, the engine goes on
            logger.warning("kvtier: load of %d staged blocks failed: %s", len(keys), e)
            ok = False
        with self._lock:
            for k in keys:  # the promise is kept: the copy goes
                self._release(k, ("load", job_id))
                self._release(k, requester)
            self._copies.pop(job_id, None)
            self._finished.append(JobResult(job_id=job_id, success=ok))

    def submit_store(self, job) -> None:
        """Blocks of the primary buffer (rows `chunk_ids`) stored under `keys`, asynchronously."""
        self._submit(job, "store")

    def submit_load(self, job) -> None:
        """Blocks read into rows `chunk_ids` of the primary buffer, asynchronously."""
        self._submit(job, "load")

    def _poll(self) -> None:
        """Takes every completion that is there (no wait) and learns from it."""
        while True:
            done = self._store.drain(256, 0)
            if not done:
                return
            with self._lock:
                for c in done:
                    self._learn(c)

    def _learn(self, c) -> None:  # REQUIRES self._lock
        k = self._staging.pop(c.id, None)
        if k is not None:  # a lookup's staging read
            staged = self._staged[k]
            if c.status == codes.OK and c.results == [codes.OK]:
                staged.ready = True
                if staged.holders:
                    return
            else:
                # Absent, or unreadable (another size, a dead tier): a miss from now on, as a
                # block kvtier cannot give back must be recomputed, not asked for forever.
                self._missing.add(k)
                for holder in staged.holders:
                    self._held.get(holder, set()).discard(k)
            del self._staged[k]  # absent, or every request it was staged for has finished
            self._free.append(staged.slot)
            return
        job_id, kind, keys = self._jobs.pop(c.id, (None, None, []))
        if job_id is None:
            return
        ok = c.status == codes.OK and len(c.results) == len(keys) and all(
            r == codes.OK for r in c.results)
        if kind == "store":
            for k, r in zip(keys, c.results or []):
                if r == codes.OK:
                    self._missing.discard(k)
        else:
            # A block that did not load is a miss from now on: the next lookup says so and
            # vLLM recomputes it, rather than asking for it again and again.
            for k, r in zip(keys, c.results or [None] * len(keys)):
                if r != codes.OK:
                    self._missing.add(k)
            if not ok:
                logger.warning("kvtier: load job %d failed (status %d) %s", job_id, c.status,
                               c.detail)
        self._finished.append(JobResult(job_id=job_id, success=ok))

    def get_finished_jobs(self) -> Iterable[JobResult]:
        """The stores and loads finished since the last call."""
        self._poll()
        with self._lock:
            out, self._finished = self._finished, []
        return out

    get_finished = get_finished_jobs  # the interface's earlier name

    def has_pending_work(self) -> bool:
        with self._lock:
            return bool(self._jobs) or bool(self._copies) or bool(self._finished)

    def drain_jobs(self) -> None:
        """Waits for every store and load in flight (results stay for get_finished_jobs)."""
        while True:
            with self._lock:
                copies = list(self._copies.values())
                if not self._jobs and not copies:
                    return
            for f in copies:
                f.result()
            for c in self._store.drain(256, 100):
                with self._lock:
                    self._learn(c)

    # -- the request life cycle -----------------------------------------------------------
    def on_new_request(self, req_context=None):
        return RequestOffloadingContext() if RequestOffloadingContext is not None else None

    def get_request_offloading_context(self, req_context=None):
        return self.on_new_request(req_context)

    def on_request_finished(self, req_context=None) -> None:
        """Releases the blocks staged for the request and not loaded (an abort, a preemption,
        a lookup vLLM did not follow with a load)."""
        holder = _request_id(req_context)
        with self._lock:
            for k in self._held.pop(holder, ()):
                self._release(k, holder)

    request_finished = on_request_finished

    def touch(self, keys, req_context=None) -> None:
        return None

    def shutdown(self) -> None:
        """Ends kvtier's requests (the store's close waits for them) and releases the store."""
        self._copier.shutdown(wait=True)
        self._store.close()
