"""A vLLM stat logger that feeds kvpanel's EngineSamples (runs in the API server's process).

vLLM calls ``record`` once per output batch on the event loop: it only copies a few numbers.
``SchedulerStats``/``IterationStats`` are not stable vLLM interfaces, so every field is read with
a default.
"""

from __future__ import annotations

from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase

from kvpanel.metrics.engine_samples import EngineSamples


def make_stat_logger_factory(samples: EngineSamples) -> Any:
    class KvpanelStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0):
            self.samples = samples

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
            *args: Any,
            **kwargs: Any,
        ) -> None:
            if scheduler_stats is not None:
                prefix = getattr(scheduler_stats, "prefix_cache_stats", None)
                self.samples.record_scheduler(
                    running=getattr(scheduler_stats, "num_running_reqs", 0),
                    waiting=getattr(scheduler_stats, "num_waiting_reqs", 0),
                    kv_usage=float(getattr(scheduler_stats, "kv_cache_usage", 0.0)),
                    prefix_queries=getattr(prefix, "queries", 0) if prefix else 0,
                    prefix_hits=getattr(prefix, "hits", 0) if prefix else 0,
                )
            if iteration_stats is not None:
                self.samples.record_iteration(
                    prompt_tokens=int(getattr(iteration_stats, "num_prompt_tokens", 0)),
                    generation_tokens=int(getattr(iteration_stats, "num_generation_tokens", 0)),
                    ttfts=list(getattr(iteration_stats, "time_to_first_tokens_iter", [])),
                    finished=len(getattr(iteration_stats, "finished_requests", [])),
                )

        def log_engine_initialized(self) -> None:
            pass

    return KvpanelStatLogger
