"""How the panel talks to an engine: the PanelBackend protocol and its HTTP implementation
(tests replay recorded streams through tests/panel/recorded.py).

Every method may block (network), so the app only calls them from thread workers. Errors are
`BackendError` with a one-line message fit for a toast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from kvpanel.bench.long_doc_qa import INTERACTIVE_DEFAULTS, BenchParams
from kvpanel.bench.prompts import REPEAT_MODES

# What the panel's benchmark dialog offers: BenchParams with the interactive defaults.
BENCH_FIELDS = (
    "num_documents",
    "document_length",
    "output_len",
    "repeat_count",
    "repeat_mode",
    "shuffle_seed",
    "max_inflight_requests",
)
_PARAMS = BenchParams(**INTERACTIVE_DEFAULTS)
BENCH_DEFAULTS: dict[str, Any] = {k: getattr(_PARAMS, k) for k in BENCH_FIELDS}
__all__ = ["BENCH_DEFAULTS", "REPEAT_MODES", "BackendError", "HttpBackend", "PanelBackend"]
API = "/kvpanel/v1"


class BackendError(Exception):
    """A failed backend call; str(e) is one line for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()) or "unknown error")


@runtime_checkable
class PanelBackend(Protocol):
    def snapshot(self) -> dict[str, Any]: ...

    def resize(self, tier: str, capacity_bytes: int) -> dict[str, Any]: ...

    def clear(self, tier: str) -> dict[str, Any]: ...

    def start_bench(self, params: dict[str, Any]) -> dict[str, Any]: ...

    def bench_status(self) -> dict[str, Any] | None: ...

    def logs(self, since: int) -> tuple[list[str], int]: ...


class HttpBackend:
    """The control API of `kvpanel serve` over HTTP (sync httpx client, bearer token).

    ``token_file``: where the token came from (the local server's state dir). On a 401 the file
    is read again, so a panel attached to a server that restarted with a new token reconnects
    by itself; a token given by the user (--token, $KVPANEL_TOKEN) is never replaced.
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        timeout: float = 5.0,
        token_file: Path | None = None,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.token = token
        self.token_file = token_file
        self._httpx = httpx
        self._client = httpx.Client(base_url=self.url, timeout=timeout)
        self._set_token(token)

    def _set_token(self, token: str | None) -> None:
        self.token = token
        self._client.headers.pop("Authorization", None)
        if token:
            self._client.headers["Authorization"] = f"Bearer {token}"

    def _token_file_changed(self) -> bool:
        """Re-read token_file; True (and the new token in use) when it holds another token."""
        if self.token_file is None:
            return False
        from kvpanel.serve.auth import read_token_file
        from kvpanel.settings import ConfigError

        try:
            token = read_token_file(self.token_file)
        except (ConfigError, OSError):
            return False  # a half-written or unsafe file: keep the old token, retry later
        if not token or token == self.token:
            return False
        self._set_token(token)
        return True

    def close(self) -> None:
        self._client.close()

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        httpx = self._httpx
        try:
            return self._client.request(method, API + path, json=body)
        except httpx.TimeoutException:
            raise BackendError(f"cannot reach {self.url}: timed out") from None
        except httpx.HTTPError as e:
            raise BackendError(f"cannot reach {self.url}: {e or type(e).__name__}") from None

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = self._send(method, path, body)
        if resp.status_code == 401 and self._token_file_changed():
            resp = self._send(method, path, body)
        if resp.status_code == 401:
            where = f" (also after re-reading {self.token_file})" if self.token_file else ""
            raise BackendError(f"unauthorized: wrong or missing token{where}")
        try:
            data = resp.json()
        except (json.JSONDecodeError, ValueError):
            data = None
        if resp.status_code >= 400:
            if isinstance(data, dict) and data.get("error"):
                msg = str(data["error"])
            else:
                msg = resp.text.strip().splitlines()[0] if resp.text.strip() else resp.reason_phrase
            if resp.status_code >= 500:
                msg = f"server error {resp.status_code}: {msg}"
            raise BackendError(msg)
        if not isinstance(data, dict):
            raise BackendError(f"bad response from {self.url}{API}{path}: not a JSON object")
        return data

    def snapshot(self) -> dict[str, Any]:
        return dict(self._request("GET", "/status"))

    def resize(self, tier: str, capacity_bytes: int) -> dict[str, Any]:
        body = {"capacity_bytes": int(capacity_bytes)}
        return dict(self._request("POST", f"/tiers/{tier}/resize", body))

    def clear(self, tier: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/tiers/{tier}/clear"))

    def start_bench(self, params: dict[str, Any]) -> dict[str, Any]:
        return dict(self._request("POST", "/bench", params))

    def bench_status(self) -> dict[str, Any] | None:
        bench = self._request("GET", "/bench").get("bench")
        return bench if isinstance(bench, dict) else None

    def logs(self, since: int) -> tuple[list[str], int]:
        data = self._request("GET", f"/logs?since={int(since)}")
        lines = [str(x) for x in data.get("lines", [])]
        return lines, int(data.get("next", since + len(lines)))
