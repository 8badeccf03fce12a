"""What kvpanel reads from the vLLM flags it passes on (vLLM's own parser checks them later).

Primitives: flag_value(args, *names); world_size(args) -> TP x PP workers;
dp_ranks(args) -> (the DP ranks whose engine cores this server starts, the DP size).
A value that is not a number counts as absent: vLLM's parser names it.
"""

from __future__ import annotations

from collections.abc import Sequence


def flag_value(args: Sequence[str], *names: str) -> str | None:
    """The value of the first of ``names`` given as ``--flag value`` or ``--flag=value``."""
    for name in names:
        for i, a in enumerate(args):
            if a == name and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
    return None


def _number(args: Sequence[str], *names: str) -> int | None:
    value = flag_value(args, *names)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def world_size(args: Sequence[str]) -> int:
    """Workers the engine will run (tensor x pipeline parallel)."""
    tp = _number(args, "--tensor-parallel-size", "--tensor_parallel_size", "-tp") or 1
    pp = _number(args, "--pipeline-parallel-size", "--pipeline_parallel_size", "-pp") or 1
    return tp * pp


def dp_ranks(args: Sequence[str]) -> tuple[list[int], int]:
    size = _number(args, "--data-parallel-size", "-dp") or 1
    local = _number(args, "--data-parallel-size-local", "-dpl") or size
    start = _number(args, "--data-parallel-start-rank", "-dpr") or 0
    return list(range(start, min(size, start + local))), size
