"""Did LMCache really load KV? Read its retrieval lines from the server's log.

A vLLM server with LMCache's connector answers just as well (only slower) when LMCache loads
nothing: a worker that failed to start runs in "degraded mode" and every request recomputes.
So after the ``lmcache`` mode's benchmark the comparison reads that server's log for LMCache's
INFO lines (``lmcache.v1.cache_engine``), which across 0.3 .. 0.5 read

    [req_id=...] Retrieved 19968 out of 20001 required tokens (from 20001 total tokens). ...
    Retrieved 19968 out of 20001 required tokens (from 20001 total tokens). ...   (older)
    [req_id=...] Retrieved 512 out of 512 out of total 600 tokens                (layerwise)

and fails the mode unless some line retrieved a non-zero number of tokens.

    RetrievalScan                 - the counts (also stored in the comparison JSON)
    scan_lines(lines) / scan_log(path)
    retrieval_error(scan, path)   - None when LMCache retrieved something, else the error
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RETRIEVED = re.compile(r"\bRetrieved (\d+)(?: out of (\d+))?")
# Signs of an LMCache that is not working (its health monitor's fallback, a failed init).
UNHEALTHY = ("degraded mode", "LMCache is unhealthy", "marked as init failed")


@dataclass(slots=True)
class RetrievalScan:
    retrieved_lines: int = 0  # "Retrieved N ..." lines, N = 0 included
    hit_lines: int = 0  # of those, the ones with N > 0
    retrieved_tokens: int = 0  # sum of N
    required_tokens: int = 0  # sum of M in "out of M", where present
    unhealthy_lines: int = 0
    first_unhealthy: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scan_lines(lines: Iterable[str]) -> RetrievalScan:
    scan = RetrievalScan()
    for line in lines:
        m = RETRIEVED.search(line)
        if m:
            n = int(m.group(1))
            scan.retrieved_lines += 1
            scan.hit_lines += n > 0
            scan.retrieved_tokens += n
            scan.required_tokens += int(m.group(2) or 0)
        elif any(sign in line for sign in UNHEALTHY):
            scan.unhealthy_lines += 1
            if not scan.first_unhealthy:
                scan.first_unhealthy = line.strip()[:300]
    return scan


def scan_log(path: str | Path) -> RetrievalScan:
    """Scan a log file; a missing or unreadable file scans as empty (nothing retrieved)."""
    try:
        with open(path, errors="replace") as f:
            return scan_lines(f)
    except OSError:
        return RetrievalScan()


def retrieval_error(scan: RetrievalScan, path: str | Path) -> str | None:
    if scan.retrieved_tokens > 0:
        return None
    detail = ""
    if scan.unhealthy_lines:
        detail = f"; it logged: {scan.first_unhealthy}"
    elif scan.retrieved_lines:
        detail = f"; {scan.retrieved_lines} retrieval lines, all 0 tokens"
    return f"LMCache retrieved nothing (see {path}){detail}"
