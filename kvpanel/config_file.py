"""Config files: kvpanel's own YAML and LMCache's, mapped onto CacheSettings fields.

LMCache users bring their file unchanged (``--config`` or ``LMCACHE_CONFIG_FILE``):

    chunk_size: 256            -> chunk_tokens
    local_cpu: True            -> the CPU tier on (False: cpu_bytes = 0)
    max_local_cpu_size: 80     -> cpu_bytes (GB)
    local_disk: file:///path   -> disk_path
    max_local_disk_size: 100   -> disk_bytes (GB)
    remote_url: redis://h:p    -> remote_url

kvpanel's own form names tiers explicitly; an unknown tier is an error:

    chunk_size: 256
    tiers:
      cpu:    {size_gb: 4}
      disk:   {path: /var/cache/kvpanel, size_gb: 50}
      remote: {url: redis://127.0.0.1:6379}

Other LMCache keys are accepted and named in a warning (kvpanel has no equivalent).
Primitive: load_config_file(path) -> ConfigFile(values, warnings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import yaml

from kvpanel.settings import TIERS, ConfigError, gb_to_bytes


class ConfigFile(NamedTuple):
    values: dict[str, Any]  # CacheSettings field -> value
    warnings: list[str]


def _gb(path: str, key: str, value: Any) -> int:
    return gb_to_bytes(value, f"{path}: {key}")


def _disk_path(path: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: local_disk must be a path or file:// URL, got {value!r}")
    return value[len("file://") :] if value.startswith("file://") else value


def _tiers(path: str, tiers: Any, values: dict[str, Any]) -> None:
    if not isinstance(tiers, dict):
        raise ConfigError(f"{path}: tiers must be a mapping of tier name to settings")
    for name, spec in tiers.items():
        if name not in TIERS:
            raise ConfigError(f"{path}: unknown tier {name!r} (known: {', '.join(TIERS)})")
        spec = spec or {}
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: tiers.{name} must be a mapping")
        allowed = {"cpu": {"size_gb"}, "disk": {"size_gb", "path"}, "remote": {"url"}}[name]
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ConfigError(f"{path}: tiers.{name}: unknown key(s) {', '.join(unknown)}")
        if "size_gb" in spec:
            values[f"{name}_bytes"] = _gb(path, f"tiers.{name}.size_gb", spec["size_gb"])
        if name == "disk" and "path" in spec:
            values["disk_path"] = _disk_path(path, spec["path"])
        if name == "remote" and "url" in spec:
            values["remote_url"] = str(spec["url"])


def load_config_file(path: str | Path) -> ConfigFile:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}: invalid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys to values")
    values: dict[str, Any] = {}
    warnings: list[str] = []
    src = str(p)
    for key, value in data.items():
        if key == "chunk_size":
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{src}: chunk_size must be a positive integer, got {value!r}")
            values["chunk_tokens"] = value
        elif key == "local_cpu":
            if not isinstance(value, bool):
                raise ConfigError(f"{src}: local_cpu must be true or false, got {value!r}")
            if not value:
                values["cpu_bytes"] = 0
        elif key == "max_local_cpu_size":
            if data.get("local_cpu", True) is not False:
                values["cpu_bytes"] = _gb(src, key, value)
        elif key == "local_disk":
            if value:
                values["disk_path"] = _disk_path(src, value)
        elif key == "max_local_disk_size":
            values["disk_bytes"] = _gb(src, key, value)
        elif key == "remote_url":
            if value:
                values["remote_url"] = str(value)
        elif key == "tiers":
            _tiers(src, value, values)
        else:
            warnings.append(f"{src}: ignoring unknown key {key!r} (no kvpanel equivalent)")
    return ConfigFile(values, warnings)
