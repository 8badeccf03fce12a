"""Host RAM (psutil) and GPU memory/utilisation (pynvml, when an NVIDIA driver is present)."""

from __future__ import annotations

import os
from typing import Any

import psutil

_nvml_ok: bool | None = None


def host_memory() -> dict[str, int]:
    vm = psutil.virtual_memory()
    return {
        "ram_used_bytes": int(vm.total - vm.available),
        "ram_total_bytes": int(vm.total),
        "rss_bytes": int(psutil.Process(os.getpid()).memory_info().rss),
    }


def gpus() -> list[dict[str, Any]]:
    global _nvml_ok
    if _nvml_ok is False:
        return []
    try:
        import pynvml

        if _nvml_ok is None:
            pynvml.nvmlInit()
            _nvml_ok = True
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            util = pynvml.nvmlDeviceGetUtilizationRates(h)
            name = pynvml.nvmlDeviceGetName(h)
            out.append(
                {
                    "index": i,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "mem_used_bytes": int(mem.used),
                    "mem_total_bytes": int(mem.total),
                    "util_pct": float(util.gpu),
                }
            )
        return out
    except Exception:  # no driver, no GPU, or no permission: report none, never fail status
        _nvml_ok = False
        return []
