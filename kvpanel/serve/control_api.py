"""The control API, ``/kvpanel/v1/*``, as a FastAPI router over a StatusHub.

Every route needs ``Authorization: Bearer <token>`` (401 otherwise); bad values are 400 with
``{"error": "..."}``; a rejected call changes nothing (validation happens before any
change). Calls that reach the engine's control socket run in a thread, never on the event loop
that serves requests.

    GET  /kvpanel/v1/status                 the latest snapshot
    POST /kvpanel/v1/tiers/{tier}/resize    {"capacity_bytes": int}
    POST /kvpanel/v1/tiers/{tier}/clear
    POST /kvpanel/v1/bench                  long-doc-qa parameters; 409 while one runs
    GET  /kvpanel/v1/bench                  {"bench": state | null}
    GET  /kvpanel/v1/logs?since=N           {"lines": [...], "next": M}
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kvpanel.serve.auth import token_matches
from kvpanel.serve.hub import HubError, StatusHub

MAX_BODY = 64 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise HubError(413, f"request body over {MAX_BODY} bytes")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HubError(400, f"malformed JSON: {e}") from None
    except RecursionError:
        # A client's malformed body is a 400, never a 500: a small body of deeply nested
        # brackets makes json.loads raise RecursionError.
        raise HubError(400, "malformed JSON: nested too deeply") from None


def make_router(hub: StatusHub, token: str) -> APIRouter:
    router = APIRouter(prefix="/kvpanel/v1")

    async def guarded(request: Request, fn: Any) -> JSONResponse:
        if not token_matches(request.headers.get("authorization"), token):
            return _error(401, "unauthorized: wrong or missing token")
        try:
            return JSONResponse(await fn())
        except HubError as e:
            return _error(e.status, e.message)

    @router.get("/status")
    async def status(request: Request) -> JSONResponse:
        async def run() -> Any:
            return await asyncio.to_thread(hub.snapshot)

        return await guarded(request, run)

    @router.post("/tiers/{tier}/resize")
    async def resize(tier: str, request: Request) -> JSONResponse:
        async def run() -> Any:
            body = await _json_body(request)
            if not isinstance(body, dict) or "capacity_bytes" not in body:
                raise HubError(400, 'body must be {"capacity_bytes": <int>}')
            return await asyncio.to_thread(hub.resize, tier, body["capacity_bytes"])

        return await guarded(request, run)

    @router.post("/tiers/{tier}/clear")
    async def clear(tier: str, request: Request) -> JSONResponse:
        async def run() -> Any:
            return await asyncio.to_thread(hub.clear, tier)

        return await guarded(request, run)

    @router.post("/bench")
    async def start_bench(request: Request) -> JSONResponse:
        async def run() -> Any:
            body = await _json_body(request)
            return await asyncio.to_thread(hub.start_bench, body)

        return await guarded(request, run)

    @router.get("/bench")
    async def bench(request: Request) -> JSONResponse:
        async def run() -> Any:
            return {"bench": hub.bench()}

        return await guarded(request, run)

    @router.get("/logs")
    async def logs(request: Request, since: int = 0) -> JSONResponse:
        async def run() -> Any:
            return hub.logs(since)

        return await guarded(request, run)

    return router
