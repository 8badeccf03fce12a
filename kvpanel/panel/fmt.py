"""Pure formatting / parsing helpers for the panel (no textual import, unit-testable)."""

from __future__ import annotations

import re
from typing import Any

from kvpanel.settings import TIER_ORDER
from kvpanel.settings import fmt_size as fmt_size  # one size format, panel and engine

# "4G" / "512M" are what people type for memory, so bare letters are binary (like `free -g`
# and docker's --memory); "GB" is decimal and "GiB" binary, as written.
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


def ordered_tiers(tiers: dict[str, Any]) -> list[str]:
    known = [t for t in TIER_ORDER if t in tiers]
    return known + sorted(t for t in tiers if t not in TIER_ORDER)


_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Parse "4G", "512M", "1.5GiB", "2 GB", "1048576" into bytes.

    Raises ValueError with a short, user-facing message.
    """
    text = text.strip()
    if not text:
        raise ValueError("enter a size, e.g. 4G, 512M, 1.5GiB or a number of bytes")
    if text.startswith("-"):
        raise ValueError("size must not be negative")
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (try 4G, 512M, 1.5GiB)")
    number, unit = m.group(1), m.group(2).lower()
    if unit not in _UNITS:
        raise ValueError(f"unknown unit {m.group(2)!r} (use K, M, G, T, KB..TB or KiB..TiB)")
    value = float(number) * _UNITS[unit]
    if unit in ("", "b") and "." in number:
        raise ValueError("a number of bytes must be a whole number")
    return int(value)


def fmt_bytes(n: float | int | None) -> str:
    """Binary units with two decimals: 4.00 GiB, 512.00 MiB, 17 B."""
    if n is None:
        return "-"
    n = float(n)
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def fmt_pair(used: int, cap: int) -> str:
    """'12.3/16.0 GiB' with a shared unit, so the column stays short; no decimals from 100
    units up ('398/512 GiB'), where they tell nothing and cost the narrow layout columns."""
    top = max(used, cap)
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if top >= size:
            d = 0 if top / size >= 100 else 1
            return f"{used / size:.{d}f}/{cap / size:.{d}f} {unit}"
    return f"{used}/{cap} B"


def fmt_pct(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x * 100:.{digits}f}%"


def fmt_seconds(s: float | None) -> str:
    """TTFT-style seconds: 0.042 s -> '42 ms', 1.53 -> '1.53 s'."""
    if s is None:
        return "-"
    if s < 1.0:
        return f"{s * 1000:.0f} ms"
    return f"{s:.2f} s"


def fmt_count(n: float | int | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def fmt_rate(tps: float | None) -> str:
    return "-" if tps is None else f"{fmt_count(tps)}/s"


def fmt_uptime(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def digits_value(s: float | None) -> tuple[str, str]:
    """Value + unit for the big TTFT digits: (\"42\", \"ms\") or (\"1.53\", \"s\")."""
    if s is None:
        return "--", "ms"
    if s < 1.0:
        return f"{s * 1000:.0f}", "ms"
    return f"{s:.2f}", "s"


def evicts_estimate(tier: dict[str, Any], new_capacity: int) -> int:
    """Chunks that must go if `tier` shrinks to `new_capacity` (average chunk size)."""
    used = int(tier.get("used_bytes", 0))
    chunks = int(tier.get("chunks", 0))
    if new_capacity >= used or chunks <= 0 or used <= 0:
        return 0
    per_chunk = used / chunks
    excess = used - new_capacity
    return min(chunks, int(-(-excess // per_chunk)))  # ceil


def resize_preview(name: str, tier: dict[str, Any], new_capacity: int) -> str:
    old = int(tier.get("capacity_bytes", 0))
    text = f"{name}: {fmt_bytes(old)} -> {fmt_bytes(new_capacity)}"
    n = evicts_estimate(tier, new_capacity)
    return f"{text}, evicts ~{n} chunks" if n else f"{text}, no evictions"
