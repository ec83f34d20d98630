"""The engine's host pools: the memory kvtier registers, the path each pool's pages move by, and
how the engine's flat page (get_data_page) relates to the v1 value of the same page.

A pool's pages move by the first of these that works for it; any failure of a step, including
registering its memory or layout, falls through to the next:
    native - kvtier computes each page's fragments from the pool's layout (one C call per batch);
    meta   - the pool's own get_page_buffer_meta (one call per batch), zero-copy;
    flat   - the pool's get_data_page / set_from_flat_data_page, copying.
A pool is refused only when none can move its bytes exactly, with one log line naming why.
"""

import ctypes
import logging
from typing import Dict, List, Optional

from ..errors import BUFFER_TOO_SMALL, INVALID_ARG, SIZE_MISMATCH, KvtierError
from ..store import LAYOUTS, Store

logger = logging.getLogger("kvtier.sglang")


# ---- buffers and dtypes ------------------------------------------------------------------------

def is_tensor(t) -> bool:
    return hasattr(t, "data_ptr") and hasattr(t, "element_size")


def is_array(t) -> bool:
    return hasattr(t, "__array_interface__") and hasattr(t, "nbytes")


def nbytes(t) -> int:
    return t.numel() * t.element_size() if is_tensor(t) else t.nbytes


def address(t) -> int:
    return t.data_ptr() if is_tensor(t) else t.__array_interface__["data"][0]


def element_size(t) -> int:
    return t.element_size() if is_tensor(t) else t.itemsize


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def byte_view(t):
    """A writable uint8 numpy array over the bytes of a contiguous tensor or array (it must
    outlive the view), or None for anything else."""
    import numpy as np

    if is_tensor(t):
        contiguous = t.is_contiguous()
    elif is_array(t):
        contiguous = t.flags["C_CONTIGUOUS"]
    else:
        return None
    n = nbytes(t)
    if not contiguous:
        return None
    if n == 0:
        return np.zeros(0, dtype=np.uint8)
    return np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(address(t)))


def _contiguous(page):
    """A flat page as a contiguous tensor or array (bytes-like objects as a uint8 array)."""
    import numpy as np

    if is_tensor(page):
        return page.contiguous()
    if is_array(page):
        return np.ascontiguousarray(page)
    try:
        return np.frombuffer(memoryview(page).cast("B"), dtype=np.uint8)
    except (TypeError, ValueError):
        return None


def span(t):
    """(first byte, bytes) of the whole allocation behind a tensor or array, or None."""
    if is_tensor(t):
        storage = t.untyped_storage() if hasattr(t, "untyped_storage") else t.storage()
        n = storage.nbytes() if callable(getattr(storage, "nbytes", None)) else \
            storage.size() * t.element_size()
        return storage.data_ptr(), int(n)
    if is_array(t):
        while getattr(t, "base", None) is not None and is_array(t.base):
            t = t.base
        return t.__array_interface__["data"][0], t.nbytes
    return None


def buffers_of(pool):
    """The tensors and arrays a host pool holds (its attributes, and lists of them)."""
    for value in list(vars(pool).values()):
        for t in value if isinstance(value, (list, tuple)) else [value]:
            if is_tensor(t) or is_array(t):
                yield t


def indices(like, values):
    """int64 slot indices of the kind the pool works with (torch when its buffer is torch)."""
    import numpy as np

    arr = np.asarray(values, dtype=np.int64)
    if is_tensor(like):
        import torch

        return torch.from_numpy(arr)
    return arr


class Regions:
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

    def covers(self, ptrs, sizes) -> bool:
        """Whether every fragment lies inside one registered region."""
        return all(any(s <= int(p) and int(p) + int(n) <= e for s, e in self.spans.items())
                   for p, n in zip(ptrs, sizes))

    def clear(self) -> None:
        for s in list(self.spans):
            try:
                self.store.unregister_buffer(s)
            except KvtierError:
                pass
        self.spans.clear()


# ---- which layout a pool has -------------------------------------------------------------------

# kv_buffer shapes of SGLang's host pools (S tokens, L layers, P page size, H heads, D head_dim,
# C kv_cache_dim), as DESIGN.md's table gives them.
MHA_SHAPES = {
    "layer_first": lambda S, L, P, H, D: (2, L, S, H, D),
    "page_first": lambda S, L, P, H, D: (2, S, L, H, D),
    "page_first_direct": lambda S, L, P, H, D: (2, S // P, L, P, H, D),
}
MLA_SHAPES = {
    "layer_first": lambda S, L, P, C: (L, S, 1, C),
    "page_first": lambda S, L, P, C: (S, L, 1, C),
    "page_first_direct": lambda S, L, P, C: (S // P, L, P, 1, C),
}


def _tokens(shape, layout, P, mla) -> int:
    """The pool's size in tokens as its buffer's shape says (MLA and MHA differ by the leading 2)."""
    i = {"layer_first": 1, "page_first": 0, "page_first_direct": 0}[layout] + (0 if mla else 1)
    return shape[i] * (P if layout == "page_first_direct" else 1) if len(shape) > i else -1


def _kind_order(pool, engine_mla: bool):
    """MLA or MHA first: the pool's class says it where it can (SGLang names them
    MLATokenToKVPoolHost, MHATokenToKVPoolHost), else the engine's is_mla_model."""
    cls = type(pool).__name__.upper()
    if "MLA" in cls:
        return (True, False)
    if "MHA" in cls:
        return (False, True)
    return (True, False) if engine_mla else (False, True)


def native_layout(pool, engine_mla: bool) -> dict:
    """The register_layout arguments of a pool whose kv_buffer has one of the documented shapes,
    with every dimension the pool states agreeing; ValueError naming why otherwise. Which kind
    (MHA or MLA) is decided by the class, the engine and the shape, not by which attributes
    happen to exist (an MLA pool may carry head_num = 0)."""
    buf, layout = pool.kv_buffer, getattr(pool, "layout", None)
    if layout not in LAYOUTS:
        raise ValueError(f"its layout {layout!r} is not one kvtier computes")
    if not (is_tensor(buf) or is_array(buf)):
        raise ValueError("its kv_buffer is not one tensor")
    shape = tuple(int(x) for x in buf.shape)
    P, L = int(pool.page_size), int(pool.layer_num)
    common = dict(base=address(buf), layout=layout, page_size=P, layer_num=L,
                  dtype_size=element_size(buf), dtype_name=dtype_name(getattr(pool, "dtype",
                                                                               buf.dtype)))
    for mla in _kind_order(pool, engine_mla):
        S = _tokens(shape, layout, P, mla)
        if S <= 0:
            continue
        if mla:
            C = int(getattr(pool, "kv_cache_dim", 0) or 0) or \
                int(getattr(pool, "kv_lora_rank", 0) or 0) + \
                int(getattr(pool, "qk_rope_head_dim", 0) or 0) or shape[-1]
            if shape == MLA_SHAPES[layout](S, L, P, C):
                return dict(common, mla=True, kv_cache_dim=C, pool_tokens=S)
        else:
            H, D = int(getattr(pool, "head_num", 0) or 0), int(getattr(pool, "head_dim", 0) or 0)
            if H > 0 and D > 0 and shape == MHA_SHAPES[layout](S, L, P, H, D):
                return dict(common, mla=False, head_num=H, head_dim=D, pool_tokens=S)
    raise ValueError(f"its kv_buffer shape {shape} is no MHA or MLA {layout} shape of "
                     f"{L} layers and pages of {P}")


# ---- the engine's flat page against the v1 value -----------------------------------------------

SAME = "same"    # the flat page is the v1 value byte for byte
SPLIT = "split"  # the flat page holds every K entry, then every V entry (MHA layer_first); the
                 # v1 value interleaves them: K(l0), V(l0), K(l1), ...


def _split_to_v1(flat, entries: int):
    return flat.reshape(2, entries // 2, -1).transpose(1, 0, 2)


def flat_order_from_bytes(flat: bytes, value: bytes, entries: int) -> Optional[str]:
    """SAME or SPLIT when the bytes of one page prove it, else None. Bytes prove nothing when
    the value's entries are not all different (a pool still zero, as at the engine's start)."""
    import numpy as np

    if len(flat) != len(value) or entries < 1 or len(value) % entries:
        return None
    v = np.frombuffer(value, dtype=np.uint8).reshape(entries, -1)
    if len({row.tobytes() for row in v}) != entries or len(set(value[:4096])) < 2:
        return None
    if flat == value:
        return SAME
    f = np.frombuffer(flat, dtype=np.uint8)
    if entries % 2 == 0 and np.array_equal(_split_to_v1(f, entries).reshape(-1), v.reshape(-1)):
        return SPLIT
    return None


# ---- one host pool -----------------------------------------------------------------------------

class Pool:
    """A host pool and the store view that holds its pages. The view's page format names the
    pool's byte layout, so another format reads as misses. `flat` says how the engine's flat
    page maps onto the v1 value (SAME, SPLIT), or None where it cannot be known: then flat
    pages have a page format of their own."""

    def __init__(self, name: str, pool, view: Store, regions: Regions, engine_mla: bool):
        self.name, self.pool, self.view = name, pool, view
        self.page_size = int(getattr(pool, "page_size", 1) or 1)
        dtype = getattr(pool, "dtype", None)
        self.dtype = dtype_name(dtype) if dtype is not None else "?"
        self.mode, self.desc, self.flat = None, "", None
        self.entries = self.value_bytes = 0  # fragments and bytes of one page's v1 value
        self._kind = None  # native: the layout's kind and name, for the flat order
        why = []
        for step in (self._native, self._meta, self._flat):
            try:
                step(regions, engine_mla)
                break
            except Exception as e:  # noqa: BLE001 - any failure means "try the next path"
                why.append(f"{step.__name__.strip('_')}: {e}")
        if self.mode is None:
            raise KvtierError(INVALID_ARG, "no path moves its pages exactly (" +
                              "; ".join(why) + ")")
        self.flat = self._flat_order()
        logger.info("kvtier: pool %r (%s) moves pages by the %s path%s; flat pages: %s", name,
                    type(pool).__name__, self.mode, f" ({why[0]})" if why else "",
                    self.flat or "a format of their own")

    # -- the three paths, in order -----------------------------------------------------------
    def _native(self, regions: Regions, engine_mla: bool) -> None:
        dims = native_layout(self.pool, engine_mla)
        regions.add([span(self.pool.kv_buffer)])
        self.view.register_layout(**dims)
        disagree = self._meta_disagrees()
        if disagree:
            raise ValueError(disagree)
        self.mode = "native"
        self._kind = (dims["mla"], dims["layout"])
        self.desc = "native/" + "/".join(f"{k}={v}" for k, v in sorted(dims.items())
                                         if k not in ("base", "pool_tokens"))
        self._measure(self.view.page_buffer_meta(self._first_page())[1])

    def _meta(self, regions: Regions, engine_mla: bool) -> None:
        meta = getattr(self.pool, "get_page_buffer_meta", None)
        if not callable(meta):
            raise ValueError("the pool has no get_page_buffer_meta")
        regions.add(span(t) for t in buffers_of(self.pool))
        ptrs, sizes = meta(self._sample_slots())
        if not regions.covers(ptrs, sizes):
            raise ValueError("its get_page_buffer_meta points outside the pool's own buffers")
        sizes = [int(x) for x in meta(self._first_page())[1]]
        self.desc = (f"meta/{type(self.pool).__name__}/{self.dtype}/"
                     f"{getattr(self.pool, 'layout', '?')}/P={self.page_size}/{sizes}")
        self.view.set_page_format(self.desc)
        self.mode = "meta"
        self._measure(sizes)

    def _flat(self, regions: Regions, engine_mla: bool) -> None:
        if not all(callable(getattr(self.pool, f, None)) for f in
                   ("get_data_page", "set_from_flat_data_page", "get_dummy_flat_data_page")):
            raise ValueError("the pool has no get_data_page / set_from_flat_data_page")
        n = nbytes(self.pool.get_data_page(0, flat=True))
        self.desc = f"flat/{type(self.pool).__name__}/{self.dtype}/" \
                    f"{getattr(self.pool, 'layout', '?')}/{n}"
        self.view.set_page_format(self.desc)
        self.mode = "flat"
        self._measure([n])

    def _measure(self, sizes) -> None:
        self.entries, self.value_bytes = len(sizes), sum(int(s) for s in sizes)

    def _first_page(self):
        return indices(self.pool.kv_buffer, range(self.page_size))

    def _sample_slots(self):
        """Token slots of the first, a middle and the last page of the pool."""
        pages = max(int(getattr(self.pool, "size", self.page_size) or self.page_size)
                    // self.page_size, 1)
        picks = sorted({0, pages // 2, pages - 1})
        return indices(self.pool.kv_buffer, [p * self.page_size + t for p in picks
                                             for t in range(self.page_size)])

    def _meta_disagrees(self) -> Optional[str]:
        """The pool's own get_page_buffer_meta is the truth; kvtier's must match it exactly."""
        meta = getattr(self.pool, "get_page_buffer_meta", None)
        if not callable(meta):
            return None  # nothing to check against: the documented layout its shape shows
        slots = self._sample_slots()
        try:
            ptrs, sizes = meta(slots)
        except Exception as e:  # noqa: BLE001 - a pool whose meta fails takes another path
            return f"its get_page_buffer_meta failed: {type(e).__name__}: {e}"
        if self.view.page_buffer_meta(slots) != ([int(x) for x in ptrs], [int(x) for x in sizes]):
            return f"its get_page_buffer_meta differs from the {self.pool.layout} layout"
        return None

    def _flat_order(self) -> Optional[str]:
        """SAME or SPLIT, from the layout where kvtier knows it (checked against the bytes when
        they can tell), from one page's bytes otherwise; None when unknown."""
        if self.mode == "flat":
            return SAME
        known = None
        if self._kind is not None:
            mla, layout = self._kind
            known = SPLIT if (not mla and layout == "layer_first") else SAME
        try:
            get_page = getattr(self.pool, "get_data_page", None)
            if not callable(get_page):
                return known
            flat = get_page(0, flat=True)
            if nbytes(flat) != self.value_bytes:
                return None
            ptrs, sizes = (self.view.page_buffer_meta(self._first_page()) if self.mode == "native"
                           else self.pool.get_page_buffer_meta(self._first_page()))
            value = b"".join(ctypes.string_at(int(p), int(n)) for p, n in zip(ptrs, sizes))
            seen = flat_order_from_bytes(bytes(byte_view(flat.contiguous() if is_tensor(flat)
                                                         else flat)), value, self.entries)
        except Exception as e:  # noqa: BLE001 - unknown means "a format of their own"
            logger.info("kvtier: pool %r: its flat page could not be compared: %s", self.name, e)
            return None
        if known is not None and seen is not None and seen != known:
            logger.warning("kvtier: pool %r: its flat page is not the %s layout's; flat pages "
                           "get a format of their own", self.name, self.pool.layout)
            return None
        return known or seen

    # -- zero-copy data paths: each returns one code per key (0 = done) ----------------------
    def io(self, keys: List[str], host_indices, write: bool) -> List[int]:
        if self.mode == "native":
            call = self.view.batch_set_v1_slots if write else self.view.batch_get_v1_slots
            return call(keys, host_indices)
        if len(host_indices) < len(keys) * self.page_size:
            raise KvtierError(INVALID_ARG, f"{len(host_indices)} host indices for {len(keys)} "
                                           f"pages of {self.page_size}")
        if self.mode == "meta":
            import numpy as np

            ptrs, sizes = self.pool.get_page_buffer_meta(host_indices)
            ptrs, sizes = np.asarray(ptrs, dtype=np.uint64), np.asarray(sizes, dtype=np.uint64)
            call = self.view.batch_set_v1 if write else self.view.batch_get_v1
            return call(keys, ptrs, sizes)
        starts = [int(host_indices[i * self.page_size]) for i in range(len(keys))]
        if write:
            return self.set_flat(keys, [self.pool.get_data_page(s, flat=True) for s in starts])
        pages = [self.pool.get_dummy_flat_data_page() for _ in keys]
        out = []
        for s, page, r in zip(starts, pages, self.get_flat(keys, pages)):
            if r == 0:
                self.pool.set_from_flat_data_page(s, page)
            out.append(r)
        return out

    # -- the engine's flat pages, in this pool's format: one code per key (0 = done) ---------
    def set_flat(self, keys: List[str], pages) -> List[int]:
        """Stores flat pages as the v1 values of this pool (SAME or SPLIT)."""
        values, bad = [], {}
        for i, page in enumerate(pages):
            b = byte_view(_contiguous(page))
            if b is None or b.size != self.value_bytes:
                bad[i] = SIZE_MISMATCH
                values.append(b"\0")
            else:
                values.append(b if self.flat == SAME else
                              _split_to_v1(b, self.entries).copy())
        return self._merge(keys, values, bad, self.view.batch_set)

    def get_flat(self, keys: List[str], targets) -> List[int]:
        """Fills flat pages from this pool's v1 values; a target of another size is not
        touched (BUFFER_TOO_SMALL or SIZE_MISMATCH)."""
        import numpy as np

        views = [byte_view(t) for t in targets]
        bad = {i: (SIZE_MISMATCH if v is None or v.size > self.value_bytes else BUFFER_TOO_SMALL)
               for i, v in enumerate(views) if v is None or v.size != self.value_bytes}
        if self.flat == SAME:
            got = self._merge(keys, views, bad, self.view.batch_get)
            return [0 if r == self.value_bytes else (r if r < 0 else SIZE_MISMATCH) for r in got]
        staging = np.empty((len(keys), self.value_bytes), dtype=np.uint8)
        got = self._merge(keys, list(staging), bad, self.view.batch_get)
        out = []
        for i, r in enumerate(got):
            if r == self.value_bytes:
                _split_to_v1(views[i], self.entries)[...] = \
                    staging[i].reshape(self.entries // 2, 2, -1)
                r = 0
            out.append(r if r <= 0 else SIZE_MISMATCH)
        return out

    @staticmethod
    def _merge(keys, values, bad: dict, call) -> List[int]:
        """call() on the keys not in `bad`; bad keys keep their own code."""
        good = [i for i in range(len(keys)) if i not in bad]
        res = call([keys[i] for i in good], [values[i] for i in good]) if good else []
        out = [bad.get(i, 0) for i in range(len(keys))]
        for i, r in zip(good, res):
            out[i] = r
        return out

    def close(self) -> None:
        self.view.close()
