"""The demo engine's KV sizing (the README demo's end-to-end run is test_readme_demo.py)."""

from __future__ import annotations

from kvpanel.demo.engine import (
    CPU_KV_SPACE_ENV,
    DEMO_KV_TOKENS,
    DEMO_MAX_MODEL_LEN,
    demo_vllm_args,
    drop_cpu_kv_space,
)


def test_demo_kv_holds_one_full_prompt_but_not_a_few_documents():
    args = demo_vllm_args()
    kv_bytes = int(args[args.index("--kv-cache-memory-bytes") + 1])
    # tiny llama: 2 layers x 2 KV heads x 64 dims x (K, V) x 2 bytes per token
    assert kv_bytes == DEMO_KV_TOKENS * 1024
    assert int(args[args.index("--max-model-len") + 1]) == DEMO_MAX_MODEL_LEN <= DEMO_KV_TOKENS


def test_cpu_kv_space_is_dropped_with_a_warning_only_when_set():
    env = {CPU_KV_SPACE_ENV: "1", "OTHER": "x"}
    warning = drop_cpu_kv_space(env)
    assert env == {"OTHER": "x"}
    assert warning and f"{CPU_KV_SPACE_ENV}=1 ignored" in warning
    assert "--kv-cache-memory-bytes" in warning
    for env in ({}, {CPU_KV_SPACE_ENV: ""}):
        assert drop_cpu_kv_space(env) is None and CPU_KV_SPACE_ENV not in env
