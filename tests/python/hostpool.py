"""A host pool laid out the way SGLang's MHA and MLA host pools lay theirs out, in numpy, and a
re-statement of their get_page_buffer_meta formula to check kvtier's native one against."""

import numpy as np

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


class HostPool:
    """mla=False: MHA with head_num/head_dim; mla=True: MLA with kv_cache_dim. dtype bf16-like
    (2 bytes, stored as uint16) unless itemsize says otherwise. Random contents. The base is
    `misalign` bytes past a 4 KiB boundary, as pinned engine pools often are."""

    def __init__(self, *, mla, layout, size, page_size, layer_num, head_num=0, head_dim=0,
                 kv_cache_dim=0, itemsize=2, misalign=64, seed=0):
        self.mla, self.layout, self.size, self.page_size = mla, layout, size, page_size
        self.layer_num, self.head_num, self.head_dim = layer_num, head_num, head_dim
        self.kv_cache_dim, self.itemsize = kv_cache_dim, itemsize
        dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32}[itemsize]
        if mla:
            shape = MLA_SHAPES[layout](size, layer_num, page_size, kv_cache_dim)
        else:
            shape = MHA_SHAPES[layout](size, layer_num, page_size, head_num, head_dim)
        nbytes = int(np.prod(shape)) * itemsize
        self._raw = np.zeros(nbytes + 8192, dtype=np.uint8)
        start = (-self._raw.ctypes.data) % 4096 + misalign
        self.bytes = self._raw[start:start + nbytes]
        self.buffer = self.bytes.view(dtype).reshape(shape)
        rng = np.random.default_rng(seed)
        self.bytes[:] = rng.integers(0, 256, nbytes, dtype=np.uint8)
        # The attributes SGLang's host pools expose and the adapter reads.
        self.kv_buffer = self.buffer
        self.dtype = self.buffer.dtype
        if mla:  # kv_cache_dim = kv_lora_rank + qk_rope_head_dim
            self.qk_rope_head_dim = kv_cache_dim // 3
            self.kv_lora_rank = kv_cache_dim - self.qk_rope_head_dim

    def data_ptr(self):
        return self.bytes.ctypes.data

    @property
    def nbytes(self):
        return self.bytes.nbytes

    def get_page_buffer_meta(self, indices):
        """The engine's formula, restated: pointers and sizes of each page's entries."""
        E, L, S, P = self.itemsize, self.layer_num, self.size, self.page_size
        base, ptrs = self.data_ptr(), []
        if self.mla:
            C = self.kv_cache_dim
            for idx in indices[::P]:
                if self.layout == "layer_first":
                    for layer in range(L):
                        ptrs.append(base + (layer * S + int(idx)) * C * E)
                else:
                    ptrs.append(base + int(idx) * L * C * E)
            size = P * C * E if self.layout == "layer_first" else L * P * C * E
            return ptrs, [size] * len(ptrs)
        H, D = self.head_num, self.head_dim
        v_offset = L * S * H * D * E
        for idx in indices[::P]:
            if self.layout == "layer_first":
                for layer in range(L):
                    k = base + int(idx) * H * D * E + layer * S * H * D * E
                    ptrs += [k, k + v_offset]
            else:
                k = base + int(idx) * L * H * D * E
                ptrs += [k, k + v_offset]
        size = P * H * D * E if self.layout == "layer_first" else L * P * H * D * E
        return ptrs, [size] * len(ptrs)

    # The engine's flat-page calls, as SGLang's host pools define them (index: a token slot).
    def _page_view(self, index):
        P, s, b = self.page_size, int(index), self.buffer
        if self.mla:
            if self.layout == "layer_first":
                return b[:, s:s + P]
            return b[s:s + P] if self.layout == "page_first" else b[s // P]
        if self.layout == "layer_first":
            return b[:, :, s:s + P]  # K of every layer, then V: not the v1 entry order
        return b[:, s:s + P] if self.layout == "page_first" else b[:, s // P]

    def get_data_page(self, index, flat=True):
        page = np.ascontiguousarray(self._page_view(index))
        return page.reshape(-1) if flat else page

    def get_dummy_flat_data_page(self):
        return np.zeros(self.get_data_page(0).size, dtype=self.buffer.dtype)

    def set_from_flat_data_page(self, index, data_page):
        view = self._page_view(index)
        view[...] = np.asarray(data_page).view(self.buffer.dtype).reshape(view.shape)

    def page_bytes(self, slot):
        """The engine's flat page for the page starting at `slot`, from numpy indexing."""
        P, s = self.page_size, slot
        b = self.buffer
        if self.mla:
            if self.layout == "layer_first":
                parts = [b[layer, s:s + P] for layer in range(self.layer_num)]
            elif self.layout == "page_first":
                parts = [b[s:s + P]]
            else:
                parts = [b[s // P]]
        elif self.layout == "layer_first":
            parts = [b[kv, layer, s:s + P] for layer in range(self.layer_num) for kv in (0, 1)]
        elif self.layout == "page_first":
            parts = [b[kv, s:s + P] for kv in (0, 1)]
        else:
            parts = [b[kv, s // P] for kv in (0, 1)]
        return b"".join(np.ascontiguousarray(p).tobytes() for p in parts)

    def register_with(self, store):
        store.register_buffer(self.data_ptr(), self.nbytes)
        store.register_layout(
            self.data_ptr(), mla=self.mla, layout=self.layout, page_size=self.page_size,
            layer_num=self.layer_num, head_num=self.head_num, head_dim=self.head_dim,
            kv_cache_dim=self.kv_cache_dim, dtype_size=self.itemsize, pool_tokens=self.size,
        )


class StatePool:
    """A Mamba-like state pool of a hybrid model: one state row per slot (page_size 1), a
    layout kvtier does not know, so it is reached through its get_page_buffer_meta."""

    def __init__(self, rows, state_bytes, seed=0):
        self.page_size, self.layout = 1, "state"
        self.kv_buffer = np.random.default_rng(seed).integers(0, 256, (rows, state_bytes),
                                                              dtype=np.uint8)
        self.dtype = self.kv_buffer.dtype

    def get_page_buffer_meta(self, indices):
        base, row = self.kv_buffer.ctypes.data, self.kv_buffer.shape[1]
        ptrs = [base + int(i) * row for i in indices]
        return ptrs, [row] * len(ptrs)


def slots_for(pages, page_size):
    """host_indices for whole pages, as the engine passes them (int64, page_size per page)."""
    parts = [np.arange(p * page_size, (p + 1) * page_size, dtype=np.int64) for p in pages]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


ALL_POOLS = [
    dict(mla=False, layout="layer_first", page_size=4, layer_num=3, head_num=2, head_dim=8),
    dict(mla=False, layout="page_first", page_size=4, layer_num=3, head_num=2, head_dim=8),
    dict(mla=False, layout="page_first_direct", page_size=4, layer_num=3, head_num=2, head_dim=8),
    dict(mla=True, layout="layer_first", page_size=8, layer_num=5, kv_cache_dim=24),
    dict(mla=True, layout="page_first", page_size=8, layer_num=5, kv_cache_dim=24),
    dict(mla=True, layout="page_first_direct", page_size=8, layer_num=5, kv_cache_dim=24),
]


def pool_id(p):
    return ("MLA_" if p["mla"] else "MHA_") + p["layout"]
