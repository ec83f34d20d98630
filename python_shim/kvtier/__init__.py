"""kvtier: a tiered store for LLM KV-cache pages (ctypes binding of libkvtier)."""

from ._native import VERSION as __version__  # noqa: F401
from .errors import KvtierError, error_name, last_error  # noqa: F401
from . import errors as codes  # noqa: F401
from .store import LAYOUTS, Completion, Store  # noqa: F401
