"""GPU correctness check (run on the H200 by run_h200.sh): kvpanel inside vLLM on CUDA.

A tiny Llama with random weights (written here with transformers, no hub), prompts computed,
stored through kvpanel's Triton kernels into pinned CPU slots and the disk tier, then served back
(same process: CPU tier; new process: disk tier). Greedy tokens must match the recomputed run
and logprobs stay within 1e-3. Prints one JSON document.

    python benchmarks/gpu/e2e_check.py [--tensor-parallel-size N]
With N > 1 (one GPU per rank) the engines run vLLM's multiprocess executor and kvpanel's workers
share the store's host pool (kvpanel/cache/host_pool.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def run(spec: dict, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.vllm_ext.engine_script",
            str(work / "spec.json"),
            str(work / "out.json"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:]}
    return json.loads((work / "out.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    tp = ap.parse_args().tensor_parallel_size
    from kvpanel.demo.tiny_models import write_tiny_model

    engine: dict = {"gpu_memory_utilization": 0.3}
    if tp > 1:
        engine.update(tensor_parallel_size=tp, distributed_executor_backend="mp")

    tmp = Path(tempfile.mkdtemp())
    model = str(write_tiny_model(tmp / "llama", "llama", seed=0))
    rng = random.Random(0)
    prompt = [rng.randrange(10, 30000) for _ in range(1100)]  # 4 full 256-token chunks
    settings = {"cpu_bytes": 256 << 20, "disk_path": str(tmp / "disk"), "disk_bytes": 1 << 30}
    first = run(
        {
            "model": model,
            "settings": settings,
            "rounds": [[prompt], [prompt]],
            "engine_kwargs": engine,
        },
        tmp / "a",
    )
    second = run(
        {
            "model": model,
            "settings": settings,
            "rounds": [[prompt]],
            "engine_kwargs": engine,
        },
        tmp / "b",
    )
    report: dict = {"tensor_parallel_size": tp, "first": first, "second": second}
    try:
        ref = first["rounds"][0]["outputs"][0]
        for name, out in (
            ("cpu_hit", first["rounds"][1]["outputs"][0]),
            ("disk_hit", second["rounds"][0]["outputs"][0]),
        ):
            diff = max(abs(a - b) for a, b in zip(out["logprobs"], ref["logprobs"], strict=True))
            report[name] = {
                "cached": out["cached"],
                "tokens_equal": out["tokens"] == ref["tokens"],
                "max_logprob_diff": diff,
            }
    except (KeyError, IndexError, TypeError) as e:
        report["check_error"] = repr(e)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
