"""Load or recompute: measured rates, the decision, the next process's starting point."""

import time
from pathlib import Path

import pytest
from conftest import CHUNK_BYTES, key, payload

from kvpanel.cache.keys import Fingerprint
from kvpanel.cache.load_planner import LoadPlanner, RequestPlan
from kvpanel.cache.rates import BusyRate
from kvpanel.cache.store import LookupState, TieredStore

TOKENS = 16  # the cache tests' chunk_tokens


def planner(read_bps: float, engine_tps: float, prompt: int = 4 * TOKENS) -> LoadPlanner:
    p = LoadPlanner(CHUNK_BYTES, TOKENS)
    p.reads["disk"].seed(read_bps)
    p.engine.seed(engine_tps)
    p.note_request_tokens(prompt)
    return p


def test_nothing_measured_admits() -> None:
    p = LoadPlanner(CHUNK_BYTES, TOKENS)
    assert p.admit("disk", backlog_bytes=10**12, prefix_tokens=TOKENS)
    p.engine.seed(1e9)
    assert p.admit("disk", backlog_bytes=10**12, prefix_tokens=TOKENS)  # tier not measured


def test_slow_tier_skipped_fast_tier_used() -> None:
    # One chunk: 4 KiB to read or 16 tokens to recompute.
    assert not planner(read_bps=1e3, engine_tps=1e3).admit("disk", 0, TOKENS)  # 4 s vs 16 ms
    assert planner(read_bps=1e9, engine_tps=1e3).admit("disk", 0, TOKENS)  # 4 us vs 16 ms


def test_split_between_tier_and_engine_under_load() -> None:
    """Tier and engine equally fast, a burst of 4-chunk requests: the planner sends some to the
    tier and some to the engine (each recompute joins the engine's backlog), never all to one."""
    p = planner(read_bps=CHUNK_BYTES / TOKENS * 1000, engine_tps=1000)
    backlog = 0
    loaded = 0
    for _ in range(10):
        plan = RequestPlan()
        for pos in range(4):

            def admit(pos: int = pos, backlog: int = backlog) -> bool:
                return p.admit("disk", backlog, (pos + 1) * TOKENS)

            if not plan.decide("disk", pos, admit):
                p.note_recompute(pos * TOKENS)
                break
            backlog += CHUNK_BYTES
            loaded += 1
    assert 12 <= loaded <= 28  # of 40 chunks


def test_request_plan_is_sticky() -> None:
    plan = RequestPlan()
    assert plan.decide("disk", 0, lambda: True) and plan.decide("disk", 1, lambda: True)
    assert not plan.decide("disk", 2, lambda: False)
    # Asked again (later polls, other KV groups): before the cutoff loaded, from it recomputed.
    assert plan.decide("disk", 1, lambda: False) and not plan.decide("disk", 3, lambda: True)


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"not json",
        b"[1,2]",
        b'{"engine_tokens_per_s": true}',
        b'{"engine_tokens_per_s": 1e300}',
        b'{"engine_tokens_per_s": -5, "prompt_tokens": "x"}',
        b'{"engine_tokens_per_s": {"a": 1}}',
    ],
)
def test_hostile_planner_note_is_ignored(text: bytes) -> None:
    p = LoadPlanner(CHUNK_BYTES, TOKENS)
    p.seed_from_json(text)
    assert p.engine.rate is None and p.snapshot()["mean_prompt_tokens"] is None


def test_measurements_carry_to_the_next_process(tmp_path: Path, fp: Fingerprint) -> None:
    with TieredStore(fp, cpu_bytes=8 * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=1 << 20) as s:
        s.planner.engine.seed(12345.0)
        s.planner.note_request_tokens(640)
    with TieredStore(fp, cpu_bytes=8 * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=1 << 20) as s:
        assert s.planner.engine.rate == 12345.0
        assert s.planner.snapshot()["mean_prompt_tokens"] == 640


def fill_disk(tmp_path: Path, fp: Fingerprint, n: int) -> None:
    with TieredStore(fp, cpu_bytes=n * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=1 << 20) as s:
        for i in range(n):
            res = s.reserve([key(i)])
            assert res is not None
            s.view(res.slots[0]).copy_(payload(i))
            s.commit(res.keys)
        assert s.flush(10)


def wait_done(store: TieredStore, k: object, plan: RequestPlan, pos: int) -> LookupState:
    deadline = time.monotonic() + 10
    state = store.lookup(k, plan=plan, position=pos)  # type: ignore[arg-type]
    while state is LookupState.PENDING:  # polls, as vLLM's are, count nothing more
        assert time.monotonic() < deadline
        time.sleep(0.005)
        state = store.lookup(k, count=False, plan=plan, position=pos)  # type: ignore[arg-type]
    return state


@pytest.mark.parametrize("read_delay_s", [0.0, 0.25])
def test_store_skips_a_slow_disk_uses_a_fast_one(
    tmp_path: Path, fp: Fingerprint, read_delay_s: float
) -> None:
    """A disk made slow on purpose (each read sleeps) is measured by a first promotion; the
    next request's chunks are then recomputed (skipped_slow), not loaded. The same disk
    without the delay keeps serving."""
    fill_disk(tmp_path, fp, 8)
    with TieredStore(fp, cpu_bytes=8 * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=1 << 20) as s:
        assert s.disk is not None
        real = s.disk.read_into

        def slow(k, out):  # type: ignore[no-untyped-def]
            time.sleep(read_delay_s)
            return real(k, out)

        s.disk.read_into = slow  # type: ignore[method-assign]
        deadline = time.monotonic() + 10
        while s.planner.reads["disk"].rate is None:  # the start-up probe is done
            assert time.monotonic() < deadline
            time.sleep(0.01)
        s.planner.reads["disk"] = BusyRate()  # forget the probe's figure: time these reads
        s.planner.engine.seed(1000.0)  # recomputing a 4-chunk prompt takes 64 ms
        # A first request's first chunk: nothing measured yet, loaded, and timed.
        assert wait_done(s, key(0), RequestPlan(), 0) is LookupState.HIT
        second = RequestPlan()
        states = [wait_done(s, key(4 + i), second, i) for i in range(4)]
        stats = s.stats()["disk"]
        if read_delay_s:
            assert states == [LookupState.MISS] * 4 and stats.skipped_slow == 4
        else:
            assert states == [LookupState.HIT] * 4 and stats.skipped_slow == 0


def test_requests_waiting_for_the_engine_count_as_its_work() -> None:
    """A prompt reads in 0.5 s from the tier and recomputes in 0.33 s (the H200's disk against
    its GPU, scaled): alone, recompute; with 19 requests given to the engine and not yet asked
    about, the engine is busy for seconds and the tier's read goes beside it."""
    prompt = 64 * TOKENS
    p = planner(read_bps=64 * CHUNK_BYTES / 0.5, engine_tps=prompt / 0.33, prompt=prompt)
    assert not p.admit("disk", 0, TOKENS)  # an idle engine beats the tier on the first chunk
    for _ in range(19):
        p.note_arrival()
    assert p.admit("disk", 0, TOKENS)
    assert p.snapshot()["engine_waiting_requests"] == 19
    for _ in range(25):  # started or ended; never below zero
        p.note_started()
    assert p.snapshot()["engine_waiting_requests"] == 0
    assert not p.admit("disk", 0, TOKENS)


def burst(arrivals: bool, slower: float = 1.5) -> tuple[float, float]:
    """20 requests of 8 chunks given at once to an engine that asks about each only when it is
    free (as vLLM's scheduler does, so its backlog is 0 at every first lookup); a tier reading
    a chunk in ``slower`` x the engine's time to recompute it. Played out in simulated time:
    returns (share of chunks loaded, round time / the round time of recomputing everything)."""
    chunks, n = 8, 20
    t_chunk = 0.001  # engine seconds per chunk
    p = planner(read_bps=CHUNK_BYTES / (slower * t_chunk), engine_tps=TOKENS / t_chunk)
    p.note_request_tokens(chunks * TOKENS)
    for _ in range(n if arrivals else 0):
        p.note_arrival()
    now = tier_free_at = 0.0
    loaded = 0
    for _ in range(n):
        if arrivals:
            p.note_started()
        plan = RequestPlan()
        cut = chunks
        for pos in range(chunks):
            queued = max(0.0, tier_free_at - now) / (slower * t_chunk) * CHUNK_BYTES

            def admit(pos: int = pos, queued: float = queued) -> bool:
                return p.admit("disk", int(queued + pos * CHUNK_BYTES), (pos + 1) * TOKENS)

            if not plan.decide("disk", pos, admit):
                cut = pos
                break
        if cut:
            tier_free_at = max(tier_free_at, now) + cut * slower * t_chunk
            loaded += cut
        now += (chunks - cut) * t_chunk  # the engine recomputes the rest, then asks again
    end = max(now, tier_free_at)
    return loaded / (n * chunks), end / (n * chunks * t_chunk)


def test_a_burst_splits_between_a_slower_tier_and_the_engine() -> None:
    share, _ = burst(arrivals=False)
    assert share == 0.0  # every lookup sees an idle engine: the tier was never used
    share, round_ratio = burst(arrivals=True)
    assert 0.2 <= share <= 0.5, share  # both at once (an even split of work would be 0.4)
    assert round_ratio <= 0.85, round_ratio  # and the round is shorter than recomputing


def test_a_far_slower_tier_is_left_alone_under_a_burst() -> None:
    # 20x slower than the engine: counting two waiting prompts never makes it worth a chunk.
    share, round_ratio = burst(arrivals=True, slower=20.0)
    assert share == 0.0 and round_ratio == pytest.approx(1.0)
