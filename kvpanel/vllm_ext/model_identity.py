"""What the fingerprint says about the model: the content of its weights and every engine setting
that changes the KV computed from given token ids.

Two parts, both in the fingerprint:
- ``weights_identity``: "<name>@<sha256 of the content>" for a local directory, a single file
  (GGUF) or a hub name found in the local hub cache (at the engine's revision); ``--model-id``
  replaces it when the operator vouches for the weights. ``None`` when kvpanel cannot read them.
- ``engine_identity``: the resolved model config vLLM runs with (after ``hf_overrides``, e.g. a
  changed rope_theta), model dtype, KV-cache dtype, quantization, load format, revision and LoRA.
  Always included, also with ``--model-id``, so one id cannot name two KV layouts.

Not included, on purpose: the tokenizer (the cache is keyed by token ids, and a tokenizer cannot
change the KV of given ids), sampling settings, the model's path (a copy elsewhere keeps the KV).

Reads vLLM's config objects by attribute only; imports no vLLM.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from kvpanel.settings import CacheSettings, ConfigError
from kvpanel.vllm_ext.weights_digest import model_digest

log = logging.getLogger("kvpanel")

# Keys of hf_config.to_dict() that name where the config came from, not what it computes.
_PROVENANCE_KEYS = frozenset({"_name_or_path", "_commit_hash", "transformers_version"})


class UnknownModelContentError(ConfigError):
    """Shared tiers were asked for a model whose weights kvpanel cannot read."""


def local_model_path(
    name: str, revision: str | None = None, download_dir: str | None = None
) -> Path | None:
    """The local directory or file holding ``name``'s weights, or None.

    A hub name is looked up in the local hub cache only (no network): by the time the offloading
    spec starts, vLLM has downloaded the weights it loaded there.
    """
    path = Path(name).expanduser()
    if path.exists():
        return path
    try:
        from huggingface_hub import snapshot_download

        found = snapshot_download(
            name, revision=revision, cache_dir=download_dir, local_files_only=True
        )
    except Exception:  # not cached, not a repo id, hub library missing: unknown content
        return None
    return Path(str(found))


def weights_identity(
    name: str, revision: str | None = None, download_dir: str | None = None
) -> str | None:
    """``<last path part>@<content digest>``, or None when the weights cannot be read."""
    path = local_model_path(name, revision, download_dir)
    if path is None:
        return None
    label = Path(name).name or name
    return f"{label}@{model_digest(path)[:32]}"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _config_dict(hf_config: Any) -> dict[str, Any]:
    raw = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(vars(hf_config))
    return {k: v for k, v in raw.items() if k not in _PROVENANCE_KEYS}


def engine_identity(vllm_config: Any) -> dict[str, Any]:
    """The engine settings that change the KV of given token ids, as canonical JSON values."""
    model = vllm_config.model_config
    cache = vllm_config.cache_config
    load = getattr(vllm_config, "load_config", None)
    lora = getattr(vllm_config, "lora_config", None)
    hf_config = _canonical(_config_dict(model.hf_config))
    return {
        "hf_config": hashlib.sha256(hf_config.encode()).hexdigest()[:32],
        "model_dtype": str(model.dtype).removeprefix("torch."),
        "kv_dtype": str(cache.cache_dtype),
        "kv_skip_layers": list(getattr(cache, "kv_cache_dtype_skip_layers", None) or []),
        "calculate_kv_scales": bool(getattr(cache, "calculate_kv_scales", False)),
        "quantization": str(model.quantization),
        "load_format": str(getattr(load, "load_format", None)),
        "revision": str(getattr(model, "revision", None)),
        "lora": lora is not None,
    }


def unknown_content_error(name: str, revision: str | None) -> UnknownModelContentError:
    at = f" at revision {revision}" if revision else ""
    return UnknownModelContentError(
        f"kvpanel cannot read the weights of model {name!r}{at} to fingerprint its KV; the disk "
        "and Redis tiers need a local model path or an explicit --model-id naming these exact "
        "weights (the CPU tier works without)"
    )


def shared_tiers_policy(
    settings: CacheSettings,
    weights: str | None,
    *,
    engine_known: bool,
    lora: bool,
    name: str,
    revision: str | None,
    weak_hashes: bool = False,
) -> CacheSettings:
    """The settings to run with: refuse or drop the shared tiers where a key could lie.

    Disk and Redis outlive the process and are shared by servers, so their keys must pin down
    the KV exactly; the CPU tier is private to this engine and lives as long as vLLM's own
    prefix cache, so it keeps whatever vLLM's block hashes distinguish.

    - vLLM's engine config not found (``engine_known`` false): ConfigError, since overrides
      and dtypes would be missing from the fingerprint.
    - Weights kvpanel cannot read (``weights is None``) and no ``--model-id``:
      UnknownModelContentError.
    - LoRA enabled: vLLM 0.32's block hashes carry the adapter's name and path (extra keys
      ``("lora", name, path)``), not its content, and kvpanel's manager sees only those hashes,
      so it cannot tell a LoRA request's chunk from a base-model one, nor an adapter rewritten in
      place under the same name and path. Adapters are loaded at request time, so none can be
      digested at start either. The disk and Redis tiers are therefore switched off for the
      whole engine (with a warning) and only the CPU tier serves: a chunk then never outlives the
      process that computed it.
    - ``weak_hashes`` (``--prefix-caching-hash-algo xxhash``, its seed not the operator's): a
      tenant who can find xxhash collisions could store KV under another prompt's block hashes,
      and disk and Redis would keep serving it to everyone; off, as for LoRA.
    """
    shared = bool(settings.disk_path or settings.remote_url)
    if not shared:
        return settings
    if not engine_known:
        raise ConfigError(
            "kvpanel cannot read this vLLM's engine config (model config after overrides, "
            "dtypes) to fingerprint its KV; the disk and Redis tiers are refused"
        )
    if weights is None:
        raise unknown_content_error(name, revision)
    if lora:
        log.warning(
            "kvpanel: LoRA is enabled: adapter content cannot be verified, so the disk and Redis "
            "tiers are off for this engine (CPU tier only)"
        )
        return replace(settings, disk_path=None, disk_bytes=0, remote_url=None)
    if weak_hashes:
        log.warning(
            "kvpanel: vLLM's prefix-caching hash is not collision resistant (xxhash) and its "
            "seed is not one you chose, so forged prompts could plant KV in shared tiers: the "
            "disk and Redis tiers are off for this engine (CPU tier only). Use sha256 (vLLM's "
            "default), or set PYTHONHASHSEED to a secret shared by your trusted servers"
        )
        return replace(settings, disk_path=None, disk_bytes=0, remote_url=None)
    return settings
