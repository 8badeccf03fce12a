"""Value format and URL syntax of the Redis tier.

Primitives:
- ``RemoteUrl``: a parsed ``remote_url`` (redis-py URL, cluster flag, TTL, printable form).
- ``parse_url``: ``redis://h:p[/db]``, ``rediss://``, ``redis+cluster://h:p`` or ``?cluster=1``,
  ``?ttl=SECONDS``; raises ``ValueError`` naming the problem.
- ``redis_key``: ``kvpanel:<fingerprint hex>:<chunk key hex>``.
- ``connect``: a redis-py client (``Redis`` or ``RedisCluster``) with the tier's timeouts.
- ``ERRORS`` / ``is_down`` / ``describe`` / ``server_info``: error classes and health helpers.
- ``encode`` / ``decode``: a value is the disk tier's 64-byte ``ChunkHeader`` (magic, format
  version, fingerprint digest, key, payload length, blake2b-16 checksum) followed by the payload,
  so the two tiers share one validated layout. ``decode`` raises ``CorruptChunk``.

Redis is shared by many processes and models, and anything may have written a key (another
kvpanel version, an operator, a bug), so nothing is trusted until ``decode`` checked it all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError, ResponseError
from redis.retry import Retry

from kvpanel.cache.disk_format import HEADER_BYTES, ChunkHeader, CorruptChunk, checksum
from kvpanel.redact import display_url

KEY_PREFIX = "kvpanel"
_SCHEMES = {
    "redis": ("redis", False),
    "rediss": ("rediss", False),
    "redis+cluster": ("redis", True),
    "rediss+cluster": ("rediss", True),
}
# RedisClusterException is not a RedisError (e.g. "cannot connect to any startup node").
ERRORS = (RedisError, RedisClusterException, OSError)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True, slots=True)
class RemoteUrl:
    url: str  # what redis-py's from_url gets: our own query parameters removed
    cluster: bool
    ttl_s: int | None
    display: str  # no password: safe for logs, notes and the panel


def parse_url(url: str) -> RemoteUrl:
    # Error messages name the URL in display form: it may carry a password.
    shown = display_url(url)
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"remote_url {shown!r}: use redis://host:port[/db], rediss:// or redis+cluster://"
        )
    scheme, cluster = _SCHEMES[parts.scheme]
    if not parts.hostname:
        raise ValueError(f"remote_url {shown!r} names no host")
    try:
        parts.port  # noqa: B018  (parsing it validates it)
    except ValueError as e:
        raise ValueError(f"remote_url {shown!r}: {e}") from None
    ttl: int | None = None
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "ttl":
            try:
                ttl = int(value)
            except ValueError:
                raise ValueError(f"remote_url: ttl={value!r} is not whole seconds") from None
            if ttl <= 0:
                raise ValueError(f"remote_url: ttl must be positive, got {ttl}")
        elif name == "cluster":
            if value.lower() not in _TRUE | _FALSE:
                raise ValueError(f"remote_url: cluster={value!r}, expected 1 or 0")
            cluster = cluster or value.lower() in _TRUE
        else:
            rest.append((name, value))  # redis-py's own options (e.g. ssl_cert_reqs)
    clean = urlunsplit((scheme, parts.netloc, parts.path, urlencode(rest), ""))
    return RemoteUrl(clean, cluster, ttl, shown)


def key_prefix(fp_hex: str) -> str:
    return f"{KEY_PREFIX}:{fp_hex}:"


def redis_key(fp_hex: str, key: bytes) -> bytes:
    return f"{KEY_PREFIX}:{fp_hex}:{key.hex()}".encode()


def encode(fingerprint: bytes, key: bytes, payload: memoryview) -> bytes:
    """Header + payload as one value (one copy: Redis SET takes a single bulk string, and a
    SET + APPEND pair would let a reader see a torn value in between)."""
    header = ChunkHeader(fingerprint, key, payload.nbytes, checksum(payload))
    return b"".join((header.pack(), payload))


def decode(raw: bytes, fingerprint: bytes, key: bytes) -> memoryview:
    """The validated payload of ``raw`` (a view into it, no copy); raises ``CorruptChunk``."""
    header = ChunkHeader.unpack(raw)
    if header.fingerprint != fingerprint:
        raise CorruptChunk("fingerprint mismatch")
    if header.key != key:
        raise CorruptChunk("key mismatch")
    if len(raw) != header.file_bytes:
        raise CorruptChunk(f"torn value: {len(raw)} bytes, header says {header.file_bytes}")
    payload = memoryview(raw)[HEADER_BYTES:]
    if checksum(payload) != header.checksum:
        raise CorruptChunk("payload checksum mismatch")
    return payload


def connect(
    url: RemoteUrl, connect_timeout_s: float, timeout_s: float
) -> redis.Redis | RedisCluster:
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout_s,
        "socket_timeout": timeout_s,
        # One immediate retry heals a pooled connection that died with a Redis restart;
        # longer retry loops would stall promotions while Redis is away (the probe retries).
        "retry": Retry(NoBackoff(), 1),
    }
    if url.cluster:
        return RedisCluster.from_url(url.url, **kwargs)  # connects now: slot discovery
    return redis.Redis.from_url(url.url, **kwargs)


def is_down(e: BaseException) -> bool:
    # A response error (OOM on a full Redis, a wrong type) means Redis answered: count it, stay
    # up. Everything else (refused, timed out, reset, cluster down) means it cannot be used.
    return not isinstance(e, ResponseError) or isinstance(e, ClusterDownError)


def describe(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"[:160] if text else type(e).__name__


def server_info(client: redis.Redis | RedisCluster) -> tuple[int, int, int]:
    """(maxmemory, used_memory, keys) summed over nodes; a cluster answers per node."""
    info: dict[str, Any] = client.info("memory")
    nodes = (
        list(info.values()) if info and all(isinstance(v, dict) for v in info.values()) else [info]
    )
    cap = sum(int(n.get("maxmemory", 0)) for n in nodes)
    used = sum(int(n.get("used_memory", 0)) for n in nodes)
    size = client.dbsize()
    keys = sum(int(v) for v in size.values()) if isinstance(size, dict) else int(size)
    return cap, used, keys
