"""Obviously-correct Python-loop reference for the chunk copies (tests and benchmarks only).

Primitives:
- ``gather_chunks(layers, block_ids, slots)``: paged KV -> chunk slots.
- ``scatter_chunks(slots, block_ids, layers)``: chunk slots -> paged KV.

One ``copy_`` per (chunk, layer, sub-block); far too slow for real use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvpanel.kernels.layout import check_args


def gather_chunks(
    layers: Sequence[torch.Tensor], block_ids: torch.Tensor, slots: Sequence[torch.Tensor]
) -> None:
    """Copy block ``block_ids[c, b]`` of every layer into ``slots[c]``; -1 entries are skipped."""
    lay = check_args(layers, block_ids, slots)
    for c in range(lay.num_chunks):
        for li, layer in enumerate(layers):
            page = lay.pages[li]
            for b in range(lay.blocks_per_chunk):
                block = int(block_ids[c, b])
                if block < 0:
                    continue
                off = lay.offsets[li] + b * page
                slots[c][off : off + page].copy_(layer[block].view(torch.uint8))


def scatter_chunks(
    slots: Sequence[torch.Tensor], block_ids: torch.Tensor, layers: Sequence[torch.Tensor]
) -> None:
    """Inverse of ``gather_chunks``: write slot bytes back into the paged blocks."""
    lay = check_args(layers, block_ids, slots)
    for c in range(lay.num_chunks):
        for li, layer in enumerate(layers):
            page = lay.pages[li]
            for b in range(lay.blocks_per_chunk):
                block = int(block_ids[c, b])
                if block < 0:
                    continue
                off = lay.offsets[li] + b * page
                layer[block].view(torch.uint8).copy_(slots[c][off : off + page])
