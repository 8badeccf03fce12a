"""Documents, repeat modes and forced misses, checked against LMCache's semantics."""

from __future__ import annotations

import random

import pytest

from kvpanel.bench import prompts as wl
from kvpanel.bench.long_doc_qa import BenchParams, build_workload


def test_text_documents_are_lmcache_documents() -> None:
    docs = wl.make_documents(3, 5)
    assert docs[0] == "0 hi hi hi hi hi"
    assert docs[2] == "2 " + " ".join(["hi"] * 5)
    assert len(set(docs)) == 3
    for a in docs:
        for b in docs:
            assert a == b or not b.startswith(a)


def test_token_documents_have_exact_length_and_small_ids() -> None:
    docs = wl.make_token_documents(4, 10)
    assert all(len(d) == 10 for d in docs)
    assert [d[0] for d in docs] == [wl.DIGIT_IDS[i] for i in range(4)]
    assert all(d[1:] == [wl.HI_TOKEN_ID] * 9 for d in docs)
    assert all(0 < t < 1000 for d in docs for t in d)


def test_token_documents_stay_distinct_past_one_id() -> None:
    docs = wl.make_token_documents(1500, 3)
    assert len({tuple(d) for d in docs}) == 1500
    assert len(wl.doc_id_tokens(699)) == 1 and len(wl.doc_id_tokens(700)) == 2
    assert all(max(d) < 1000 for d in docs)
    with pytest.raises(ValueError):
        wl.make_token_documents(800, 1)


def test_prewarm_prompts() -> None:
    text = wl.prewarm_prompts(token_ids=False)
    assert text[0] == "0xx" + " ".join(["hi"] * 1000) and len(text) == 5
    ids = wl.prewarm_prompts(token_ids=True)
    assert len({tuple(p) for p in ids}) == 5
    assert all(isinstance(p, list) and len(p) == 1000 and max(p) < 1000 for p in ids)
    docs = wl.make_token_documents(5, 1000)
    assert not {tuple(p) for p in ids} & {tuple(d) for d in docs}


def test_tile_and_interleave() -> None:
    rng = random.Random(0)
    assert wl.repeat_prompts(["a", "b", "c"], 2, "tile", rng) == ["a", "b", "c"] * 2
    assert wl.repeat_prompts(["a", "b", "c"], 2, "interleave", rng) == list("aabbcc")
    assert wl.repeat_indices(2, 3, "interleave", rng) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="Invalid mode"):
        wl.repeat_indices(3, 2, "zigzag", rng)


def test_random_mode_is_seeded_like_lmcache() -> None:
    prompts = [f"p{i}" for i in range(10)]
    ours = wl.repeat_prompts(prompts, 3, "random", random.Random(7))
    assert ours == wl.repeat_prompts(prompts, 3, "random", random.Random(7))
    assert ours != wl.repeat_prompts(prompts, 3, "random", random.Random(8))
    assert sorted(ours) == sorted(prompts * 3)
    random.seed(7)  # LMCache: random.seed(shuffle_seed); random.shuffle(prompts * k)
    theirs = prompts * 3
    random.shuffle(theirs)
    assert ours == theirs


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [((3, 1), [3, 7, 11]), ((2, 2), [2, 3, 6, 7, 10, 11]), ((0, 1), list(range(12)))],
)
def test_hit_miss_positions(ratio: tuple[int, int], expected: list[int]) -> None:
    prompts = [f"doc{i}" for i in range(12)]
    out, forced = wl.add_cache_misses(prompts, ratio, random.Random(0))
    assert [i for i, f in enumerate(forced) if f] == expected
    for i, (p, o) in enumerate(zip(prompts, out, strict=True)):
        if i in expected:
            assert isinstance(o, str) and o != p and o.endswith(" " + p)
        else:
            assert o == p


def test_hit_miss_token_ids_get_random_id_prefix() -> None:
    docs = wl.make_token_documents(2, 8)
    out, forced = wl.add_cache_misses(docs * 4, (1, 1), random.Random(0))
    missed = [o for o, f in zip(out, forced, strict=True) if f]
    assert len(missed) == 4 and len({tuple(m) for m in missed}) == 4
    assert all(isinstance(m, list) and len(m) == 8 + wl.MISS_PREFIX_TOKENS for m in missed)
    assert all(max(m) < 1000 for m in missed if isinstance(m, list))


def test_parse_hit_miss_ratio() -> None:
    assert wl.parse_hit_miss_ratio("3:1") == (3, 1)
    for bad in ("3", "a:b", "0:0", "-1:2"):
        with pytest.raises(ValueError):
            wl.parse_hit_miss_ratio(bad)


def test_workload_matches_lmcache_script() -> None:
    """Same seed, same prompts: shuffle, then the random miss prefixes, from one generator."""
    params = BenchParams(
        num_documents=5, document_length=4, repeat_count=3, shuffle_seed=3, hit_miss_ratio="2:1"
    )
    work = build_workload(params, token_ids=False)
    random.seed(3)
    warmup = [str(i) + " " + " ".join(["hi"] * 4) for i in range(5)]
    theirs = warmup * 3
    random.shuffle(theirs)
    for i in range(len(theirs)):
        if i % 3 >= 2:
            theirs[i] = str(random.randint(-10000000, 10000000)) + " " + theirs[i]
    assert work.warmup == warmup
    (query,) = work.queries
    assert query.prompts == theirs
    assert [warmup[d] for d in query.docs] == [
        str(q).split(" ", 1)[1] if f else q
        for q, f in zip(query.prompts, query.forced, strict=True)
    ]
