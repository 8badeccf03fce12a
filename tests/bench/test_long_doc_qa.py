"""run_benchmark end to end against the fake server."""

from __future__ import annotations

import threading

import pytest

from kvpanel.bench import BenchCancelled, BenchError, BenchParams, run_benchmark
from kvpanel.bench.prompts import PREWARM_COUNT
from kvpanel.bench.result import QUERY, WARMUP
from tests.bench.fake_server import FakeServer

SMALL = BenchParams(
    num_documents=3, document_length=20, output_len=3, repeat_count=2, max_inflight_requests=2
)


def test_rounds_records_and_progress() -> None:
    calls: list[tuple[str, int, int]] = []
    with FakeServer(first_delay=0.05, hit_delay=0.01, token_delay=0.01) as server:
        result = run_benchmark(SMALL, server.url, progress_cb=lambda *a: calls.append(a))
        max_inflight = server.max_inflight
        bodies = server.requests
    assert result.model == "fake-model" and result.token_ids is False
    assert set(result.rounds) == {WARMUP, QUERY}
    w, q = result.rounds[WARMUP], result.rounds[QUERY]
    assert (w.count, q.count, w.ok_count, q.ok_count) == (3, 6, 3, 6)
    assert w.ttft_p50_s <= w.ttft_p90_s and w.total_s > 0 and q.total_s > 0
    assert [r.doc_index for r in result.round_records(WARMUP)] == [0, 1, 2]
    assert sorted(r.doc_index for r in result.round_records(QUERY)) == [0, 0, 1, 1, 2, 2]
    assert all(r.ok and r.output_tokens == 3 and r.ttft_s is not None for r in result.records)
    assert all(r.response_id == "x" for r in result.records)  # the fake server's "id"
    assert result.started_at <= w.started_at < q.started_at  # unix times, round by round
    assert q.started_at - w.started_at >= w.total_s * 0.99
    assert max_inflight <= 2
    assert len(bodies) == PREWARM_COUNT + 9
    assert all(b["_path"] == "/v1/chat/completions" for b in bodies)
    phases = [c[0] for c in calls]
    assert phases[0] == "prewarm" and phases[-1] == QUERY
    assert ("warmup", 3, 3) in calls and ("query", 6, 6) in calls and ("query", 0, 6) in calls


def test_auto_token_ids_without_tokenizer() -> None:
    with FakeServer(tokenizer=False, style="empty") as server:
        result = run_benchmark(SMALL, server.url)
        bodies = server.requests
    assert result.token_ids is True and result.params["completions"] is True
    assert all(b["_path"] == "/v1/completions" for b in bodies)
    doc_bodies = bodies[PREWARM_COUNT:]
    assert all(isinstance(b["prompt"], list) and len(b["prompt"]) == 20 for b in doc_bodies)
    assert result.rounds[QUERY].ok_count == 6  # empty-text chunks still give a TTFT
    assert all(r.prompt_tokens == 20 for r in result.records)


def test_hit_miss_ratio_marks_records() -> None:
    params = BenchParams(
        num_documents=2, document_length=5, output_len=1, repeat_count=4, hit_miss_ratio="3:1"
    )
    with FakeServer() as server:
        result = run_benchmark(params, server.url)
    forced = [r.index for r in result.round_records(QUERY) if r.forced_miss]
    assert forced == [3, 7]


def test_query_rounds_repeat_the_query_round_reshuffled() -> None:
    from dataclasses import replace

    from kvpanel.bench.long_doc_qa import build_workload

    params = replace(SMALL, num_documents=6, repeat_count=1, query_rounds=3)
    work = build_workload(params, token_ids=False)
    single = build_workload(replace(params, query_rounds=1), token_ids=False)
    # Round 1 is the one-round workload exactly; later rounds draw from seed + k - 1.
    assert [q.name for q in work.queries] == ["query", "query2", "query3"]
    assert work.queries[0].docs == single.queries[0].docs
    reseeded = build_workload(replace(params, shuffle_seed=1, query_rounds=1), token_ids=False)
    assert work.queries[1].docs == reseeded.queries[0].docs
    assert len({tuple(q.docs) for q in work.queries}) > 1
    calls: list[tuple[str, int, int]] = []
    with FakeServer() as server:
        result = run_benchmark(params, server.url, progress_cb=lambda *a: calls.append(a))
    assert list(result.rounds) == [WARMUP, "query", "query2", "query3"]
    assert [r.name for r in result.query_rounds()] == ["query", "query2", "query3"]
    assert all(r.count == 6 and r.ok_count == 6 for r in result.query_rounds())
    for q in work.queries:
        assert [r.doc_index for r in result.round_records(q.name)] == q.docs
    assert ("query3", 6, 6) in calls
    with pytest.raises(ValueError, match="query_rounds"):
        replace(params, query_rounds=0).validate()


def test_stop_event_cancels() -> None:
    stop = threading.Event()

    def cb(phase: str, done: int, total: int) -> None:
        if phase == WARMUP and done == 1:
            stop.set()

    with FakeServer() as server, pytest.raises(BenchCancelled):
        run_benchmark(SMALL, server.url, progress_cb=cb, stop_event=stop)


def test_unreachable_server() -> None:
    with FakeServer() as server:
        url = server.url
    with pytest.raises(BenchError, match="cannot reach"):
        run_benchmark(SMALL, url)


def test_bad_params() -> None:
    with pytest.raises(ValueError, match="repeat_mode"):
        run_benchmark(BenchParams(repeat_mode="zigzag"), "http://127.0.0.1:9")
