"""The control-API token: given (--token / KVPANEL_TOKEN) or generated, stored 0600."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path


def ensure_token(state_dir: Path, given: str | None) -> tuple[str, bool]:
    """Return (token, generated). The token is written to <state_dir>/token with mode 0600."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = given or secrets.token_urlsafe(24)
    path = state_dir / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to an existing file
    return token, given is None


def token_matches(header: str | None, token: str) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer ") :].strip().encode(), token.encode())
