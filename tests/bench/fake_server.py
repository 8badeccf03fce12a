"""A tiny OpenAI-like streaming server for the benchmark tests (aiohttp, 127.0.0.1:0, a thread).

It streams ``max_tokens`` SSE chunks after a controllable delay, imitating a prefix cache: a
prompt seen before waits ``hit_delay`` instead of ``first_delay`` (when ``hit_delay`` is set).

Chunk styles:
    text       - completions chunks with text " hi"
    token_ids  - completions chunks with empty text and token_ids (a server without tokenizer)
    empty      - completions chunks with empty text only
    chat       - chat chunks: a role-only chunk at once, then content deltas
    reasoning  - chat chunks: a role-only chunk at once, then reasoning deltas (content None)
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from aiohttp import web


class FakeServer:
    def __init__(
        self,
        first_delay: float = 0.05,
        hit_delay: float | None = None,
        style: str = "text",
        tokenizer: bool = True,
        fail_status: int | None = None,
        token_delay: float = 0.001,
        model: str = "fake-model",
    ) -> None:
        self.first_delay = first_delay
        self.hit_delay = hit_delay
        self.style = style
        self.tokenizer = tokenizer
        self.fail_status = fail_status
        self.token_delay = token_delay
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.inflight = 0
        self.max_inflight = 0
        self._seen: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/v1/chat/completions", self._generate)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model}]})

    async def _tokenize(self, request: web.Request) -> web.Response:
        if not self.tokenizer:
            return web.json_response({"error": "no tokenizer"}, status=400)
        body = await request.json()
        tokens = list(range(len(str(body.get("prompt", "")).split())))
        return web.json_response({"tokens": tokens, "count": len(tokens)})

    def _chunk(self, i: int, chat: bool) -> dict[str, Any]:
        if chat:
            key = "reasoning_content" if self.style == "reasoning" else "content"
            delta = {"content": None, key: " hi"}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
        elif self.style == "token_ids":
            choice = {"index": 0, "text": "", "token_ids": [300 + i], "finish_reason": None}
        elif self.style == "empty":
            choice = {"index": 0, "text": "", "finish_reason": None}
        else:
            choice = {"index": 0, "text": " hi", "finish_reason": None}
        return {"id": "x", "object": "chunk", "model": self.model, "choices": [choice]}

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        body["_path"] = request.path
        self.requests.append(body)
        if self.fail_status is not None:
            return web.json_response({"error": "boom"}, status=self.fail_status)
        chat = request.path.endswith("/chat/completions")
        prompt = body["messages"][0]["content"] if chat else body["prompt"]
        key = json.dumps(prompt)
        hit = key in self._seen
        self._seen.add(key)
        delay = self.hit_delay if (hit and self.hit_delay is not None) else self.first_delay

        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)

            async def send(obj: Any) -> None:
                data = obj if isinstance(obj, str) else json.dumps(obj)
                await resp.write(f"data: {data}\n\n".encode())

            # Chunks that must not count as a first token, sent before the delay.
            await send({"id": "x", "choices": []})
            if chat:
                role = {"role": "assistant", "content": ""}
                await send({"id": "x", "choices": [{"index": 0, "delta": role}]})
            await asyncio.sleep(delay)
            n = int(body.get("max_tokens") or 1)
            for i in range(n):
                await send(self._chunk(i, chat))
                await asyncio.sleep(self.token_delay)
            n_prompt = len(prompt) if isinstance(prompt, list) else len(prompt.split())
            usage = {"prompt_tokens": n_prompt, "completion_tokens": n}
            await send({"id": "x", "choices": [], "usage": usage})
            await send("[DONE]")
            await resp.write_eof()
            return resp
        finally:
            self.inflight -= 1
