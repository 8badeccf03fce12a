"""kvpanel's cache settings: one validated value object, from flags, kvpanel YAML or LMCache YAML.

Primitives:
    CacheSettings          - the validated settings (sizes in bytes, paths absolute)
    CacheSettings.from_extra_config / to_extra_config
                           - round trip through vLLM's ``kv_connector_extra_config``
    load_config_file(path) - kvpanel or LMCache YAML -> (overrides, warnings)
    ConfigError            - every bad input ends here, with one line that names the problem
    cache_secret_from_env(env)
                           - the cache secret (KVPANEL_CACHE_SECRET or KVPANEL_CACHE_SECRET_FILE)

Imports neither vllm nor textual: it runs before vLLM starts, so a bad config fails fast.
"""

from __future__ import annotations

import math
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from kvpanel.redact import display_url

GB = 1 << 30  # kvpanel's and LMCache's "GB" sizes are binary (GiB)
# kvpanel's own tiers, fastest first. "vllm" is the engine's own KV cache (on the GPU, or in host
# memory on a CPU engine), shown next to them under one name whatever the device.
TIERS = ("cpu", "disk", "remote")
ENGINE_TIER = "vllm"
TIER_ORDER = (ENGINE_TIER, *TIERS)
# A sanity bound: sizes beyond this are typos (e.g. bytes given where GB were meant).
MAX_TIER_BYTES = 1 << 50  # 1 PiB
# The cache secret is read from the engine process's environment, never from CacheSettings:
# vLLM logs kv_connector_extra_config, where CacheSettings travel.
CACHE_SECRET_ENV = "KVPANEL_CACHE_SECRET"
CACHE_SECRET_FILE_ENV = "KVPANEL_CACHE_SECRET_FILE"
# Names and MACs let anyone who can read the store test guesses offline: short secrets fall.
MIN_CACHE_SECRET_BYTES = 16


class ConfigError(ValueError):
    """A configuration problem, described in one line for the user."""


def gb_to_bytes(value: Any, what: str) -> int:
    """A size in GB (GiB, as LMCache counts) from a flag or a config file, in bytes.
    Anything but a finite, non-negative number is a ConfigError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number of GB, got {value!r}")
    # int() of NaN or infinity raises with a traceback; say what was wrong in one line.
    if not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number of GB, got {value!r}")
    if value < 0:
        raise ConfigError(f"{what} must not be negative, got {value}")
    return int(value * GB)


def fmt_gib(n_bytes: int) -> str:
    """A byte count as a user wrote it: ``4 GiB``, ``2.5 GiB``, ``0.001 GiB``."""
    return f"{n_bytes / GB:.6g} GiB"


def fmt_size(n: float | int | None) -> str:
    """Binary units, three significant digits: 64 GiB, 1.5 GiB, 512 MiB (for short lines)."""
    if n is None:
        return "-"
    n = float(n)
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            v = n / size
            return f"{v:.0f} {unit}" if abs(v) >= 100 else f"{v:.3g} {unit}"
    return f"{int(n)} B"


def default_state_dir() -> Path:
    base = os.environ.get("KVPANEL_HOME") or os.path.join(
        os.environ.get("XDG_STATE_HOME", os.path.expanduser("~/.local/state")), "kvpanel"
    )
    return Path(base)


@dataclass(frozen=True, slots=True)
class CacheSettings:
    cpu_bytes: int = 4 * GB
    disk_path: str | None = None
    disk_bytes: int = 0
    remote_url: str | None = None
    chunk_tokens: int = 256
    # Model identity override (otherwise derived from the model directory's files).
    model_id: str | None = None
    # Unix socket the engine process serves stats/control on (set by `kvpanel serve`).
    control_socket: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def validated(self) -> CacheSettings:
        """Check every field; return self with normalised paths, or raise ConfigError."""
        for name in ("cpu_bytes", "disk_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be a whole number of bytes, got {value!r}")
            if value < 0:
                raise ConfigError(f"{name} must not be negative, got {value}")
            if value > MAX_TIER_BYTES:
                raise ConfigError(f"{name}={value} is absurdly large (limit 1 PiB)")
        if not isinstance(self.chunk_tokens, int) or self.chunk_tokens <= 0:
            raise ConfigError(f"chunk_tokens must be a positive integer, got {self.chunk_tokens!r}")
        if self.chunk_tokens > 1 << 20:
            raise ConfigError(f"chunk_tokens={self.chunk_tokens} is too large")
        disk_path = self.disk_path
        if self.disk_bytes > 0 and not disk_path:
            raise ConfigError("a disk tier size was given but no disk path (--disk-path)")
        if disk_path:
            disk_path = str(Path(disk_path).expanduser().resolve())
            check_writable_dir(disk_path)
        if self.remote_url and not self.remote_url.startswith(
            ("redis://", "rediss://", "redis+cluster://")
        ):
            raise ConfigError(
                f"remote_url {display_url(self.remote_url)!r} is not supported: "
                "use redis://host:port[/db]"
            )
        return replace(self, disk_path=disk_path)

    def to_extra_config(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        return {"kvpanel": d, **extra}

    @classmethod
    def from_extra_config(cls, extra_config: Mapping[str, Any]) -> CacheSettings:
        raw = extra_config.get("kvpanel")
        if raw is None:
            # Plain vLLM users may set only what vLLM's own CPU spec takes.
            raw = {"cpu_bytes": int(extra_config.get("cpu_bytes_to_use", 4 * GB))}
        if not isinstance(raw, Mapping):
            raise ConfigError("kv_connector_extra_config['kvpanel'] must be a mapping")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown kvpanel setting(s): {', '.join(unknown)}")
        return cls(**dict(raw)).validated()


def check_writable_dir(path: str) -> None:
    """Raise ConfigError unless `path` is (or can be created as) a writable directory.

    Creates nothing when the check fails: a bad path must leave no trace.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"disk path {path} exists and is not a directory")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"disk path {path}: {probe} is not a directory")
    # Root passes every os.access check, so really try: a temporary directory in the nearest
    # existing ancestor, removed again at once.
    try:
        with tempfile.TemporaryDirectory(dir=probe, prefix=".kvpanel-probe-"):
            pass
    except OSError as e:
        raise ConfigError(f"disk path {path} is not writable: {e.strerror} ({probe})") from None


def cache_secret_from_env(env: Mapping[str, str]) -> bytes | None:
    """The cache secret from ``KVPANEL_CACHE_SECRET`` or from the file (mode 0600) that
    ``KVPANEL_CACHE_SECRET_FILE`` names; None when neither is set. Messages never show it."""
    value, path = env.get(CACHE_SECRET_ENV) or "", env.get(CACHE_SECRET_FILE_ENV) or ""
    if value and path:
        raise ConfigError(f"set {CACHE_SECRET_ENV} or {CACHE_SECRET_FILE_ENV}, not both")
    if path:
        return _read_secret_file(path)
    if value:
        return _checked_secret(value.encode(), CACHE_SECRET_ENV)
    return None


def _read_secret_file(path: str) -> bytes:
    where = f"cache secret file {path}"
    try:
        # stat first: opening a FIFO would block. Symlinks are followed (mounted secrets).
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ConfigError(f"{where} is not a regular file")
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_mode & 0o077:
                raise ConfigError(f"{where} is open to group or others: chmod 600 it")
            data = f.read(1 << 16)
    except OSError as e:
        raise ConfigError(f"cannot read {where}: {e.strerror}") from None
    return _checked_secret(data.rstrip(b"\r\n"), where)


def _checked_secret(secret: bytes, where: str) -> bytes:
    if len(secret) < MIN_CACHE_SECRET_BYTES:
        raise ConfigError(
            f"{where}: a cache secret needs at least {MIN_CACHE_SECRET_BYTES} bytes "
            "(e.g. `openssl rand -hex 32`)"
        )
    return secret
