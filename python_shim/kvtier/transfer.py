"""Prefill -> decode with no store in between: write pages straight into the decode engine's
host pool, or read them from it, by page (block) id. Over the C ABI's kvtier_endpoint_* calls.

    decode = Endpoint(pool, layout="page_first", page_size=64, layer_num=28, head_num=8,
                      head_dim=128, config="p2p_listen=0.0.0.0:7600;p2p_token=secret")
    prefill = Endpoint(other_pool, ..., config="p2p_token=secret")
    peer = prefill.connect(decode.address)
    peer.write_pages([3, 4], [10, 11])            # whole pages
    peer.write_pages([3, 4], [10, 11], layer=0)   # one layer, while the next is computed

`pool` is a numpy array or torch tensor (the engine's host pool, any alignment) in one of the
layouts kvtier knows (MHA/MLA x layer_first/page_first/page_first_direct). Both ends need the
same page format. `RDMACommunicator` offers the same in the shape FastDeploy's engine calls.
"""

import ctypes
from typing import Dict, List, Optional, Sequence, Tuple

from . import _native
from .errors import CLOSED, INVALID_ARG, UNAVAILABLE, KvtierError, check
from .store import LAYOUTS, POOL_MHA, POOL_MLA, Closing

_lib = _native.lib


def _buffer(pool) -> Tuple[int, int, str, int]:
    """(address, bytes, dtype name, element size) of a numpy array or torch tensor."""
    if hasattr(pool, "data_ptr") and hasattr(pool, "element_size"):
        if not pool.is_contiguous():
            raise KvtierError(INVALID_ARG, "the pool tensor must be contiguous")
        return (pool.data_ptr(), pool.numel() * pool.element_size(),
                str(pool.dtype).removeprefix("torch."), pool.element_size())
    if hasattr(pool, "__array_interface__"):
        if not pool.flags["C_CONTIGUOUS"]:
            raise KvtierError(INVALID_ARG, "the pool array must be C-contiguous")
        return pool.__array_interface__["data"][0], pool.nbytes, str(pool.dtype), pool.itemsize
    raise KvtierError(INVALID_ARG, f"a pool must be a numpy array or torch tensor, not {type(pool)}")


def _ids(ids) -> Tuple[int, int, object]:
    """(address, count, keep-alive) of page ids as int64."""
    import numpy as np

    if hasattr(ids, "data_ptr"):
        ids = ids.detach().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(ids, dtype=np.int64))
    return arr.__array_interface__["data"][0], arr.size, arr


class Peer(Closing):
    """A connection to another endpoint. Thread-safe; reconnects after a failure."""

    def __init__(self, handle, address: str):
        self._h, self.address = handle, address

    def _move(self, call, local, remote, layer) -> List[int]:
        la, n, keep_l = _ids(local)
        ra, m, keep_r = _ids(remote)
        if n != m:
            raise KvtierError(INVALID_ARG, f"{n} local pages but {m} remote pages")
        if n == 0:
            return []
        res = (ctypes.c_int * n)()
        call(self.handle, la, ra, n, -1 if layer is None else int(layer), res)
        del keep_l, keep_r
        return list(res)

    def write_pages(self, local, remote, layer: Optional[int] = None) -> List[int]:
        """Local pages -> the peer's pages (whole, or one layer). 0 or a code per page."""
        return self._move(_lib.kvtier_peer_write_pages, local, remote, layer)

    def read_pages(self, local, remote, layer: Optional[int] = None) -> List[int]:
        """The peer's pages -> local pages. 0 or a code per page."""
        return self._move(_lib.kvtier_peer_read_pages, local, remote, layer)

    @property
    def connected(self) -> bool:
        return bool(self._h) and _lib.kvtier_peer_connected(self._h) == 1

    @property
    def handle(self):
        if not self._h:
            raise KvtierError(CLOSED, "peer is closed")
        return self._h

    def close(self) -> None:
        h, self._h = self._h, None
        if h:
            _lib.kvtier_peer_close(h)


class Endpoint(Closing):
    """One engine host pool behind a listening endpoint."""

    def __init__(self, pool, *, layout: str, page_size: int, layer_num: int, head_num: int = 0,
                 head_dim: int = 0, kv_cache_dim: int = 0, mla: bool = False,
                 config: Optional[str] = None):
        if layout not in LAYOUTS:
            raise KvtierError(INVALID_ARG, f"layout {layout!r} is not one of {sorted(LAYOUTS)}")
        base, nbytes, dtype, itemsize = _buffer(pool)
        token = (kv_cache_dim if mla else 2 * head_num * head_dim) * itemsize * layer_num
        if token == 0 or nbytes % token:
            raise KvtierError(INVALID_ARG, f"a pool of {nbytes} bytes is not a whole number of tokens")
        self._pool = pool  # keeps the memory alive while the endpoint serves it
        self._name = dtype.encode()
        spec = _native.PoolLayout(
            ctypes.sizeof(_native.PoolLayout), base, POOL_MLA if mla else POOL_MHA,
            LAYOUTS[layout], page_size, layer_num, head_num, head_dim, kv_cache_dim, itemsize,
            nbytes // token, self._name)
        h = ctypes.c_void_p()
        check(_lib.kvtier_endpoint_open(config.encode() if config else None, ctypes.byref(spec),
                                        ctypes.byref(h)))
        self._h = h
        buf = ctypes.create_string_buffer(256)
        check(_lib.kvtier_endpoint_address(h, buf, len(buf)))
        self.address = buf.value.decode()

    def connect(self, address: str) -> Peer:
        out = ctypes.c_void_p()
        check(_lib.kvtier_endpoint_connect(self._h, address.encode(), ctypes.byref(out)))
        return Peer(out, address)

    def layers_landed(self, pages) -> List[int]:
        """Per page id of this pool: the layers peers have written into it whole so far (a
        whole page counts layer_num). A page whose count rose by layer_num has arrived whole."""
        import numpy as np

        addr, n, keep = _ids(pages)
        if n == 0:
            return []
        out = np.zeros(n, dtype=np.uint64)
        check(_lib.kvtier_endpoint_layers_landed(self._h, addr, n,
                                                 out.__array_interface__["data"][0]))
        del keep
        return out.tolist()

    def close(self) -> None:
        h, self._h = getattr(self, "_h", None), None
        if h:
            _lib.kvtier_endpoint_close(h)


class RDMACommunicator:
    """For engines written against FastDeploy's KV-cache communicator: connect by ip and port,
    then write_cache(ip, port, local_block_ids, remote_block_ids, layer_idx). Returns 0 when
    every block moved, else the first block's code. RDMA where both hosts have a device, TCP
    otherwise (the name is the interface's, not a promise about the wire)."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self._peers: Dict[Tuple[str, int], Peer] = {}

    def connect(self, ip: str, port: int) -> bool:
        try:
            self._peers[ip, int(port)] = self.endpoint.connect(f"{ip}:{int(port)}")
            return True
        except KvtierError:
            return False

    def is_connected(self, ip: str, port: int) -> bool:
        peer = self._peers.get((ip, int(port)))
        return peer is not None and peer.connected

    def write_cache(self, ip: str, port: int, local_block_ids: Sequence[int],
                    remote_block_ids: Sequence[int], layer_idx: Optional[int] = None) -> int:
        peer = self._peers.get((ip, int(port)))
        if peer is None:
            return UNAVAILABLE  # connect first
        codes = peer.write_pages(local_block_ids, remote_block_ids, layer_idx)
        return next((c for c in codes if c != 0), 0)
