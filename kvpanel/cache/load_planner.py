"""Load or recompute: offer a lower-tier hit only where it arrives before the engine could
recompute it, so that a slow disk or Redis never makes a request slower than having no tier,
and under load the tier serves some requests while the GPU recomputes others.

Primitives (the rates it decides on: ``kvpanel.cache.rates``):
- ``RequestPlan``: one request's decisions: per tier, the prompt position from which its chunks
  are recomputed rather than loaded (its prefix up to there is loaded: both at once).
- ``LoadPlanner``: per chunk of a request's prompt, in order, ``admit(tier, backlog_bytes,
  prefix_tokens)``: True unless loading it from ``tier`` behind what that tier still has to read
  is expected to take longer than recomputing the prefix up to it behind the prompts the engine
  already has to recompute. Also the
  engine-side bookkeeping: ``note_computed(tokens)``, ``note_recompute(tokens_held)`` (a request
  went to the engine), ``note_request_tokens(tokens, chunks)`` (prompt sizes in tokens and in
  chunks to load, for the expectation: a model with several KV groups has several chunks per
  prompt position, a sliding-window group only the last few); ``note_arrival()`` /
  ``note_started()`` (a request was given to the engine / the engine first asked about it).

The engine's queue includes the requests it was given and has not asked about yet: vLLM asks
about a waiting request only once it has room to schedule it, so at every lookup the engine
looks idle and recomputing the one request asked about always looks faster than a disk that
reads ~1 GB/s (the H200 restart run: "recomputing from token 0 ... 0 queued" for every request).
Counting up to two of those requests (at the mean prompt size) as recompute work, a lower
tier is offered while it delivers before the engine would be through them: the tier reads
beside the GPU instead of never, and since the engine is busy until then anyway, the round
ends no later than with no tier. The price: a loaded request can start later than if the
engine had taken it at once, by at most the engine's time on two mean prompts (as if it stood
third in line), while the requests behind it start sooner. A tier slower than that, or a
single request on an idle engine, goes to the faster of the two as before.

Until a tier's read rate and the engine's rate have both been measured, everything is
admitted: a decision needs measurements, and a cold start must not turn tiers off. A restart
starts from the previous run's measurements (``to_json``/``seed_from_json``, kept next to the
disk tier's files) and a short read probe of the disk tier (``TieredStore``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from kvpanel.cache.rates import BusyRate, PeakRate

log = logging.getLogger("kvpanel")

# Waiting requests counted as the engine's queue: a loaded request then waits at most as long
# as it would standing third in that queue, however many wait (or however slow the tier).
_WAITING_COUNTED = 2


class RequestPlan:
    """Where a request stops loading from each tier: chunks at or past the cutoff position are
    recomputed. Sticky, so every later poll and every KV group gets the same answer."""

    __slots__ = ("cutoff",)

    def __init__(self) -> None:
        self.cutoff: dict[str, int] = {}

    def decide(self, tier: str, position: int, admit: Callable[[], bool]) -> bool:
        cut = self.cutoff.get(tier)
        if cut is not None:
            return position < cut
        if admit():
            return True
        self.cutoff[tier] = position
        return False


class LoadPlanner:
    def __init__(self, chunk_bytes: int, chunk_tokens: int) -> None:
        self._chunk_bytes = chunk_bytes
        self._chunk_tokens = chunk_tokens
        self.reads: dict[str, BusyRate] = {"disk": BusyRate(), "remote": BusyRate()}
        self.engine = PeakRate()
        self._lock = threading.Lock()
        self._prompt_tokens: float | None = None  # mean prompt size seen
        # Chunks a load reads per prompt token: one per position until loads are seen (a
        # recompute stores every KV group's chunks, a load of a sliding-window group reads only
        # the last few, so only loads can tell).
        self._chunks_per_token = 1.0 / chunk_tokens
        self._backlog_tokens = 0.0  # prompt tokens the engine still has to recompute (estimate)
        self._backlog_at = time.monotonic()
        self._waiting = 0  # requests given to the engine and not asked about yet
        self._next_log = 0.0

    # ----- engine side ------------------------------------------------------------------------

    def note_computed(self, tokens: int) -> None:
        self.engine.add(tokens)

    def note_request_tokens(self, tokens: int, chunks: int | None = None) -> None:
        if tokens <= 0:
            return
        with self._lock:
            mean = self._prompt_tokens
            self._prompt_tokens = tokens if mean is None else 0.8 * mean + 0.2 * tokens
            if chunks:
                self._chunks_per_token = 0.8 * self._chunks_per_token + 0.2 * chunks / tokens

    def note_recompute(self, tokens_held: int = 0) -> None:
        """A request goes to the engine (a miss or a skipped hit) with ``tokens_held`` of its
        prompt already found in the tiers: the rest of a mean prompt joins the backlog."""
        with self._lock:
            self._drain()
            if self._prompt_tokens is not None:
                self._backlog_tokens += max(0.0, self._prompt_tokens - tokens_held)

    def note_arrival(self) -> None:
        """A request was given to the engine (vLLM's ``on_new_request``)."""
        with self._lock:
            self._waiting += 1

    def note_started(self) -> None:
        """The engine asked about a request given earlier, or it ended before it was asked."""
        with self._lock:
            self._waiting = max(0, self._waiting - 1)

    def _drain(self) -> None:
        # Called with the lock held: the engine works its backlog off at its measured rate.
        now = time.monotonic()
        rate = self.engine.rate or 0.0
        self._backlog_tokens = max(0.0, self._backlog_tokens - rate * (now - self._backlog_at))
        self._backlog_at = now

    # ----- the decision -----------------------------------------------------------------------

    def admit(self, tier: str, backlog_bytes: int, prefix_tokens: int) -> bool:
        """Load the chunk that ends ``prefix_tokens`` into a request's prompt from ``tier``?

        Yes if the tier, reading what it already has queued (``backlog_bytes``, this request's
        earlier chunks among them) and then this chunk, delivers it before the engine, working
        off the prompts it already has to recompute, could have recomputed the prefix up to it.
        """
        read_rate = self.reads[tier].rate
        engine_rate = self.engine.rate
        if read_rate is None or engine_rate is None:
            return True  # nothing measured yet
        with self._lock:
            self._drain()
            waiting = self._waiting
            ahead = min(waiting, _WAITING_COUNTED) * (self._prompt_tokens or 0.0)
            engine_backlog = self._backlog_tokens + ahead
            # One position of prompt: a chunk per KV group that a load reads.
            position_bytes = self._chunks_per_token * self._chunk_tokens * self._chunk_bytes
        load_s = (backlog_bytes + position_bytes) / read_rate
        recompute_s = (engine_backlog + prefix_tokens) / engine_rate
        if load_s <= recompute_s:
            return True
        now = time.monotonic()
        if now >= self._next_log:  # what it decided on, where an operator can see it
            self._next_log = now + 5.0
            log.info(
                "kvpanel planner: recomputing from token %d instead of loading from %s "
                "(%.2f GB/s, %.0f MB queued: %.3f s; engine %.0f tokens/s, %.0f queued "
                "with %d requests waiting: %.3f s)",
                prefix_tokens - self._chunk_tokens,
                tier,
                read_rate / 1e9,
                backlog_bytes / 1e6,
                load_s,
                engine_rate,
                engine_backlog,
                waiting,
                recompute_s,
            )
        return False

    # ----- what the next process may start from ---------------------------------------------

    def to_json(self) -> str:
        # The engine's figures only: a tier's read speed depends on what the page cache holds
        # at the time, so the next process measures it afresh (the disk probe).
        with self._lock:
            prompt, per_token = self._prompt_tokens, self._chunks_per_token
        rates = {
            "engine_tokens_per_s": self.engine.rate,
            "prompt_tokens": prompt,
            "chunks_per_token": per_token,
        }
        return json.dumps({k: v for k, v in rates.items() if v})

    def seed_from_json(self, text: str | bytes) -> None:
        """Start from a previous run's measurements. The file lives in the cache dir, outside
        what kvpanel trusts: a hostile one can only sway load-or-recompute choices (never what
        is served), and values are bounded so it cannot turn arithmetic into nonsense."""
        try:
            data = json.loads(text)
        except ValueError:
            return
        if not isinstance(data, dict):
            return

        def num(name: str) -> float | None:
            v = data.get(name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1e15:
                return None
            return float(v)

        if (rate := num("engine_tokens_per_s")) is not None:
            self.engine.seed(rate)
        tokens, per_token = num("prompt_tokens"), num("chunks_per_token")
        with self._lock:
            if tokens is not None and self._prompt_tokens is None:
                self._prompt_tokens = tokens
            if per_token is not None and per_token <= 1.0:  # at most a chunk per token
                self._chunks_per_token = per_token

    def snapshot(self) -> dict[str, float | None]:
        with self._lock:
            self._drain()
            backlog, prompt, waiting = self._backlog_tokens, self._prompt_tokens, self._waiting
        return {
            "disk_read_bytes_per_s": self.reads["disk"].rate,
            "remote_read_bytes_per_s": self.reads["remote"].rate,
            "engine_tokens_per_s": self.engine.rate,
            "engine_backlog_tokens": backlog,
            "engine_waiting_requests": float(waiting),
            "mean_prompt_tokens": prompt,
        }
