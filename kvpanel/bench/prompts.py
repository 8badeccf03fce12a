"""The long-document-QA workload: documents, repeat orders and forced cache misses.

Follows LMCache's ``benchmarks/long_doc_qa/long_doc_qa.py``:

    make_documents(n, length)          - "{i} hi hi hi ..." texts (the id first, so no document
                                         is a prefix of another)
    make_token_documents(n, length)    - the same idea as exact token ids, for servers without a
                                         tokenizer: [id(s) derived from i] + [HI_TOKEN_ID] * ...
    prewarm_prompts(token_ids)         - the 5 short prompts sent before anything is measured
    repeat_prompts(prompts, k, mode)   - random (seeded shuffle) / tile / interleave
    add_cache_misses(prompts, "H:M")   - every prompt at index i with i % (H+M) >= H gets a random
                                         prefix, so it misses every prefix cache

A prompt is either a ``str`` or a ``list[int]``; every function keeps the kind it was given.
All token ids are below 1000 so they fit any vocabulary.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeAlias

Prompt: TypeAlias = str | list[int]

REPEAT_MODES = ("random", "tile", "interleave")

# Token ids for token-id documents. Low ids are often special tokens (pad/bos/eos/unk), so the
# ids used here start at 100. HI_TOKEN_ID plays the role of the word "hi"; document ids are
# written in base len(DIGIT_IDS) with the digits DIGIT_IDS, which never contain HI_TOKEN_ID.
HI_TOKEN_ID = 100
PREWARM_MARK_ID = 101
MISS_ID_RANGE = (102, 299)  # random prefix ids of forced misses
DIGIT_IDS = tuple(range(300, 1000))
MISS_PREFIX_TOKENS = 4  # 198**4 combinations: two forced misses practically never collide

PREWARM_COUNT = 5
PREWARM_LENGTH = 1000


def make_documents(num_documents: int, document_length: int) -> list[str]:
    """LMCache's documents: ``"{i} " + " ".join(["hi"] * document_length)``."""
    return [str(i) + " " + " ".join(["hi"] * document_length) for i in range(num_documents)]


def doc_id_tokens(index: int) -> list[int]:
    """Token ids that name document ``index``: one id below 700 documents, more above."""
    if index < 0:
        raise ValueError(f"document index must be >= 0, got {index}")
    base = len(DIGIT_IDS)
    digits = [DIGIT_IDS[index % base]]
    index //= base
    while index:
        digits.append(DIGIT_IDS[index % base])
        index //= base
    return digits[::-1]


def make_token_documents(num_documents: int, document_length: int) -> list[list[int]]:
    """Documents of exactly ``document_length`` token ids: id tokens, then HI_TOKEN_ID."""
    docs = []
    for i in range(num_documents):
        head = doc_id_tokens(i)
        if len(head) > document_length:
            raise ValueError(
                f"document_length {document_length} is too short to tell {num_documents} "
                "documents apart"
            )
        docs.append(head + [HI_TOKEN_ID] * (document_length - len(head)))
    return docs


def prewarm_prompts(token_ids: bool) -> list[Prompt]:
    """The unmeasured pre-warm prompts (LMCache: ``f"{i}xx" + " hi" * 1000``)."""
    if not token_ids:
        return [str(i) + "xx" + " ".join(["hi"] * PREWARM_LENGTH) for i in range(PREWARM_COUNT)]
    return [
        [PREWARM_MARK_ID, DIGIT_IDS[i]] + [HI_TOKEN_ID] * (PREWARM_LENGTH - 2)
        for i in range(PREWARM_COUNT)
    ]


def repeat_indices(count: int, repeat_count: int, mode: str, rng: random.Random) -> list[int]:
    """The order in which the query round visits documents ``0..count-1``.

    random: ``docs * k`` shuffled by ``rng``; tile: ``[0, 1, 2, 0, 1, 2]``;
    interleave: ``[0, 0, 1, 1, 2, 2]`` (the examples use k = 2).
    """
    if mode not in REPEAT_MODES:
        raise ValueError(f"Invalid mode: {mode}, only support 'random', 'tile', 'interleave'")
    if repeat_count < 0:
        raise ValueError(f"repeat_count must be >= 0, got {repeat_count}")
    base = list(range(count))
    if mode == "tile":
        return base * repeat_count
    if mode == "interleave":
        return [i for i in base for _ in range(repeat_count)]
    order = base * repeat_count
    rng.shuffle(order)
    return order


def repeat_prompts(
    prompts: Sequence[Prompt], repeat_count: int, mode: str, rng: random.Random
) -> list[Prompt]:
    """``prompts`` in query-round order (see ``repeat_indices``)."""
    return [prompts[i] for i in repeat_indices(len(prompts), repeat_count, mode, rng)]


def parse_hit_miss_ratio(text: str) -> tuple[int, int]:
    """``"3:1"`` -> ``(3, 1)``; raises ValueError on anything else."""
    parts = text.split(":", 1)
    if len(parts) != 2:
        raise ValueError(f"hit-miss ratio must look like H:M, got {text!r}")
    try:
        hit, miss = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(f"hit-miss ratio must be two integers H:M, got {text!r}") from None
    if hit < 0 or miss < 0 or hit + miss == 0:
        raise ValueError(f"hit-miss ratio needs H, M >= 0 and H + M > 0, got {text!r}")
    return hit, miss


def is_forced_miss(index: int, hit: int, miss: int) -> bool:
    """LMCache's rule: position ``index`` of the query round misses when i % (H+M) >= H."""
    return index % (hit + miss) >= hit


def miss_prefix(prompt: Prompt, rng: random.Random) -> Prompt:
    """``prompt`` behind a random prefix (text: LMCache's random integer; ids: random ids)."""
    if isinstance(prompt, str):
        return str(rng.randint(-10000000, 10000000)) + " " + prompt
    low, high = MISS_ID_RANGE
    return [rng.randint(low, high) for _ in range(MISS_PREFIX_TOKENS)] + list(prompt)


def add_cache_misses(
    prompts: Sequence[Prompt], hit_miss_ratio: tuple[int, int] | None, rng: random.Random
) -> tuple[list[Prompt], list[bool]]:
    """Prompts with forced misses applied, and for each whether it was forced to miss."""
    if hit_miss_ratio is None:
        return list(prompts), [False] * len(prompts)
    hit, miss = hit_miss_ratio
    out: list[Prompt] = []
    flags: list[bool] = []
    for i, prompt in enumerate(prompts):
        forced = is_forced_miss(i, hit, miss)
        out.append(miss_prefix(prompt, rng) if forced else prompt)
        flags.append(forced)
    return out, flags
