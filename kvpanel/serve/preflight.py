"""Checks of ``kvpanel serve``'s command line that must pass before the engine starts.

Loading a model takes from seconds (CPU) to minutes (a large model on a GPU); a typo in a vLLM
flag, a missing model directory or a busy port must not cost that wait, nor reach the user as
vLLM's 300-line usage text or a hub error about a "repo id". Each failure is a ServeError
whose message names the flag (or path) and the reason, in one line (exit code 2).

Primitives: check_model_path(model); parse_vllm_args(argv) -> Namespace (vLLM's own parser);
listen_socket(host, port, flag) -> a bound socket the API server serves on later.
"""

from __future__ import annotations

import argparse
import errno
import re
import socket
from pathlib import Path
from typing import Any, NoReturn

from kvpanel.serve.options import ServeError


def _looks_like_path(model: str) -> bool:
    """A hub id is ``name`` or ``namespace/name``; anything absolute, relative to ``.``/``~``,
    or with more than one ``/`` can only be meant as a directory."""
    return model.startswith(("/", "./", "../", "~")) or model in (".", "..") or model.count("/") > 1


def check_model_path(model: str) -> None:
    if _looks_like_path(model) and not Path(model).expanduser().exists():
        raise ServeError(f"model path {model} does not exist")


# argparse's wording for a value its type function refused: "invalid int value: 'abc'".
_INVALID_VALUE = re.compile(r"invalid (?P<type>[\w]+) value: (?P<value>.*)$")


def _readable(message: str) -> str:
    """argparse's message on one line, with the type function's name as the expected kind."""
    message = " ".join(message.split())
    m = _INVALID_VALUE.search(message)
    if m:
        expected = m.group("type").replace("_", " ")
        message = message[: m.start()] + f"invalid value {m.group('value')} (expected {expected})"
    return message


def _raise_usage(message: str) -> NoReturn:
    raise ServeError(_readable(message))


def _serve_args_validator() -> Any:
    """vLLM's checks ``vllm serve`` runs before loading (0.32+: launchers, 0.26: openai)."""
    try:
        from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
    except ImportError:
        try:
            from vllm.entrypoints.openai.cli_args import (  # type: ignore[no-redef]
                validate_parsed_serve_args,
            )
        except ImportError:
            return None
    return validate_parsed_serve_args


def parse_vllm_args(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by ``vllm serve``'s own parser (and its pre-load checks), with any
    error as a ServeError instead of vLLM's usage text and ``SystemExit(2)``."""
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from kvpanel.vllm_ext.compat import server_api

    make_arg_parser = server_api()[0]
    parser = make_arg_parser(FlexibleArgumentParser(prog="kvpanel serve"))
    parser.error = _raise_usage  # type: ignore[method-assign]
    try:
        args = parser.parse_args(argv)
        validate = _serve_args_validator()
        if validate is not None:
            validate(args)
    except (ValueError, TypeError) as e:  # vLLM's own checks of flag combinations
        raise ServeError(" ".join(str(e).removeprefix("Error: ").split())) from None
    return args


def _port_flag(flag: str) -> str:
    return flag.replace("host", "port")


def listen_socket(host: str, port: int, flag: str = "--host") -> socket.socket:
    """A socket bound to host:port, for the API server to listen on once the engine is up.

    Bound now, so a busy port fails before the model loads; not listening yet, so clients get
    "connection refused" rather than a hang while the engine loads. ``flag`` is the host flag
    the address came from (``--host`` or ``--control-host``) and names it in errors."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # a name: its IPv4 address
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ServeError(f"{flag} {host}: cannot resolve it ({e.strerror})") from None
    address = infos[0][4]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As vLLM does: a restarted server can take its port back from TIME_WAIT connections.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ServeError(_bind_error(e, host, port, flag)) from None
    return sock


def _bind_error(e: OSError, host: str, port: int, flag: str) -> str:
    port_flag = _port_flag(flag)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if e.errno == errno.EADDRINUSE:
        return f"{port_flag} {port}: {where} is already in use (another server?)"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"{flag} {host}: not an address of this machine"
    if e.errno == errno.EACCES:
        return f"{port_flag} {port}: no permission to listen on {where}"
    return f"{flag} {host} {port_flag} {port}: cannot listen ({e.strerror})"
