"""Shared builders for the kernel tests: random caches, block-id tables, poisoned slots."""

from __future__ import annotations

from collections.abc import Callable

import torch

POISON = 0xA5


def random_bytes(shape: tuple[int, ...], gen: torch.Generator, device: str = "cpu") -> torch.Tensor:
    """Random bytes over the full 0..255 range (never zeros-only, so missed copies show)."""
    t = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    return t.to(device)


def make_layers(
    pages: list[int], num_blocks: int, gen: torch.Generator, device: str = "cpu"
) -> list[torch.Tensor]:
    """One random int8 (num_blocks, page) tensor per layer, like vLLM's per-layer views."""
    return [random_bytes((num_blocks, p), gen, device).view(torch.int8) for p in pages]


def make_block_ids(
    num_chunks: int, bpc: int, num_blocks: int, gen: torch.Generator, head: int, tail: int
) -> torch.Tensor:
    """Distinct random block ids; ``head`` leading and ``tail`` trailing entries set to -1."""
    ids = torch.randperm(num_blocks, generator=gen)[: num_chunks * bpc].view(num_chunks, bpc)
    ids = ids.clone()
    ids[0, :head] = -1
    if tail:
        ids[-1, bpc - tail :] = -1
    return ids


def poisoned_slots(num_chunks: int, nbytes: int, extra: int = 64) -> list[torch.Tensor]:
    """Separate slot tensors (like pool segments), larger than a chunk, filled with POISON."""
    return [torch.full((nbytes + extra,), POISON, dtype=torch.uint8) for _ in range(num_chunks)]


def assert_matches_reference(
    gather: Callable[..., None],
    scatter: Callable[..., None],
    layers: list[torch.Tensor],
    ids: torch.Tensor,
    got: list[torch.Tensor],
    gen: torch.Generator,
) -> None:
    """``gather(layers, ids, got)`` must leave ``got`` equal to the Python reference's slots
    (poison kept where ids are -1), and ``scatter(got, ids, fresh)`` into a fresh random cache
    of the same geometry must equal the reference's scatter. ``got``: poisoned slots of one
    size, where the backend under test wants them (pinned, carved from an arena, ...)."""
    from kvpanel.kernels import reference
    from kvpanel.kernels.layout import chunk_nbytes

    device = layers[0].device
    pages = [int(t.shape[1]) for t in layers]
    nbytes = chunk_nbytes(layers, int(ids.shape[1]))
    ref = poisoned_slots(len(got), nbytes, extra=got[0].numel() - nbytes)
    reference.gather_chunks([t.cpu() for t in layers], ids, ref)
    gather(layers, ids, got)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))

    fresh = make_layers(pages, int(layers[0].shape[0]), gen, device=str(device))
    expect = [t.cpu() for t in fresh]
    reference.scatter_chunks(ref, ids, expect)
    scatter(got, ids, fresh)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert all(torch.equal(a.cpu(), b) for a, b in zip(fresh, expect, strict=True))
