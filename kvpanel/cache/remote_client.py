"""The Redis tier's connection: one client, its health, its measured latency, and the wire
operations that move many chunks per round trip.

Primitives:
- ``RemoteLink``: the redis-py client (``Redis`` or ``RedisCluster``), built lazily and dropped
  on a connection-level error (the tier is then unhealthy: ``down_reason``); a probe thread PINGs
  every ``probe_interval_s`` (reconnecting while down) and refreshes the server's memory stats
  every ``stats_interval_s``. ``latency_s``: the median of the last pure round trips (the PINGs,
  and reads that brought no value back), what a lookup of an absent key costs.
- ``get_many_checked``: (length, value) of many names in one pipeline, each read checked
  against the expected length in Redis first (``remote_format.get_checked`` says how).
- ``set_many``: SETs of (name, header, payload) in one pipeline; on a single Redis the command
  is written to the socket piecewise, header and payload straight from the caller's memory (no
  joined copy, and none in the packer: redis-py's hiredis packer copies every argument twice).

Nothing here logs values or URLs with passwords (``RemoteUrl.display`` is the printable form).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Sequence

import redis
from redis.cluster import RedisCluster

from kvpanel.cache import remote_format as fmt

log = logging.getLogger("kvpanel")

Client = redis.Redis | RedisCluster
# Round trips the latency is the median of: one slow PING on a busy host does not make Redis
# "slow", and a Redis that turned slow (or fast) is seen as such after three samples.
_LATENCY_SAMPLES = 5


class RemoteLink:
    def __init__(
        self,
        url: fmt.RemoteUrl,
        *,
        connect_timeout_s: float,
        timeout_s: float,
        probe_interval_s: float,
        stats_interval_s: float,
    ) -> None:
        self.url = url
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._probe_interval_s = probe_interval_s
        self._stats_interval_s = stats_interval_s
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._healthy = False
        self._down_reason = "not connected yet"
        self._last_stats = 0.0
        self._rtt_s: float | None = None
        self._round_trips: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        self._server = (0, 0, 0)  # maxmemory, used_memory, keys (whole db, all users)
        self._stop = threading.Event()
        self._prober: threading.Thread | None = None

    @property
    def healthy(self) -> bool:
        with self._lock:
            return self._healthy

    @property
    def latency_s(self) -> float | None:
        """Median of the last round trips that carried no value; None before the first."""
        with self._lock:
            return statistics.median(self._round_trips) if self._round_trips else None

    def note_round_trip(self, seconds: float) -> None:
        with self._lock:
            self._round_trips.append(seconds)

    def snapshot(self) -> tuple[bool, str, float | None, tuple[int, int, int]]:
        """(healthy, why down, last PING round trip, (maxmemory, used_memory, keys))."""
        with self._lock:
            return self._healthy, self._down_reason, self._rtt_s, self._server

    def client(self) -> Client:
        with self._lock:
            if self._client is not None:
                return self._client
        client = fmt.connect(self.url, self._connect_timeout_s, self._timeout_s)
        with self._lock:
            if self._client is None:
                self._client = client
                return client
            existing = self._client
        client.close()
        return existing

    def mark_down(self, e: BaseException) -> None:
        with self._lock:
            was_up = self._healthy
            self._healthy = False
            self._down_reason = fmt.describe(e)
            client, self._client = self._client, None
        if was_up:
            log.warning("kvpanel remote tier %s unreachable: %s", self.url.display, fmt.describe(e))
        if client is not None:
            # Rebuilt by the probe: a cluster client must rediscover its slots anyway.
            with contextlib.suppress(Exception):
                client.close()

    def probe(self) -> bool:
        """PING (and, when due, read the server's memory stats); False marks the link down."""
        try:
            client = self.client()
            with self._lock:
                up = self._healthy
                due = not up or time.monotonic() - self._last_stats >= self._stats_interval_s
            if not up:
                client.ping()  # connects: the round trip is timed on a warm connection
            t0 = time.perf_counter()
            client.ping()
            rtt = time.perf_counter() - t0
            server = fmt.server_info(client) if due else None
        except Exception as e:  # anything failing here means "not usable now"
            self.mark_down(e)
            return False
        self.note_round_trip(rtt)
        with self._lock:
            was_up = self._healthy
            self._healthy, self._rtt_s = True, rtt
            if server is not None:
                self._server, self._last_stats = server, time.monotonic()
        if not was_up:
            log.info("kvpanel remote tier %s reachable", self.url.display)
        return True

    def start(self) -> None:
        self._prober = threading.Thread(
            target=self._probe_loop, name="kvpanel-remote-probe", daemon=True
        )
        self._prober.start()

    def _probe_loop(self) -> None:
        # Every interval, also while up: the PING is what tells a slow Redis from a fast one
        # when no read has measured it lately.
        while not self._stop.wait(self._probe_interval_s):
            self.probe()

    def close(self) -> None:
        self._stop.set()
        if self._prober is not None:
            self._prober.join()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


def get_many_checked(
    client: Client, names: Sequence[bytes], nbytes: int, *, scripted: bool = True
) -> list[tuple[int, bytes | None] | Exception]:
    """Per name, like ``remote_format.get_checked`` (``(-1, None)`` absent; the value only when
    its length is ``nbytes``), all in one pipeline; a Redis error answers that name alone
    (e.g. WRONGTYPE for a hash planted under it). Connection errors raise."""
    pipe = client.pipeline(transaction=False)  # cluster-safe: each pair names one key
    for name in names:
        if scripted:
            pipe.execute_command("EVAL", fmt.DROP_IF_NOT_LENGTH, 1, name, nbytes)
        else:
            pipe.strlen(name)
        pipe.getrange(name, 0, nbytes - 1)
    replies = pipe.execute(raise_on_error=False)
    out: list[tuple[int, bytes | None] | Exception] = []
    for i in range(len(names)):
        size, raw = replies[2 * i], replies[2 * i + 1]
        if isinstance(size, Exception) or isinstance(raw, Exception):
            out.append(size if isinstance(size, Exception) else raw)
            continue
        n = int(size)
        if not scripted and n == 0:
            n = -1  # absent (an empty value is no chunk either)
        out.append((n, raw if n == nbytes else None))
    return out


def set_many(
    client: Client,
    items: Sequence[tuple[bytes, bytes, memoryview]],
    ttl_s: int | None,
) -> list[bool]:
    """SET name = header + payload for each (name, header, payload), one pipeline; per item
    whether Redis said OK. Connection errors raise."""
    if not items:
        return []
    if isinstance(client, RedisCluster):
        # The cluster pipeline routes per slot; it needs whole values (one copy each).
        pipe = client.pipeline(transaction=False)
        for name, header, payload in items:
            pipe.set(name, b"".join((header, payload)), ex=ttl_s)
        return [r is True for r in pipe.execute(raise_on_error=False)]
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        chunks: list[bytes | memoryview] = []
        for name, header, payload in items:
            chunks += _packed_set(name, header, payload, ttl_s)
        # A pooled connection that died (Redis restarted) is reconnected and the whole
        # pipeline sent once more, as redis-py's own retry does; SET is idempotent.
        conn.retry.call_with_retry(
            lambda: conn.send_packed_command(chunks), lambda _e: conn.disconnect()
        )
        replies: list[bool] = []
        for _ in items:
            try:
                replies.append(conn.read_response() in (b"OK", "OK", True))
            except redis.ResponseError:
                replies.append(False)  # e.g. OOM on a full Redis: that SET alone failed
        return replies
    except BaseException:
        conn.disconnect()  # a half-read pipeline leaves replies on the wire
        raise
    finally:
        pool.release(conn)


def _packed_set(
    name: bytes, header: bytes, payload: memoryview, ttl_s: int | None
) -> list[bytes | memoryview]:
    value_bytes = len(header) + payload.nbytes
    head = [b"*5\r\n" if ttl_s is not None else b"*3\r\n", b"$3\r\nSET\r\n"]
    head.append(b"$%d\r\n%s\r\n$%d\r\n" % (len(name), name, value_bytes))
    tail = b"\r\n"
    if ttl_s is not None:
        ttl = str(ttl_s).encode()
        tail += b"$2\r\nEX\r\n$%d\r\n%s\r\n" % (len(ttl), ttl)
    return [b"".join(head) + header, payload, tail]
