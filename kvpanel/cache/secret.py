"""The cache secret: keyed chunk checks, and one namespace per secret, for disk and Redis.

Primitives:
- ``CacheSecret``: built from the operator's secret (``kvpanel.settings.cache_secret_from_env``
  reads and length-checks it); keeps only keys derived from it (its repr shows none):
  ``namespace(fp_digest)`` and ``seal(...)``.
- ``namespace_digest(fp_digest, secret)``: the digest that names a fingerprint's chunks (the disk
  tier's directory, the Redis key names, the header's fingerprint field): the fingerprint's own
  digest without a secret, a keyed one-way derivation of it with one.
- ``payload_check(payload, fingerprint, key, secret)``: the header's 16-byte check: blake2b-16 of
  the payload without a secret; with one, keyed blake2b-16 over (fingerprint, key, payload
  length, payload), so only holders of the secret can make a chunk that passes.

Why a namespace per secret, not just a MAC: a shared directory or Redis may hold chunks of
servers with different secrets (or none) for the same model. Were their names equal, each would
find the others' chunks failing its check and delete them as corrupt, and the servers would
erase each other's cache. A separate namespace makes them never meet: a server looks only at
names derived from its own secret, so everything it finds there is either a chunk of a server
with the same secret or a forgery (deleted: it sits under our name). The derivation is one-way
(keyed blake2b), so the names, visible to anyone who can list the store, reveal nothing of the
secret beyond what any valid chunk does; a low-entropy secret can be guessed offline from either,
hence the settings' minimum length. The format version stays 1: a chunk's layout is unchanged,
only who can produce a valid check differs, and the namespaces keep keyed and unkeyed apart.
"""

from __future__ import annotations

import hashlib
import struct

import xxhash

_DIGEST_BYTES = 16
_LENGTH = struct.Struct("<Q")


class CacheSecret:
    """Keys derived from a cache secret shared by trusted servers."""

    __slots__ = ("_mac_key", "_namespace_key")

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("an empty cache secret keys nothing")
        # Separate keys per use (personalised blake2b), so a value computed for one purpose is
        # never valid for another; neither reveals the secret or the other key.
        root = hashlib.blake2b(secret, digest_size=64, person=b"kvpanel-secret").digest()
        self._mac_key = hashlib.blake2b(root, digest_size=32, person=b"kvpanel-mac").digest()
        self._namespace_key = hashlib.blake2b(root, digest_size=32, person=b"kvpanel-ns").digest()

    def __repr__(self) -> str:
        return "CacheSecret(<hidden>)"

    def namespace(self, fp_digest: bytes) -> bytes:
        return hashlib.blake2b(
            fp_digest, digest_size=_DIGEST_BYTES, key=self._namespace_key
        ).digest()

    def seal(
        self, fingerprint: bytes, key: bytes, payload: memoryview | bytes | bytearray
    ) -> bytes:
        h = hashlib.blake2b(digest_size=_DIGEST_BYTES, key=self._mac_key)
        h.update(fingerprint)
        h.update(key)
        h.update(_LENGTH.pack(memoryview(payload).nbytes))
        h.update(payload)
        return h.digest()


def namespace_digest(fp_digest: bytes, secret: CacheSecret | None) -> bytes:
    return fp_digest if secret is None else secret.namespace(fp_digest)


def payload_check(
    payload: memoryview | bytes | bytearray,
    fingerprint: bytes,
    key: bytes,
    secret: CacheSecret | None,
) -> bytes:
    if secret is None:
        # Unkeyed: catches corruption, not forgery (anyone who can write the store can write a
        # valid file anyway), so a fast non-cryptographic hash is enough: xxh3-128 checks at
        # memory speed (~20 GB/s per core) where blake2b managed 0.75 GB/s.
        return xxhash.xxh3_128_digest(payload)
    return secret.seal(fingerprint, key, payload)
