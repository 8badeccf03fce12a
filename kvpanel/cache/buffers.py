"""Byte-buffer conversions shared by the tiers.

Primitives:
- ``Payload``: what a tier accepts as chunk bytes (tensor, bytes, memoryview).
- ``as_byte_view``: zero-copy ``memoryview`` of a payload's bytes (for file writes, hashing).
- ``copy_into``: copy a payload into a 1-D uint8 tensor of the same byte length.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import torch

Payload: TypeAlias = torch.Tensor | bytes | bytearray | memoryview


def _tensor_bytes(t: torch.Tensor) -> torch.Tensor:
    if t.device.type != "cpu":
        raise ValueError(f"payload tensor must live on the CPU, got {t.device}")
    # reshape(-1) copies only if the tensor is not contiguous; view() reinterprets as bytes.
    return t.reshape(-1).contiguous().view(torch.uint8)


def payload_nbytes(data: Payload) -> int:
    if isinstance(data, torch.Tensor):
        return data.numel() * data.element_size()
    return memoryview(data).nbytes


def as_byte_view(data: Payload) -> memoryview:
    """Flat, read-only byte view; shares memory with ``data`` (keep ``data`` alive meanwhile)."""
    if isinstance(data, torch.Tensor):
        return _tensor_bytes(data).numpy().data.cast("B").toreadonly()
    return memoryview(data).cast("B").toreadonly()


def copy_into(dst: torch.Tensor, data: Payload) -> None:
    """Copy ``data`` into the 1-D uint8 tensor ``dst``; byte lengths must match exactly."""
    n = payload_nbytes(data)
    if n != dst.numel():
        raise ValueError(f"payload is {n} bytes, destination is {dst.numel()} bytes")
    if isinstance(data, torch.Tensor):
        dst.copy_(_tensor_bytes(data))
    else:
        # Through numpy: torch.frombuffer warns on read-only buffers such as bytes.
        dst.numpy()[:] = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
