"""A real redis-server for tests, and the rule for when one is missing.

``RedisServer`` runs one redis-server on loopback (no persistence; optional ``requirepass``);
``require_redis()`` / ``environment_skip()`` skip a test on a developer machine without Redis,
but FAIL it in CI (env ``CI`` set): CI installs redis-server, and a skip there would let the whole
Redis tier go untested while the run still looks green.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import NoReturn

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
INSTALL_HINT = "apt-get install redis-server"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def environment_skip(reason: str) -> NoReturn:
    """Skip for a missing piece of the environment; in CI the environment is ours: fail."""
    if in_ci():
        pytest.fail(f"CI must run this test, but: {reason}", pytrace=False)
    pytest.skip(reason)


def require_redis(cli: bool = False) -> None:
    missing = [
        name
        for name, path in (("redis-server", REDIS_SERVER), ("redis-cli", REDIS_CLI))
        if path is None and (cli or name == "redis-server")
    ]
    if missing:
        environment_skip(f"{' / '.join(missing)} not installed ({INSTALL_HINT})")


def free_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free too (Redis needs both)."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port


class RedisServer:
    """One redis-server on loopback, no persistence; kill() and start() keep the port."""

    def __init__(
        self, workdir: Path, port: int | None = None, *extra: str, password: str | None = None
    ) -> None:
        self.workdir, self.port, self.extra = workdir, port or free_port(), extra
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5
        )

    def start(self) -> RedisServer:
        require_redis()
        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.workdir), *self.extra]
        if self.password:
            args += ["--requirepass", self.password]
        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
