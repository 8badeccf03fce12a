"""Parse ``kvpanel serve``'s own flags; everything else is passed to vLLM unchanged.

Settings come from three places: flags, a config file (``--config`` or ``LMCACHE_CONFIG_FILE``;
kvpanel or LMCache YAML) and defaults. A value given both as a flag and in the file must agree:
otherwise one clear error, since silently picking one is how caches end up the wrong size.

The cache secret (``--cache-secret``, ``--cache-secret-file`` or the environment) is kept out of
CacheSettings, which vLLM logs as part of its config: ``ServeOptions.cache_secret_env`` holds the
variables to set for the engine process, which reads the secret from there.

Primitives: parse_serve_args(argv) -> ServeOptions; ServeError (exit code 2).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvpanel.config_file import load_config_file
from kvpanel.settings import (
    CACHE_SECRET_ENV,
    CACHE_SECRET_FILE_ENV,
    GB,
    CacheSettings,
    ConfigError,
    cache_secret_from_env,
    default_state_dir,
    fmt_gib,
    gb_to_bytes,
)

OFFLOAD_MODES = ("kvpanel", "native", "lmcache", "none")


class ServeError(ConfigError):
    """A problem with the command line; reported in one line, exit code 2."""


@dataclass(slots=True)
class ServeOptions:
    model: str | None
    settings: CacheSettings
    offload: str
    no_ui: bool
    status_interval: float
    control_host: str | None
    control_port: int | None
    token: str | None
    state_dir: Path
    theme: str | None
    vllm_args: list[str]
    warnings: list[str] = field(default_factory=list)
    config_path: str | None = None  # the YAML the settings came from (--config or env)
    # Variables to set ("" = unset) in the engine's environment; repr=False: holds the secret.
    cache_secret_env: dict[str, str] = field(default_factory=dict, repr=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvpanel serve",
        usage="kvpanel serve [MODEL] [kvpanel flags] [vllm serve flags]",
        description="Serve a model with vLLM and kvpanel's KV tiers. Any other flag is a "
        "`vllm serve` flag and is passed through unchanged.",
        allow_abbrev=False,
    )
    p.add_argument("--cpu-cache-gb", type=float, help="CPU tier size in GiB (default 4)")
    p.add_argument(
        "--disk-cache-gb",
        type=float,
        help="disk tier size in GiB (default 10 with --disk-path, else no disk tier)",
    )
    p.add_argument("--disk-path", help="disk tier directory (default: no disk tier)")
    p.add_argument(
        "--remote-url", help="shared tier, redis://host:port[/db] (default: no remote tier)"
    )
    p.add_argument("--chunk-size", type=int, help="tokens per cached chunk (default 256)")
    p.add_argument(
        "--model-id",
        help="name these exact weights for the disk/Redis cache keys, instead of hashing the "
        "model's files (needed for a hub model kvpanel cannot find locally); the engine's "
        "config, dtypes and quantization are still added",
    )
    p.add_argument(
        "--config", help="kvpanel or LMCache YAML (default: $LMCACHE_CONFIG_FILE, else none)"
    )
    p.add_argument(
        "--cache-secret",
        help="key disk and Redis chunks with this secret, shared by trusted servers (shown by "
        f"`ps`: prefer {CACHE_SECRET_ENV} or --cache-secret-file)",
    )
    p.add_argument(
        "--cache-secret-file",
        help=f"file (mode 0600) holding the cache secret (also {CACHE_SECRET_FILE_ENV})",
    )
    p.add_argument(
        "--offload",
        choices=OFFLOAD_MODES,
        default="kvpanel",
        help="kvpanel tiers (default); for comparisons: vLLM's native CPU offload, LMCache's "
        "connector (needs the lmcache package), or none",
    )
    p.add_argument("--no-ui", action="store_true", help="headless: JSON status lines on stdout")
    p.add_argument(
        "--status-interval",
        type=float,
        default=2.0,
        help="seconds between --no-ui status lines (default 2)",
    )
    p.add_argument(
        "--control-host",
        help="host of the control API's own server (needs --control-port; default 127.0.0.1)",
    )
    p.add_argument(
        "--control-port",
        type=int,
        help="serve the control API on its own port (default: on vLLM's --host/--port, "
        "under /kvpanel/v1)",
    )
    p.add_argument("--token", help="control-API token (default: KVPANEL_TOKEN or generated)")
    p.add_argument("--state-dir", help="token, logs, sockets (default ~/.local/state/kvpanel)")
    p.add_argument(
        "--theme", help="panel theme: kvpanel-dark (default), kvpanel-light, or a user theme"
    )
    return p


def _gb(name: str, v: float | None) -> int | None:
    if v is None:
        return None
    try:
        return gb_to_bytes(v, f"--{name}")
    except ConfigError as e:
        raise ServeError(str(e)) from None


def _shown(key: str, value: Any) -> str:
    """A setting as the user wrote it: sizes in GiB (flags and files give GB), else repr."""
    if key.endswith("_bytes") and isinstance(value, int):
        return fmt_gib(value)
    return repr(value)


def _has_kv_transfer_config(args: list[str]) -> bool:
    """vLLM spells it ``--kv-transfer-config[=JSON]``, ``--kv_transfer_config`` or, per field,
    ``--kv-transfer-config.kv_connector``."""
    for a in args:
        name = a.split("=", 1)[0].replace("_", "-")
        if name == "--kv-transfer-config" or name.startswith("--kv-transfer-config."):
            return True
    return False


def _cache_secret_env(ns: argparse.Namespace, env: dict[str, str]) -> dict[str, str]:
    """The engine's secret variables for the flags ("" = unset), checked now (exit 2, one line)
    rather than in the engine; empty when the flags leave the environment as it is."""
    if ns.cache_secret is not None and ns.cache_secret_file is not None:
        raise ServeError("give --cache-secret or --cache-secret-file, not both")
    out: dict[str, str] = {}
    if ns.cache_secret is not None:
        if not ns.cache_secret:
            raise ServeError("--cache-secret is empty")
        out = {CACHE_SECRET_ENV: ns.cache_secret, CACHE_SECRET_FILE_ENV: ""}
    elif ns.cache_secret_file is not None:
        path = str(Path(ns.cache_secret_file).expanduser().resolve())
        out = {CACHE_SECRET_ENV: "", CACHE_SECRET_FILE_ENV: path}
    cache_secret_from_env({**env, **out})
    return out


def parse_serve_args(argv: list[str], env: dict[str, str] | None = None) -> ServeOptions:
    env = dict(os.environ) if env is None else env
    # MODEL comes first, as in `vllm serve MODEL`: argparse would otherwise take the value of
    # an unknown vLLM flag (`--max-model-len 2048`) for the positional.
    model = None
    if argv and not argv[0].startswith("-"):
        model, argv = argv[0], argv[1:]
    ns, rest = build_parser().parse_known_args(argv)
    if "--model" in rest:
        i = rest.index("--model")
        if i + 1 >= len(rest):
            raise ServeError("--model needs a value")
        model = rest[i + 1]
        del rest[i : i + 2]
    flags: dict[str, Any] = {
        "cpu_bytes": _gb("cpu-cache-gb", ns.cpu_cache_gb),
        "disk_bytes": _gb("disk-cache-gb", ns.disk_cache_gb),
        "disk_path": ns.disk_path,
        "remote_url": ns.remote_url,
        "chunk_tokens": ns.chunk_size,
        "model_id": ns.model_id,
    }
    flags = {k: v for k, v in flags.items() if v is not None}
    warnings: list[str] = []
    config_path = ns.config or env.get("LMCACHE_CONFIG_FILE")
    file_values: dict[str, Any] = {}
    if config_path:
        cf = load_config_file(config_path)
        file_values = cf.values
        # With --offload lmcache the file goes to LMCache unchanged, which uses those keys.
        warnings = [] if ns.offload == "lmcache" else list(cf.warnings)
    for key in sorted(set(flags) & set(file_values)):
        a, b = flags[key], file_values[key]
        if key == "disk_path":
            a, b = str(Path(a).expanduser().resolve()), str(Path(b).expanduser().resolve())
        if a != b:
            raise ServeError(
                f"conflicting {key}: {_shown(key, flags[key])} from the command line but "
                f"{_shown(key, file_values[key])} in {config_path}"
            )
    values = {**file_values, **flags}
    if values.get("disk_path") and "disk_bytes" not in values:
        values["disk_bytes"] = 10 * GB  # a path alone means "use the disk": LMCache's default
    state_dir = Path(ns.state_dir or default_state_dir()).expanduser()
    settings = CacheSettings(**values).validated()
    if ns.status_interval <= 0:
        raise ServeError("--status-interval must be positive")
    if (ns.control_host is None) != (ns.control_port is None) and ns.control_port is None:
        raise ServeError("--control-host needs --control-port")
    if ns.offload != "kvpanel" and (settings.disk_path or settings.remote_url):
        raise ServeError(f"--offload {ns.offload} has no disk or remote tier; drop those settings")
    if ns.offload != "kvpanel" and (ns.cache_secret or ns.cache_secret_file):
        raise ServeError(f"--offload {ns.offload} has no disk or remote tier; drop the secret")
    cache_secret_env = _cache_secret_env(ns, env) if ns.offload == "kvpanel" else {}
    if ns.offload != "none" and _has_kv_transfer_config(rest):
        raise ServeError(
            f"--kv-transfer-config conflicts with --offload {ns.offload}, which sets it; "
            "use --offload none to pass your own"
        )
    return ServeOptions(
        model=model,
        settings=settings,
        offload=ns.offload,
        no_ui=ns.no_ui,
        status_interval=ns.status_interval,
        control_host=ns.control_host,
        control_port=ns.control_port,
        token=ns.token or env.get("KVPANEL_TOKEN"),
        state_dir=state_dir,
        theme=ns.theme,
        vllm_args=rest,
        warnings=warnings,
        config_path=config_path or None,
        cache_secret_env=cache_secret_env,
    )
