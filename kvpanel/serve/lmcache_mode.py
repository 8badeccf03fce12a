"""``kvpanel serve --offload lmcache``: vLLM with LMCache's connector, set up as LMCache users do.

LMCache (the competitor, for ``kvpanel bench --compare``) is configured the way its docs say:
vLLM gets ``--kv-transfer-config '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}'``
and LMCache reads the YAML named by ``LMCACHE_CONFIG_FILE``. A file the user gave (``--config``
or ``LMCACHE_CONFIG_FILE``) goes to LMCache unchanged when it states the chunk size and the CPU
size; keys it lacks are filled in from kvpanel's settings in a copy, and without a file one is
written (``chunk_size`` = kvpanel's chunk tokens, ``local_cpu: true``, ``max_local_cpu_size`` =
``--cpu-cache-gb``), so LMCache caches exactly what the status line reports.

Nothing here imports vLLM or LMCache: it runs before vLLM starts, so problems fail fast (exit 2).

    CONNECTOR                        - the kv_transfer_config dict
    check_installed()                - ServeError unless ``lmcache`` is importable
    config_values(settings)          - the generated YAML's keys
    prepare(opts, env) -> Prepared   - vLLM flags, the LMCache config file, env changes, notes
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import tempfile
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kvpanel.serve.options import ServeError, ServeOptions
from kvpanel.settings import GB, CacheSettings

CONNECTOR = {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}
INSTALL_HINT = (
    "--offload lmcache needs the lmcache package (pip install lmcache); "
    "it is not importable in this Python environment"
)
HASHSEED_WARNING = (
    "PYTHONHASHSEED is not set: some LMCache versions key token chunks with Python's hash(), "
    "so its cache keys can differ between processes and restarts; "
    "set PYTHONHASHSEED=0 (kvpanel bench --compare does)"
)


@dataclass(slots=True)
class Prepared:
    vllm_args: list[str]  # to append to vLLM's flags
    config_path: str  # what LMCACHE_CONFIG_FILE now names
    written: bool  # kvpanel wrote that file (removed at exit)
    notes: list[str] = field(default_factory=list)  # one-line messages for stderr


def check_installed() -> None:
    """Raise ServeError (exit 2) unless ``import lmcache`` would find the package."""
    try:
        found = importlib.util.find_spec("lmcache") is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        found = False
    if not found:
        raise ServeError(INSTALL_HINT)


def hashseed_warning(env: MutableMapping[str, str]) -> str | None:
    return None if env.get("PYTHONHASHSEED") else HASHSEED_WARNING


def config_values(settings: CacheSettings) -> dict[str, Any]:
    """LMCache's YAML keys for kvpanel's settings (sizes in LMCache's GB, i.e. GiB)."""
    if settings.cpu_bytes <= 0:
        raise ServeError("--offload lmcache needs a CPU cache: give --cpu-cache-gb above 0")
    return {
        "chunk_size": settings.chunk_tokens,
        "local_cpu": True,
        "max_local_cpu_size": settings.cpu_bytes / GB,
    }


def _read_user_file(path: str) -> dict[str, Any]:
    # options.parse_serve_args already loaded and validated it; this reads LMCache's keys.
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:  # changed since it was parsed
        raise ServeError(f"cannot read LMCache config {path}: {e}") from None
    if not isinstance(data, dict):
        raise ServeError(f"{path}: the top level must be a mapping of keys to values")
    if "tiers" in data:
        raise ServeError(
            f"{path} is kvpanel's YAML form (tiers:), which LMCache cannot read; with "
            "--offload lmcache give LMCache's form (chunk_size, local_cpu, max_local_cpu_size) "
            "or no file"
        )
    return data


def _missing_keys(data: dict[str, Any], settings: CacheSettings) -> dict[str, Any]:
    """Keys LMCache would otherwise default differently from what kvpanel reports."""
    missing: dict[str, Any] = {}
    if "chunk_size" not in data:
        missing["chunk_size"] = settings.chunk_tokens
    if data.get("local_cpu", True) is not False and "max_local_cpu_size" not in data:
        if settings.cpu_bytes <= 0:
            raise ServeError("--offload lmcache needs a CPU cache: give --cpu-cache-gb above 0")
        missing["max_local_cpu_size"] = settings.cpu_bytes / GB
    return missing


def _write_runtime_file(values: dict[str, Any]) -> str:
    fd, path = tempfile.mkstemp(prefix="kvpanel-lmcache-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        f.write("# written by `kvpanel serve --offload lmcache` for LMCache; removed at exit\n")
        yaml.safe_dump(values, f, sort_keys=False)

    def remove() -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)

    atexit.register(remove)
    return path


def _fmt(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in values.items())


def prepare(opts: ServeOptions, env: MutableMapping[str, str]) -> Prepared:
    """The vLLM flags and the LMCache config for ``opts``; sets ``LMCACHE_CONFIG_FILE`` and
    ``LMCACHE_TRACK_USAGE`` (unless set) in ``env``. Raises ServeError."""
    s = opts.settings
    if s.disk_path or s.remote_url:  # options.py refuses these already; never let one slip
        raise ServeError("--offload lmcache has no disk or remote tier; drop those settings")
    notes: list[str] = []
    if opts.config_path:
        data = _read_user_file(opts.config_path)
        missing = _missing_keys(data, s)
        if missing:
            path, written = _write_runtime_file({**data, **missing}), True
            notes.append(
                f"LMCache config: {path} ({opts.config_path} plus {_fmt(missing)} "
                "from kvpanel's settings)"
            )
        else:
            path, written = opts.config_path, False
            notes.append(f"LMCache config: {path} (yours, unchanged)")
    else:
        values = config_values(s)
        path, written = _write_runtime_file(values), True
        notes.append(f"LMCache config: {path} ({_fmt(values)})")
    env["LMCACHE_CONFIG_FILE"] = str(Path(path).resolve())
    env.setdefault("LMCACHE_TRACK_USAGE", "false")  # no usage reports from benchmark runs
    args = ["--kv-transfer-config", json.dumps(CONNECTOR, separators=(",", ":"))]
    return Prepared(args, env["LMCACHE_CONFIG_FILE"], written, notes)
