"""kvpanel's benchmark client: LMCache's long-document QA benchmark against an OpenAI server.

    BenchParams, run_benchmark, run_benchmark_async  - the benchmark (long_doc_qa.py)
    BenchResult, RoundStats, RequestRecord            - what it measured (result.py)
    bench_main(argv)                                  - ``kvpanel bench long-doc-qa`` (cli.py)

Imports neither vllm nor matplotlib (the plot imports it lazily).
"""

from kvpanel.bench.cli import bench_main
from kvpanel.bench.long_doc_qa import (
    BenchCancelled,
    BenchError,
    BenchParams,
    run_benchmark,
    run_benchmark_async,
)
from kvpanel.bench.result import BenchResult, RequestRecord, RoundStats

__all__ = [
    "BenchCancelled",
    "BenchError",
    "BenchParams",
    "BenchResult",
    "RequestRecord",
    "RoundStats",
    "bench_main",
    "run_benchmark",
    "run_benchmark_async",
]
