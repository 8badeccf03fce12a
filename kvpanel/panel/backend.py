"""How the panel talks to an engine: the PanelBackend protocol and its HTTP implementation
(tests replay recorded streams through tests/panel/recorded.py).

Every method may block (network), so the app only calls them from thread workers. Errors are
`BackendError` with a one-line message fit for a toast.
"""

from __future__ import annotations

import json
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
    """The control API of `kvpanel serve` over HTTP (sync httpx client, bearer token)."""

    def __init__(self, url: str, token: str | None, timeout: float = 5.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._httpx = httpx
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        httpx = self._httpx
        try:
            resp = self._client.request(method, API + path, json=body)
        except httpx.TimeoutException:
            raise BackendError(f"cannot reach {self.url}: timed out") from None
        except httpx.HTTPError as e:
            raise BackendError(f"cannot reach {self.url}: {e or type(e).__name__}") from None
        if resp.status_code == 401:
            raise BackendError("unauthorized: wrong or missing token")
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
