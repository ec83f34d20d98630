"""`from mooncake.store import MooncakeDistributedStore, ReplicateConfig`, answered by kvtier
(the opt-in drop-in: see the package's docstring)."""

from kvtier.mooncake import BufferHandle, MooncakeDistributedStore, ReplicateConfig  # noqa: F401
