"""Value format and URL syntax of the Redis tier.

Primitives:
- ``RemoteUrl``: a parsed ``remote_url`` (redis-py URL, cluster flag, TTL, printable form).
- ``parse_url``: ``redis://h:p[/db]``, ``rediss://``, ``redis+cluster://h:p`` or ``?cluster=1``,
  ``?ttl=SECONDS``; raises ``ValueError`` naming the problem.
- ``redis_key``: ``kvpanel:<fingerprint hex>:<chunk key hex>``; ``scan_names`` lists them,
  ``chunk_keys`` parses them back, ``delete_prefix`` unlinks them all.
- ``connect``: a redis-py client (``Redis`` or ``RedisCluster``) with the tier's timeouts.
- ``ERRORS`` / ``is_down`` / ``describe`` / ``server_info``: error classes and health helpers.
- ``encode`` / ``decode``: a value is the disk tier's 64-byte ``ChunkHeader`` (magic, format
  version, fingerprint digest, key, payload length, blake2b-16 checksum, or with a
  ``CacheSecret`` a keyed MAC) followed by the payload, so the two tiers share one validated
  layout. ``decode`` raises ``CorruptChunk``.
- ``get_checked``: how a read fetches a value: one pipeline of EVAL ``DROP_IF_NOT_LENGTH`` (a
  value of any length but the expected one is deleted, in Redis) and ``GETRANGE 0 expected-1``.
  Junk under our key names, of any size, is never sent, and a good value costs one round trip
  and one copy in Redis, as a GET does (a script that returned the value itself was measured
  ~50% slower for 6 MiB values: Lua copies it twice more). Both commands name one key, so they
  run on Redis Cluster too. A Redis user without EVAL gets STRLEN + GETRANGE instead (at most
  one chunk's bytes of a wrong value are sent; the tier deletes it).

Redis is shared by many processes and models, and anything may have written a key (another
kvpanel version, an operator, a bug), so nothing is trusted until ``decode`` checked it all.
Without a cache secret that check stops accidents, not forgeries: anyone who can write the DB
can compute a valid header (``kvpanel.cache.secret``).
"""

from __future__ import annotations

import contextlib
import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import (
    ClusterDownError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.retry import Retry

from kvpanel.cache.disk_format import HEADER_BYTES, ChunkHeader, CorruptChunk
from kvpanel.cache.secret import CacheSecret, payload_check
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

# KEYS[1]: a chunk's name; ARGV[1]: the only valid value length (header + payload). Returns the
# value's length, -1 when absent; a value of another length is deleted (it is under our name,
# and doubtful), so the GETRANGE after it finds nothing to send.
DROP_IF_NOT_LENGTH = """
local n = redis.call('STRLEN', KEYS[1])
if n == 0 and redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if n ~= tonumber(ARGV[1]) then redis.call('UNLINK', KEYS[1]) end
return n
"""


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


def scan_names(client: redis.Redis | RedisCluster, fp_hex: str, count: int = 1000) -> list[bytes]:
    return list(client.scan_iter(match=f"{key_prefix(fp_hex)}*", count=count))


def chunk_keys(names: list[bytes], fp_hex: str) -> list[bytes]:
    """The chunk keys named by ``names`` (names that only matched the pattern are skipped)."""
    prefix = key_prefix(fp_hex)
    keys: list[bytes] = []
    for name in names:
        with contextlib.suppress(ValueError):  # a foreign name that matched the pattern
            keys.append(bytes.fromhex(name.decode()[len(prefix) :]))
    return keys


def delete_prefix(client: redis.Redis | RedisCluster, fp_hex: str) -> list[bytes]:
    """Unlink every value under ``key_prefix(fp_hex)``; the chunk keys that were there."""
    names = scan_names(client, fp_hex)
    pipe = client.pipeline(transaction=False)  # cluster-safe: keys span slots
    for name in names:
        pipe.unlink(name)
    pipe.execute()
    return chunk_keys(names, fp_hex)


def encode(
    fingerprint: bytes, key: bytes, payload: memoryview, secret: CacheSecret | None = None
) -> bytes:
    """Header + payload as one value (one copy: Redis SET takes a single bulk string, and a
    SET + APPEND pair would let a reader see a torn value in between)."""
    check = payload_check(payload, fingerprint, key, secret)
    header = ChunkHeader(fingerprint, key, payload.nbytes, check)
    return b"".join((header.pack(), payload))


def decode(
    raw: bytes, fingerprint: bytes, key: bytes, secret: CacheSecret | None = None
) -> memoryview:
    """The validated payload of ``raw`` (a view into it, no copy); raises ``CorruptChunk``."""
    header = ChunkHeader.unpack(raw)
    if header.fingerprint != fingerprint:
        raise CorruptChunk("fingerprint mismatch")
    if header.key != key:
        raise CorruptChunk("key mismatch")
    if len(raw) != header.file_bytes:
        raise CorruptChunk(f"torn value: {len(raw)} bytes, header says {header.file_bytes}")
    payload = memoryview(raw)[HEADER_BYTES:]
    if not hmac.compare_digest(payload_check(payload, fingerprint, key, secret), header.checksum):
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


def get_checked(
    client: redis.Redis | RedisCluster, name: bytes, nbytes: int, *, scripted: bool = True
) -> tuple[int, bytes | None]:
    """(length, value) of ``name`` in one round trip: ``(-1, None)`` when absent; a length other
    than ``nbytes`` gives ``None`` (deleted unread when ``scripted``).

    ``scripted=False`` (a Redis user without EVAL): STRLEN + GETRANGE, so at most ``nbytes`` of
    a wrong value are sent, and the caller deletes it.
    """
    # EVAL, not EVALSHA: redis-py refuses EVALSHA (and its eval() method) in cluster pipelines,
    # and the script's ~200 bytes are nothing next to a chunk (Redis compiles it once and caches
    # it). Not a transaction either (a cluster pipeline need not support one): a write between
    # the two commands just makes the range hold other bytes, at most nbytes, which decode()
    # rejects.
    pipe = client.pipeline(transaction=False)
    if scripted:
        pipe.execute_command("EVAL", DROP_IF_NOT_LENGTH, 1, name, nbytes)
    else:
        pipe.strlen(name)
    pipe.getrange(name, 0, nbytes - 1)
    size, raw = pipe.execute()
    size = int(size)
    if not scripted and size == 0:
        size = -1  # absent (an empty value is no chunk either)
    return size, (raw if size == nbytes else None)


def is_permission_error(e: BaseException) -> bool:
    return isinstance(e, NoPermissionError) or (
        isinstance(e, ResponseError) and str(e).startswith("NOPERM")
    )


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
