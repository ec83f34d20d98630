"""Loads libkvtier and declares every C call (argtypes/restype). The only module that touches ctypes' view of the library."""

import ctypes
import os
from pathlib import Path

# The ABI this package was written against (kvtier.h's KVTIER_VERSION_MAJOR).
ABI_MAJOR = 0
MIN_VERSION = 300  # 0.3.0: asynchronous batches

c_char_pp = ctypes.POINTER(ctypes.c_char_p)
c_size_p = ctypes.POINTER(ctypes.c_size_t)
c_int_p = ctypes.POINTER(ctypes.c_int)
c_int64_p = ctypes.POINTER(ctypes.c_int64)
c_void_pp = ctypes.POINTER(ctypes.c_void_p)
c_uint64_p = ctypes.POINTER(ctypes.c_uint64)


class PoolLayout(ctypes.Structure):
    """Mirror of kvtier_pool_layout_t."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("base", ctypes.c_void_p),
        ("pool_kind", ctypes.c_int32),
        ("layout", ctypes.c_int32),
        ("page_size", ctypes.c_uint32),
        ("layer_num", ctypes.c_uint32),
        ("head_num", ctypes.c_uint32),
        ("head_dim", ctypes.c_uint32),
        ("kv_cache_dim", ctypes.c_uint32),
        ("dtype_size", ctypes.c_uint32),
        ("pool_tokens", ctypes.c_uint64),
        ("dtype_name", ctypes.c_char_p),
    ]


class Completion(ctypes.Structure):
    """Mirror of kvtier_completion_t."""

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("user_data", ctypes.c_uint64),
        ("op", ctypes.c_int32),
        ("status", ctypes.c_int32),
    ]


def _candidates():
    env = os.environ.get("KVTIER_LIBRARY")
    if env:
        yield env
        return
    here = Path(__file__).resolve().parent
    yield from sorted(str(p) for p in here.glob("libkvtier.so*"))  # installed next to the package
    yield str(here.parent.parent / "build" / "capi" / "libkvtier.so")  # a source tree's build
    yield "libkvtier.so.0"  # the loader path
    yield "libkvtier.so"


def _load():
    errors = []
    for path in _candidates():
        if "/" in path and not os.path.exists(path):
            errors.append(f"{path}: no such file")
            continue
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            errors.append(f"{path}: {e}")
    raise ImportError(
        "kvtier: cannot load libkvtier (set KVTIER_LIBRARY to its path): " + "; ".join(errors)
    )


lib = _load()

_SIGNATURES = {
    "kvtier_version_number": (ctypes.c_uint, []),
    "kvtier_version_string": (ctypes.c_char_p, []),
    "kvtier_error_name": (ctypes.c_char_p, [ctypes.c_int]),
    "kvtier_strerror": (ctypes.c_char_p, [ctypes.c_int]),
    "kvtier_last_error": (ctypes.c_char_p, []),
    "kvtier_free": (None, [ctypes.c_void_p]),
    "kvtier_open": (ctypes.c_int, [ctypes.c_char_p, c_void_pp]),
    "kvtier_close": (None, [ctypes.c_void_p]),
    "kvtier_open_view": (ctypes.c_int, [ctypes.c_void_p, c_void_pp]),
    "kvtier_set_page_format": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
    "kvtier_batch_set": (
        ctypes.c_int,
        [ctypes.c_void_p, c_char_pp, ctypes.c_size_t, c_void_pp, c_size_p, c_int_p],
    ),
    "kvtier_batch_get": (
        ctypes.c_int,
        [ctypes.c_void_p, c_char_pp, ctypes.c_size_t, c_void_pp, c_size_p, c_int64_p],
    ),
    "kvtier_batch_exists": (ctypes.c_int, [ctypes.c_void_p, c_char_pp, ctypes.c_size_t, c_size_p]),
    "kvtier_batch_exists_each": (
        ctypes.c_int, [ctypes.c_void_p, c_char_pp, ctypes.c_size_t, c_int_p]),
    "kvtier_batch_size_each": (
        ctypes.c_int, [ctypes.c_void_p, c_char_pp, ctypes.c_size_t, c_int64_p]),
    "kvtier_batch_remove": (ctypes.c_int, [ctypes.c_void_p, c_char_pp, ctypes.c_size_t, c_int_p]),
    "kvtier_clear": (ctypes.c_int, [ctypes.c_void_p]),
    "kvtier_stats_json": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]),
    "kvtier_register_buffer": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]),
    "kvtier_unregister_buffer": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p]),
    "kvtier_batch_set_v1": (
        ctypes.c_int,
        [ctypes.c_void_p, c_char_pp, ctypes.c_size_t, c_void_pp, c_size_p, ctypes.c_size_t, c_int_p],
    ),
    "kvtier_batch_get_v1": (
        ctypes.c_int,
        [ctypes.c_void_p, c_char_pp, ctypes.c_size_t, c_void_pp, c_size_p, ctypes.c_size_t, c_int_p],
    ),
    "kvtier_register_layout": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(PoolLayout)]),
    "kvtier_page_fragments": (ctypes.c_int, [ctypes.c_void_p, c_size_p]),
    "kvtier_get_page_buffer_meta": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, c_void_pp, c_size_p, ctypes.c_size_t],
    ),
    # slots are passed as a raw address (a tensor's data_ptr) to avoid any conversion.
    "kvtier_batch_set_v1_slots": (
        ctypes.c_int,
        [ctypes.c_void_p, c_char_pp, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, c_int_p],
    ),
    "kvtier_batch_get_v1_slots": (
        ctypes.c_int,
        [ctypes.c_void_p, c_char_pp, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, c_int_p],
    ),
    # asynchronous batches (0.3): the blocking call's arguments, then user_data and the id
    "kvtier_submit_set_v1": (
        ctypes.c_int,
        [ctypes.c_void_p, c_char_pp, ctypes.c_size_t, c_void_pp, c_size_p, ctypes.c_size_t, c_int_p,
         ctypes.c_uint64, c_uint64_p],
    ),
    "kvtier_submit_get_v1": (
        ctypes.c_int,
        [ctypes.c_void_p, c_char_pp, ctypes.c_size_t, c_void_pp, c_size_p, ctypes.c_size_t, c_int_p,
         ctypes.c_uint64, c_uint64_p],
    ),
    "kvtier_submit_set_v1_slots": (
        ctypes.c_int,
        [ctypes.c_void_p, c_char_pp, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, c_int_p,
         ctypes.c_uint64, c_uint64_p],
    ),
    "kvtier_submit_get_v1_slots": (
        ctypes.c_int,
        [ctypes.c_void_p, c_char_pp, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, c_int_p,
         ctypes.c_uint64, c_uint64_p],
    ),
    "kvtier_submit_exists": (
        ctypes.c_int,
        [ctypes.c_void_p, c_char_pp, ctypes.c_size_t, c_int_p, ctypes.c_uint64, c_uint64_p],
    ),
    "kvtier_async_fd": (ctypes.c_int, [ctypes.c_void_p, c_int_p]),
    "kvtier_drain": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.POINTER(Completion), ctypes.c_size_t, ctypes.c_int, c_size_p],
    ),
    "kvtier_cancel": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint64]),
    # prefill -> decode transfer endpoints; page id arrays as raw addresses (int64 tensors).
    "kvtier_endpoint_open": (
        ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(PoolLayout), c_void_pp]),
    "kvtier_endpoint_address": (
        ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]),
    "kvtier_endpoint_close": (None, [ctypes.c_void_p]),
    "kvtier_endpoint_connect": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, c_void_pp]),
    "kvtier_endpoint_layers_landed": (
        ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]),
    "kvtier_peer_close": (None, [ctypes.c_void_p]),
    "kvtier_peer_connected": (ctypes.c_int, [ctypes.c_void_p]),
    "kvtier_peer_write_pages": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int32,
         c_int_p],
    ),
    "kvtier_peer_read_pages": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int32,
         c_int_p],
    ),
}

for _name, (_restype, _argtypes) in _SIGNATURES.items():
    _fn = getattr(lib, _name)
    _fn.restype = _restype
    _fn.argtypes = _argtypes

VERSION = lib.kvtier_version_string().decode()
_number = lib.kvtier_version_number()
if _number // 10000 != ABI_MAJOR or _number < MIN_VERSION:
    raise ImportError(
        f"kvtier: libkvtier {VERSION} does not match this package (needs {ABI_MAJOR}.x >= 0.3.0)"
    )
