"""From SGLang's storage_config to kvtier settings and a namespace.

A page's identity is everything that changes its bytes. The namespace carries the model and its
identity (revision, KV dtype), and each rank that holds its own slice of a page; the page format
of each pool (kind, layout, dtype, dimensions) goes into every key id (see pools.py).
"""

import hashlib
import json
import logging

logger = logging.getLogger("kvtier.sglang")

# extra_config keys that belong to SGLang (its dynamic-backend loader and its prefetch policy).
ENGINE_KEYS = {
    "backend_name", "module_path", "class_name", "interface_v1", "prefetch_threshold",
    "prefetch_timeout_base", "prefetch_timeout_per_ki_token", "hicache_storage_pass_prefix_keys",
}
# extra_config keys that name the model's weights beyond its served name: part of the identity,
# not kvtier settings. SGLang's served name can be the same for two checkpoints.
IDENTITY_KEYS = ("model_revision",)
# storage_config fields some SGLang versions carry that change a page's bytes ("auto" dtypes
# resolve to the pool's dtype, which the page format already holds).
CONFIG_IDENTITY_FIELDS = ("model_identity_hash", "kv_cache_dtype")
# extra_config names other storage backends use for a kvtier setting.
ALIASES = {"storage_dir": "file_dir"}


def get(cfg, name, default=None):
    """A field of storage_config, whether SGLang passes a dataclass or (tests, tools) a dict."""
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def identity(storage_config, kwargs=None) -> dict:
    """What names the model's weights and KV bytes besides its served name: `model_revision`
    from extra_config, `model_identity_hash` and `kv_cache_dtype` from storage_config (where
    this SGLang has them; a dtype of "auto" adds nothing)."""
    extra = {**(get(storage_config, "extra_config") or {}), **(kwargs or {})}
    out = {k: str(extra[k]) for k in IDENTITY_KEYS if extra.get(k) not in (None, "")}
    for field in CONFIG_IDENTITY_FIELDS:
        value = get(storage_config, field)
        if value not in (None, "", "auto"):
            out[field] = str(value)
    return out


def namespace_for(storage_config, base: str = "", kwargs=None) -> str:
    """The namespace of an engine process's pages: the model and its identity (a hash of
    identity(), so any string fits the 255-byte limit), then each rank that holds its own slice
    of a page (pipeline stage, attention-CP rank, and the TP rank for MHA; MLA pages are the same
    on every TP rank). Sizes of 1 add nothing. Without an identity, pages are shared by the
    served model name alone (the README says what to set)."""
    model = (get(storage_config, "model_name") or "").replace("/", "-")
    ident = identity(storage_config, kwargs)
    if ident:
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        model = f"{model}@{digest}"
    parts = [base, model]
    for rank, size, tag in (("pp_rank", "pp_size", "pp"), ("attn_cp_rank", "attn_cp_size", "cp")):
        if int(get(storage_config, size, 1) or 1) > 1:
            parts.append(f"{tag}{int(get(storage_config, rank, 0) or 0)}of"
                         f"{int(get(storage_config, size, 1))}")
    if not get(storage_config, "is_mla_model", False):
        parts.append(f"tp{int(get(storage_config, 'tp_rank', 0) or 0)}of"
                     f"{int(get(storage_config, 'tp_size', 1) or 1)}")
    return "/".join(p for p in parts if p)


def store_settings(storage_config, kwargs=None) -> dict:
    """The kvtier settings for an engine's storage_config (and the dynamic loader's kwargs):
    every extra_config key but the engine's own and the identity keys, without `kvtier_`."""
    extra = dict(get(storage_config, "extra_config") or {})
    extra.update(kwargs or {})
    settings = {}
    for key, value in extra.items():
        if key in ENGINE_KEYS or key in IDENTITY_KEYS:
            continue
        k = key.lower().removeprefix("kvtier_")
        k = ALIASES.get(k, k)
        settings[k] = value  # Store refuses ';', '=' and newlines in names and values
    settings["namespace"] = namespace_for(storage_config, str(settings.get("namespace", "")),
                                          kwargs)
    if not identity(storage_config, kwargs):
        logger.info("kvtier: no model_revision in extra_config: pages are shared with every "
                    "engine that serves the name %r", get(storage_config, "model_name"))
    return settings
