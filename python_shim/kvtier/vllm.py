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

Every method runs on the scheduler's thread and returns at once: lookups that are not known
yet start an asynchronous exists and answer RETRY; stores and loads are asynchronous batches
(kvtier's own threads move the bytes, between the primary CPU buffer and kvtier's tiers, with
no per-block Python loop). A load that fails reports `success=False` and its keys read as
misses from then on, so a block kvtier cannot give back is recomputed, not retried forever.
"""

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional

import numpy as np

from . import errors as codes
from .store import OP_EXISTS, OP_GET_V1, OP_SET_V1, Store

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
        settings["namespace"] = namespace_for(self.identity)
        self._store = Store(settings)
        self._store.register_buffer(self._base, self._buf.nbytes)
        self._lock = threading.Lock()  # the scheduler's thread and drain_jobs' callers
        self._known: Dict[str, bool] = {}  # key -> present, as last learnt
        self._asking: Dict[int, List[str]] = {}  # exists request id -> its keys
        self._jobs: Dict[int, tuple] = {}  # request id -> (job id, "store"|"load", keys)
        self._finished: List[JobResult] = []
        if not self.identity["revision"]:
            logger.warning("kvtier: no model_revision given: blocks are shared by the model "
                           "name %r alone", self.identity["model"])

    # -- lookups --------------------------------------------------------------------------
    def lookup(self, key, req_context=None):
        """HIT or MISS once known, else RETRY while kvtier finds out (never waits)."""
        self._poll()
        k = _key(key)
        with self._lock:
            known = self._known.get(k)
            if known is None and not any(k in keys for keys in self._asking.values()):
                try:
                    rid = self._store.submit_exists([k])
                    self._asking[rid] = [k]
                except Exception as e:  # a full queue, a closed store: ask again later
                    logger.debug("kvtier: exists not submitted: %s", e)
        return self._answer(known)

    @staticmethod
    def _answer(known: Optional[bool]):
        if LookupResult is None:
            return known
        if known is None:
            return LookupResult.RETRY
        return LookupResult.HIT if known else LookupResult.MISS

    # -- transfers ------------------------------------------------------------------------
    def _frags(self, job):
        ids = getattr(job, "chunk_ids", None)
        if ids is None:
            ids = job.block_ids
        ids = np.asarray(ids, dtype=np.uint64)
        ptrs = (np.uint64(self._base) + ids * np.uint64(self._row)).astype(np.uint64)
        sizes = np.full(len(ids), self._row, dtype=np.uint64)
        return ptrs, sizes

    def _submit(self, job, kind: str):
        keys = [_key(k) for k in job.keys]
        ptrs, sizes = self._frags(job)
        call = self._store.submit_set_v1 if kind == "store" else self._store.submit_get_v1
        try:
            rid = call(keys, ptrs, sizes, job.job_id)
        except Exception as e:  # refused at once (queue full, bad input): the job failed
            logger.warning("kvtier: %s of %d blocks not submitted: %s", kind, len(keys), e)
            with self._lock:
                if kind == "load":
                    for k in keys:
                        self._known[k] = False
                self._finished.append(JobResult(job_id=job.job_id, success=False))
            return
        with self._lock:
            self._jobs[rid] = (job.job_id, kind, keys)

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
        if c.op == OP_EXISTS:
            for k, r in zip(self._asking.pop(c.id, []), c.results or []):
                self._known[k] = r == codes.OK
            return
        job_id, kind, keys = self._jobs.pop(c.id, (None, None, []))
        if job_id is None:
            return
        ok = c.status == codes.OK and len(c.results) == len(keys) and all(
            r == codes.OK for r in c.results)
        if kind == "store":
            for k, r in zip(keys, c.results or []):
                if r == codes.OK:
                    self._known[k] = True
        else:
            # A block that did not load is a miss from now on: the next lookup says so and
            # vLLM recomputes it, rather than asking for it again and again.
            for k, r in zip(keys, c.results or [None] * len(keys)):
                if r != codes.OK:
                    self._known[k] = False
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
            return bool(self._jobs) or bool(self._finished)

    def drain_jobs(self) -> None:
        """Waits for every store and load in flight (results stay for get_finished_jobs)."""
        while True:
            with self._lock:
                if not self._jobs:
                    return
            for c in self._store.drain(256, 100):
                with self._lock:
                    self._learn(c)

    # -- the request life cycle -----------------------------------------------------------
    def on_new_request(self, req_context=None):
        return RequestOffloadingContext() if RequestOffloadingContext is not None else None

    def get_request_offloading_context(self, req_context=None):
        return self.on_new_request(req_context)

    def on_request_finished(self, req_context=None) -> None:
        return None

    request_finished = on_request_finished

    def touch(self, keys, req_context=None) -> None:
        return None

    def shutdown(self) -> None:
        """Ends kvtier's requests (the store's close waits for them) and releases the store."""
        self._store.close()
