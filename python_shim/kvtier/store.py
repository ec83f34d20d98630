"""The Pythonic store over the C ABI."""

import array
import ctypes
import json
import threading
from itertools import accumulate
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

from . import _native
from .errors import CLOSED, CONFIG, INVALID_ARG, NOT_FOUND, OK, KvtierError, check, last_error

_lib = _native.lib

POOL_MHA, POOL_MLA = 0, 1
LAYOUTS = {"layer_first": 0, "page_first": 1, "page_first_direct": 2}


class _Keys:
    """A batch's keys as one NUL-separated blob and an array of pointers into it: two objects
    per batch instead of one ctypes object per key (the engine sends 128-key batches)."""

    __slots__ = ("_as_parameter_", "_keep")  # ctypes passes _as_parameter_; _keep holds the bytes

    def __init__(self, keys: Sequence[str]):
        try:
            blob = ("\0".join(keys) + "\0").encode()  # one encode for the batch
        except (TypeError, UnicodeEncodeError):
            blob = None
        if blob is not None and keys:
            width = len(keys[0]) + 1
            n = len(keys)
            if len(blob) == width * n and blob[width - 1::width] == b"\0" * n and \
                    blob.count(0) == n:
                # ASCII keys of one length, as the engine's hashes are: pointers by stride.
                base = ctypes.cast(ctypes.c_char_p(blob), ctypes.c_void_p).value
                ptrs = array.array("Q", range(base, base + len(blob), width))
                self._as_parameter_ = ctypes.cast(ptrs.buffer_info()[0], _native.c_char_pp)
                self._keep = (blob, ptrs)
                return
            if len(blob) == sum(map(len, keys)) + len(keys) and blob.count(0) == len(keys):
                self._point_into(blob, map(len, keys[:-1]))  # ASCII, mixed lengths, no NUL
                return
        enc = [k.encode() if isinstance(k, str) else k for k in keys]
        # A key with a NUL in it would reach C cut short, as another key: it goes as NULL, which
        # fails that key alone with KVTIER_ERR_INVALID_ARG.
        enc = [None if isinstance(e, bytes) and b"\0" in e else e for e in enc]
        if any(not isinstance(e, bytes) for e in enc):  # None and odd types: per-key path
            arr = (ctypes.c_char_p * len(enc))()
            arr[:] = [e if e is None else bytes(e) for e in enc]
            self._as_parameter_, self._keep = ctypes.cast(arr, _native.c_char_pp), arr
            return
        self._point_into(b"\0".join(enc) + b"\0", map(len, enc[:-1]))

    def _point_into(self, blob: bytes, lengths) -> None:
        base = ctypes.cast(ctypes.c_char_p(blob), ctypes.c_void_p).value
        ptrs = array.array("Q", accumulate((n + 1 for n in lengths), initial=base))
        self._as_parameter_ = ctypes.cast(ptrs.buffer_info()[0], _native.c_char_pp)
        self._keep = (blob, ptrs)


_keys = _Keys


# What _address gives for a buffer that is not one block of memory: a NULL fragment of one
# byte, which the C call fails alone with KVTIER_ERR_INVALID_ARG.
_NOT_CONTIGUOUS = (None, 1, None)


def _address(obj, writable: bool) -> Tuple[Optional[int], int, object]:
    """(address, length, keep-alive) of a bytes-like, numpy array or torch tensor. A strided or
    reversed view is not the block [address, address + length): it gets _NOT_CONTIGUOUS."""
    if hasattr(obj, "data_ptr") and hasattr(obj, "element_size"):  # torch.Tensor
        if not obj.is_contiguous():
            return _NOT_CONTIGUOUS
        return obj.data_ptr(), obj.numel() * obj.element_size(), obj
    if hasattr(obj, "__array_interface__") and hasattr(obj, "nbytes"):  # numpy
        if not (obj.flags["C_CONTIGUOUS"] or obj.flags["F_CONTIGUOUS"]):
            return _NOT_CONTIGUOUS
        if writable and not obj.flags["WRITEABLE"]:
            raise TypeError("array is read-only")
        return obj.__array_interface__["data"][0], obj.nbytes, obj
    if isinstance(obj, bytes):
        if writable:
            raise TypeError("bytes is read-only; pass a bytearray, numpy array or tensor")
        p = ctypes.c_char_p(obj)
        return ctypes.cast(p, ctypes.c_void_p).value or 0, len(obj), p
    mv = memoryview(obj)
    if not mv.contiguous:
        return _NOT_CONTIGUOUS
    mv = mv.cast("B")
    if mv.readonly:
        if writable:
            raise TypeError("buffer is read-only")
        b = bytes(mv)
        p = ctypes.c_char_p(b)
        return ctypes.cast(p, ctypes.c_void_p).value or 0, len(b), (b, p)
    c = (ctypes.c_char * len(mv)).from_buffer(mv)
    return ctypes.addressof(c), len(mv), c


# Characters that separate settings in a config string: inside a dict's name or value they
# would smuggle in other settings.
_CONFIG_SEPARATORS = (";", "=", "\n", "\r", "\0")


def _config_string(config) -> Optional[bytes]:
    if config is None:
        return None
    if isinstance(config, dict):
        for k, v in config.items():
            bad = [c for c in _CONFIG_SEPARATORS if c in str(k) or c in str(v)]
            if bad:
                raise KvtierError(CONFIG, f"config {k!r}: {bad[0]!r} is not allowed in a name or value")
        config = ";".join(f"{k}={v}" for k, v in config.items())
    if "\0" in config:
        raise KvtierError(CONFIG, "config string holds a NUL character")
    return config.encode()


class Closing:
    """close() on leaving a with-block and when collected."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


class Completion(NamedTuple):
    """A finished asynchronous request (kvtier_completion_t plus its per-key results)."""

    id: int
    user_data: int
    op: int  # OP_*
    status: int  # what the blocking call would have returned, or codes.CANCELLED
    results: List[int]  # per key, as the blocking call gives them
    detail: str = ""  # the first failed key's detail, as kvtier_last_error() gives it


OP_SET_V1, OP_GET_V1, OP_SET_V1_SLOTS, OP_GET_V1_SLOTS, OP_EXISTS = 1, 2, 3, 4, 5


class Store(Closing):
    """A kvtier store. Thread-safe; use as a context manager or call close()."""

    def __init__(self, config: Union[None, str, dict] = None, *, _handle=None):
        if _handle is not None:  # a view (see view())
            self._h = _handle
            return
        handle = ctypes.c_void_p()
        check(_lib.kvtier_open(_config_string(config), ctypes.byref(handle)))
        self._h = handle

    def view(self) -> "Store":
        """Another handle on the same tiers, namespace and registered buffers, with its own page
        format and layout (one per pool). Close it like a store; the tiers close with the last."""
        handle = ctypes.c_void_p()
        check(_lib.kvtier_open_view(self.handle, ctypes.byref(handle)))
        return Store(_handle=handle)

    def set_page_format(self, fmt: Optional[str]) -> None:
        """Names how this handle's pages are laid out; part of every key's identity."""
        check(_lib.kvtier_set_page_format(self.handle, fmt.encode() if fmt else None))

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        h, self._h = getattr(self, "_h", None), None
        if h:
            _lib.kvtier_close(h)  # ends every asynchronous request: their arrays are free now
            self._inflight = {}

    @property
    def closed(self) -> bool:
        return not getattr(self, "_h", None)

    @property
    def handle(self):
        if not self._h:
            raise KvtierError(CLOSED, "store is closed")
        return self._h

    # -- copying interface ----------------------------------------------------------------
    def batch_set(self, keys: Sequence[str], values: Sequence) -> List[int]:
        """Stores each value (bytes-like, numpy array or tensor). Returns 0 or a code per key."""
        n = len(keys)
        if n != len(values):
            raise KvtierError(INVALID_ARG, f"{n} keys but {len(values)} values")
        refs = [_address(v, False) for v in values]
        ptrs = (ctypes.c_void_p * n)(*[r[0] for r in refs])
        sizes = (ctypes.c_size_t * n)(*[r[1] for r in refs])
        res = (ctypes.c_int * n)()
        check(_lib.kvtier_batch_set(self.handle, _keys(keys), n, ptrs, sizes, res))
        return list(res)

    def batch_get(self, keys: Sequence[str], buffers: Sequence) -> List[int]:
        """Reads each key into a writable buffer. Returns bytes read or a code per key."""
        n = len(keys)
        if n != len(buffers):
            raise KvtierError(INVALID_ARG, f"{n} keys but {len(buffers)} buffers")
        refs = [_address(b, True) for b in buffers]
        ptrs = (ctypes.c_void_p * n)(*[r[0] for r in refs])
        caps = (ctypes.c_size_t * n)(*[r[1] for r in refs])
        res = (ctypes.c_int64 * n)()
        check(_lib.kvtier_batch_get(self.handle, _keys(keys), n, ptrs, caps, res))
        return list(res)

    def batch_exists(self, keys: Sequence[str]) -> int:
        """How many keys, from the first, are present without a gap."""
        if not keys:
            return 0
        hits = ctypes.c_size_t()
        check(_lib.kvtier_batch_exists(self.handle, _keys(keys), len(keys), ctypes.byref(hits)))
        return hits.value

    def batch_exists_each(self, keys: Sequence[str]) -> List[int]:
        """Per key: 0 (present), -1 (KVTIER_ERR_NOT_FOUND) or the key's own code."""
        if not keys:
            return []
        res = (ctypes.c_int * len(keys))()
        check(_lib.kvtier_batch_exists_each(self.handle, _keys(keys), len(keys), res))
        return list(res)

    def batch_size_each(self, keys: Sequence[str]) -> List[int]:
        """Per key: the stored value's size in bytes, -1 (KVTIER_ERR_NOT_FOUND) or its code."""
        if not keys:
            return []
        res = (ctypes.c_int64 * len(keys))()
        check(_lib.kvtier_batch_size_each(self.handle, _keys(keys), len(keys), res))
        return list(res)

    def remove(self, keys: Sequence[str]) -> List[int]:
        res = (ctypes.c_int * len(keys))()
        check(_lib.kvtier_batch_remove(self.handle, _keys(keys), len(keys), res))
        return list(res)

    def clear(self) -> None:
        check(_lib.kvtier_clear(self.handle))

    def stats(self) -> dict:
        out = ctypes.c_void_p()
        check(_lib.kvtier_stats_json(self.handle, ctypes.byref(out)))
        try:
            return json.loads(ctypes.string_at(out.value).decode())
        finally:
            _lib.kvtier_free(out)

    # -- zero-copy interface --------------------------------------------------------------
    def register_buffer(self, addr: int, length: int) -> None:
        check(_lib.kvtier_register_buffer(self.handle, addr, length))

    def unregister_buffer(self, addr: int) -> None:
        check(_lib.kvtier_unregister_buffer(self.handle, addr))

    @staticmethod
    def _frag_arrays(ptrs, sizes):
        if hasattr(ptrs, "__array_interface__"):  # numpy uint64 arrays: no per-item work
            return (
                ctypes.cast(ptrs.__array_interface__["data"][0], _native.c_void_pp),
                ctypes.cast(sizes.__array_interface__["data"][0], _native.c_size_p),
                len(ptrs),
            )
        n = len(ptrs)
        return (ctypes.c_void_p * n)(*ptrs), (ctypes.c_size_t * n)(*sizes), n

    def batch_set_v1(self, keys: Sequence[str], ptrs, sizes) -> List[int]:
        """Stores each key from its fragments (len(ptrs) / len(keys) per key), in place."""
        p, s, nf = self._frag_arrays(ptrs, sizes)
        res = (ctypes.c_int * len(keys))()
        check(_lib.kvtier_batch_set_v1(self.handle, _keys(keys), len(keys), p, s, nf, res))
        return list(res)

    def batch_get_v1(self, keys: Sequence[str], ptrs, sizes) -> List[int]:
        """Reads each key into its fragments, in place. Returns 0 or a code per key."""
        p, s, nf = self._frag_arrays(ptrs, sizes)
        res = (ctypes.c_int * len(keys))()
        check(_lib.kvtier_batch_get_v1(self.handle, _keys(keys), len(keys), p, s, nf, res))
        return list(res)

    # -- native page meta -----------------------------------------------------------------
    def register_layout(
        self,
        base: int,
        *,
        mla: bool,
        layout: str,
        page_size: int,
        layer_num: int,
        dtype_size: int,
        pool_tokens: int,
        head_num: int = 0,
        head_dim: int = 0,
        kv_cache_dim: int = 0,
        dtype_name: Optional[str] = None,
    ) -> None:
        """Registers the pool layout on this handle; its page format becomes the layout's."""
        if layout not in LAYOUTS:
            raise KvtierError(INVALID_ARG, f"layout {layout!r} is not one of {sorted(LAYOUTS)}")
        spec = _native.PoolLayout(
            ctypes.sizeof(_native.PoolLayout), base, POOL_MLA if mla else POOL_MHA,
            LAYOUTS[layout], page_size, layer_num, head_num, head_dim, kv_cache_dim,
            dtype_size, pool_tokens, dtype_name.encode() if dtype_name else None,
        )
        check(_lib.kvtier_register_layout(self.handle, ctypes.byref(spec)))
        self._page_size = page_size

    def page_fragments(self) -> int:
        n = ctypes.c_size_t()
        check(_lib.kvtier_page_fragments(self.handle, ctypes.byref(n)))
        return n.value

    @staticmethod
    def _slots(slots) -> Tuple[int, int, object]:
        """(address, count, keep-alive) of an int64 slot array (tensor, numpy or sequence)."""
        if hasattr(slots, "data_ptr"):
            if str(slots.dtype) != "torch.int64" or not slots.is_contiguous():
                slots = slots.to(dtype=__import__("torch").int64).contiguous()
            return slots.data_ptr(), slots.numel(), slots
        if hasattr(slots, "__array_interface__"):
            if slots.dtype.str != "<i8" or not slots.flags["C_CONTIGUOUS"]:
                import numpy as np

                slots = np.ascontiguousarray(slots, dtype=np.int64)
            return slots.__array_interface__["data"][0], slots.size, slots
        arr = (ctypes.c_int64 * len(slots))(*slots)
        return ctypes.addressof(arr), len(slots), arr

    def page_buffer_meta(self, slots) -> Tuple[List[int], List[int]]:
        """The engine's get_page_buffer_meta, computed natively: (ptr_list, size_list)."""
        addr, n, keep = self._slots(slots)
        per = self.page_fragments()
        pages = n // self._page_size if getattr(self, "_page_size", 0) else 0
        cap = max(pages * per, 1)
        ptrs = (ctypes.c_void_p * cap)()
        sizes = (ctypes.c_size_t * cap)()
        check(_lib.kvtier_get_page_buffer_meta(self.handle, addr, n, ptrs, sizes, cap))
        del keep
        return [p or 0 for p in ptrs[: pages * per]], list(sizes[: pages * per])

    def batch_set_v1_slots(self, keys: Sequence[str], slots) -> List[int]:
        addr, n, keep = self._slots(slots)
        res = (ctypes.c_int * len(keys))()
        check(_lib.kvtier_batch_set_v1_slots(self.handle, _keys(keys), len(keys), addr, n, res))
        del keep
        return list(res)

    def batch_get_v1_slots(self, keys: Sequence[str], slots) -> List[int]:
        addr, n, keep = self._slots(slots)
        res = (ctypes.c_int * len(keys))()
        check(_lib.kvtier_batch_get_v1_slots(self.handle, _keys(keys), len(keys), addr, n, res))
        del keep
        return list(res)

    # -- asynchronous batches -------------------------------------------------------------
    # Each submit returns a request id at once; the request runs on kvtier's threads. fileno()
    # turns readable while completions wait; drain() hands them out with each key's result.
    # The fragments (or the pool the slots address) must stay valid until the request's
    # completion is drained (or the store closed); keys and arrays are copied at submit.

    def _submit(self, call, n: int, args, user_data: int) -> int:
        res = (ctypes.c_int * n)()
        rid = ctypes.c_uint64()
        # The id goes into the table before any drain can hand out its completion.
        with self._async_lock:
            check(call(self.handle, *args, res, user_data, ctypes.byref(rid)))
            self._inflight[rid.value] = res
        return rid.value

    @property
    def _async_lock(self) -> threading.Lock:
        lock = self.__dict__.get("_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_lock", threading.Lock())
            self.__dict__.setdefault("_inflight", {})
        return lock

    def submit_set_v1(self, keys: Sequence[str], ptrs, sizes, user_data: int = 0) -> int:
        p, s, nf = self._frag_arrays(ptrs, sizes)
        return self._submit(_lib.kvtier_submit_set_v1, len(keys),
                            (_keys(keys), len(keys), p, s, nf), user_data)

    def submit_get_v1(self, keys: Sequence[str], ptrs, sizes, user_data: int = 0) -> int:
        p, s, nf = self._frag_arrays(ptrs, sizes)
        return self._submit(_lib.kvtier_submit_get_v1, len(keys),
                            (_keys(keys), len(keys), p, s, nf), user_data)

    def submit_set_v1_slots(self, keys: Sequence[str], slots, user_data: int = 0) -> int:
        addr, n, keep = self._slots(slots)
        rid = self._submit(_lib.kvtier_submit_set_v1_slots, len(keys),
                           (_keys(keys), len(keys), addr, n), user_data)
        del keep  # copied by the submit
        return rid

    def submit_get_v1_slots(self, keys: Sequence[str], slots, user_data: int = 0) -> int:
        addr, n, keep = self._slots(slots)
        rid = self._submit(_lib.kvtier_submit_get_v1_slots, len(keys),
                           (_keys(keys), len(keys), addr, n), user_data)
        del keep
        return rid

    def submit_exists(self, keys: Sequence[str], user_data: int = 0) -> int:
        """Per key, in the completion: 0 (present), NOT_FOUND or the key's own code."""
        return self._submit(_lib.kvtier_submit_exists, len(keys), (_keys(keys), len(keys)),
                            user_data)

    def fileno(self) -> int:
        """The completion fd (poll/select/an event loop's add_reader); owned by the store."""
        fd = ctypes.c_int()
        check(_lib.kvtier_async_fd(self.handle, ctypes.byref(fd)))
        return fd.value

    def cancel(self, request_id: int) -> bool:
        """True: the request will complete with status CANCELLED (at once if it was queued,
        once its I/O has stopped if it was running). False: it had completed already."""
        rc = _lib.kvtier_cancel(self.handle, request_id)
        if rc == NOT_FOUND:
            return False
        check(rc)
        return True

    def drain(self, max_completions: int = 64, timeout_ms: int = 0) -> List[Completion]:
        """Up to max_completions finished requests, oldest first; waits up to timeout_ms for
        the first when none is there."""
        out = (_native.Completion * max_completions)()
        n = ctypes.c_size_t()
        check(_lib.kvtier_drain(self.handle, out, max_completions, timeout_ms, ctypes.byref(n)))
        # "request <id>: <detail>" of the first completion that has one (the C ABI keeps one).
        rid, _, detail = last_error().partition(": ")
        done = []
        with self._async_lock:
            for c in out[: n.value]:
                res = self._inflight.pop(c.id, None)
                done.append(Completion(c.id, c.user_data, c.op, c.status,
                                       list(res) if res is not None else [],
                                       detail if rid == f"request {c.id}" else ""))
        return done
