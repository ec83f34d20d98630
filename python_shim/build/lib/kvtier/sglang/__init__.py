"""SGLang HiCache storage backend over kvtier.

Start SGLang with:
    --hicache-storage-backend dynamic
    --hicache-storage-backend-extra-config '{"backend_name": "kvtier",
        "module_path": "kvtier.sglang", "class_name": "KvtierStorage", "interface_v1": 1,
        "model_revision": "<commit or weights hash>", "tiers": "memory", "memory_capacity": "64GiB"}'

Every extra_config key other than the engine's own (ENGINE_KEYS) and the model's identity
(IDENTITY_KEYS) is a kvtier setting (a KVTIER_* variable without the prefix, any case) and goes
to the store, which refuses unknown ones by name; `storage_dir`, as SGLang's file backends take
it, is kvtier's `file_dir`.

The package: config (settings, identity, namespace), pools (how each host pool's pages move),
storage (the class the engine builds).
"""

from .config import ENGINE_KEYS, IDENTITY_KEYS, namespace_for, store_settings  # noqa: F401
from .storage import KvtierStorage, PoolTransferResult  # noqa: F401
