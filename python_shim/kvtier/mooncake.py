"""A Mooncake Store-style API over kvtier, for engines written against Mooncake's Python store.
Return conventions follow Mooncake: put calls give 0 or a negative code per key, get calls the
bytes read or a negative code, is_exist 1, 0 or a negative code."""

import ctypes
from typing import List, Optional, Sequence

from .errors import SIZE_MISMATCH, KvtierError
from .store import Closing, Store


class MooncakeStore(Closing):
    def __init__(self, config=None):
        self.store = Store(config)

    def setup(self, *args, **kwargs) -> int:
        """Mooncake's cluster setup; kvtier reads its settings at construction. Returns 0."""
        return 0

    def close(self) -> None:
        store = getattr(self, "store", None)  # None if __init__ failed
        if store is not None:
            store.close()

    def register_buffer(self, ptr: int, size: int) -> int:
        try:
            self.store.register_buffer(ptr, size)
            return 0
        except KvtierError as e:
            return e.code

    def unregister_buffer(self, ptr: int) -> int:
        try:
            self.store.unregister_buffer(ptr)
            return 0
        except KvtierError as e:
            return e.code

    def batch_put_from(self, keys: Sequence[str], ptrs: Sequence[int],
                       sizes: Sequence[int], config=None) -> List[int]:
        return self.batch_put_from_multi_buffers(keys, [[p] for p in ptrs], [[s] for s in sizes])

    def batch_get_into(self, keys: Sequence[str], ptrs: Sequence[int],
                       sizes: Sequence[int]) -> List[int]:
        return self.batch_get_into_multi_buffers(keys, [[p] for p in ptrs], [[s] for s in sizes])

    def batch_put_from_multi_buffers(self, keys, all_ptrs: Sequence[Sequence[int]],
                                     all_sizes: Sequence[Sequence[int]], config=None) -> List[int]:
        return self._multi(self.store.batch_set_v1, keys, all_ptrs, all_sizes, report_bytes=False)

    def batch_get_into_multi_buffers(self, keys, all_ptrs: Sequence[Sequence[int]],
                                     all_sizes: Sequence[Sequence[int]]) -> List[int]:
        return self._multi(self.store.batch_get_v1, keys, all_ptrs, all_sizes, report_bytes=True)

    def _multi(self, call, keys, all_ptrs, all_sizes, report_bytes) -> List[int]:
        n = len(keys)
        if n == 0:
            return []
        if len(all_ptrs) != n or len(all_sizes) != n:
            return [-2] * n
        counts = {len(p) for p in all_ptrs} | {len(s) for s in all_sizes}
        if len(counts) != 1:
            # Keys with different fragment counts: one call per key keeps the C ABI's shape.
            out = []
            for k, p, s in zip(keys, all_ptrs, all_sizes):
                out += self._multi(call, [k], [p], [s], report_bytes)
            return out
        ptrs = [p for per in all_ptrs for p in per]
        sizes = [s for per in all_sizes for s in per]
        try:
            res = call(list(keys), ptrs, sizes)
        except KvtierError as e:
            return [e.code] * n
        if not report_bytes:
            return res
        out = [sum(all_sizes[i]) if r == 0 else r for i, r in enumerate(res)]
        # Mooncake's rule: buffers at least as large as the object get it. The zero-copy read
        # takes only exact sizes (and checked the buffers are registered before the size), so
        # a smaller object is read again through the copying call and scattered.
        smaller = [i for i, r in enumerate(res) if r == SIZE_MISMATCH]
        if smaller:
            got = self._get_scattered([keys[i] for i in smaller], [all_ptrs[i] for i in smaller],
                                      [all_sizes[i] for i in smaller])
            for i, r in zip(smaller, got):
                out[i] = r
        return out

    def _get_scattered(self, keys, all_ptrs, all_sizes) -> List[int]:
        bufs = [bytearray(sum(sizes)) for sizes in all_sizes]
        try:
            res = self.store.batch_get(list(keys), bufs)
        except KvtierError as e:
            return [e.code] * len(keys)
        for buf, ptrs, sizes, r in zip(bufs, all_ptrs, all_sizes, res):
            if r <= 0:
                continue
            src = (ctypes.c_char * len(buf)).from_buffer(buf)
            done = 0
            for p, sz in zip(ptrs, sizes):
                take = min(sz, r - done)
                if take <= 0:
                    break
                ctypes.memmove(p, ctypes.addressof(src) + done, take)
                done += take
        return res

    def put(self, key: str, value: bytes, config=None) -> int:
        return self.store.batch_set([key], [value])[0]

    def get(self, key: str, size: int) -> Optional[bytes]:
        buf = bytearray(size)
        r = self.store.batch_get([key], [buf])[0]
        return bytes(buf[:r]) if r >= 0 else None

    def is_exist(self, key: str) -> int:
        try:
            return self.store.batch_exists([key])
        except KvtierError as e:
            return e.code

    def batch_is_exist(self, keys: Sequence[str]) -> List[int]:
        return [self.is_exist(k) for k in keys]

    def remove(self, key: str) -> int:
        try:
            return self.store.remove([key])[0]
        except KvtierError as e:
            return e.code
