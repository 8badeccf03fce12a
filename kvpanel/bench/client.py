"""Streaming OpenAI-compatible client: one request, timed to its first token and its last byte.

    stream_request(client, ...)   - send one streamed /v1/completions or /v1/chat/completions
                                    request; returns a StreamOutcome (TTFT, latency, tokens, text)
    chunk_has_token(chunk)        - the TTFT rule: does this SSE chunk carry a generated token?
    discover_model(client)        - the first model that /v1/models lists
    probe_tokenizer(client, model)- does the server tokenize text (/tokenize works)?
    make_client(base_url, ...)    - an httpx.AsyncClient set up for benchmarking

TTFT is the time from sending the request to the first chunk that carries a token of ANY kind:
content text, reasoning text, token ids, or (completions API) a choice whose text is empty,
which is what a server started without a tokenizer streams. Chunks without choices (the usage
chunk) and chat chunks that only announce the role do not count.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from kvpanel.bench.prompts import Prompt

_DELTA_TOKEN_KEYS = ("content", "reasoning_content", "reasoning", "token_ids", "tool_calls")


class RequestFailed(RuntimeError):
    """The server answered with an error (HTTP status or an error object in the stream)."""


@dataclass(slots=True)
class StreamOutcome:
    ttft_s: float | None  # None: the stream ended without any token
    latency_s: float
    prompt_tokens: int | None
    output_tokens: int | None
    text: str
    response_id: str = ""  # the API's "id": vLLM's request id is it plus suffixes


def make_client(
    base_url: str, api_key: str | None, max_connections: int, timeout_s: float
) -> httpx.AsyncClient:
    """An AsyncClient on ``base_url`` (no proxies from the environment: servers are local)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers=headers,
        timeout=httpx.Timeout(timeout_s, connect=min(30.0, timeout_s)),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=None),
        trust_env=False,
    )


def _non_empty(value: Any) -> bool:
    return value is not None and value != "" and value != []


def chunk_has_token(chunk: dict[str, Any]) -> bool:
    """True when ``chunk`` (a decoded SSE ``data:`` object) carries at least one token."""
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if "text" in choice and choice["text"] is not None:
            return True  # completions: every choice chunk is a generation step
        if _non_empty(choice.get("token_ids")):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(_non_empty(delta.get(k)) for k in _DELTA_TOKEN_KEYS):
            return True
    return False


def _chunk_text(chunk: dict[str, Any]) -> str:
    parts = []
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
        delta = choice.get("delta")
        if isinstance(delta, dict):
            for key in ("reasoning_content", "reasoning", "content"):
                if isinstance(delta.get(key), str):
                    parts.append(delta[key])
    return "".join(parts)


def _chunk_token_count(chunk: dict[str, Any]) -> int:
    """Tokens in a chunk when the server says (token_ids), else 1 per token-carrying chunk."""
    ids = 0
    for choice in chunk.get("choices") or ():
        if isinstance(choice, dict):
            tids = choice.get("token_ids") or (choice.get("delta") or {}).get("token_ids")
            if isinstance(tids, list):
                ids += len(tids)
    return ids or (1 if chunk_has_token(chunk) else 0)


def request_body(
    model: str, prompt: Prompt, output_len: int, chat: bool, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON body: greedy, streamed with usage, exactly ``output_len`` tokens (ignore_eos)."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": output_len,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    if chat:
        if not isinstance(prompt, str):
            raise ValueError("token-id prompts need the completions API")
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if extra:
        body.update(extra)
    return body


async def _raise_for_status(resp: httpx.Response) -> None:
    if resp.status_code == 200:
        return
    body = (await resp.aread()).decode("utf-8", "replace").strip().replace("\n", " ")
    raise RequestFailed(f"HTTP {resp.status_code}: {body[:300]}")


async def stream_request(
    client: httpx.AsyncClient,
    model: str,
    prompt: Prompt,
    output_len: int,
    chat: bool,
    extra: dict[str, Any] | None = None,
) -> StreamOutcome:
    """Send one streamed request and time it. Raises RequestFailed / httpx errors."""
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = request_body(model, prompt, output_len, chat, extra)
    start = time.perf_counter()
    first: float | None = None
    usage: dict[str, Any] | None = None
    counted = 0
    pieces: list[str] = []
    response_id = ""
    async with client.stream("POST", path, json=body) as resp:
        await _raise_for_status(resp)
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk and not chunk.get("choices"):
                raise RequestFailed(f"stream error: {json.dumps(chunk['error'])[:300]}")
            response_id = response_id or str(chunk.get("id") or "")
            if chunk_has_token(chunk):
                if first is None:
                    first = time.perf_counter()
                counted += _chunk_token_count(chunk)
            pieces.append(_chunk_text(chunk))
            if isinstance(chunk.get("usage"), dict):
                usage = chunk["usage"]
    end = time.perf_counter()
    prompt_tokens = usage.get("prompt_tokens") if usage else None
    if prompt_tokens is None and isinstance(prompt, list):
        prompt_tokens = len(prompt)
    output_tokens = usage.get("completion_tokens") if usage else None
    return StreamOutcome(
        ttft_s=None if first is None else first - start,
        latency_s=end - start,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens if output_tokens is not None else counted,
        text="".join(pieces),
        response_id=response_id,
    )


async def discover_model(client: httpx.AsyncClient) -> str:
    """The id of the first model the server lists at /v1/models."""
    resp = await client.get("/v1/models")
    if resp.status_code != 200:
        raise RequestFailed(f"GET /v1/models: HTTP {resp.status_code}")
    data = resp.json().get("data") or []
    if not data or not isinstance(data[0], dict) or "id" not in data[0]:
        raise RequestFailed("GET /v1/models listed no model")
    return str(data[0]["id"])


async def probe_tokenizer(client: httpx.AsyncClient, model: str) -> bool:
    """True when the server's /tokenize turns text into tokens (False: send token ids)."""
    try:
        resp = await client.post("/tokenize", json={"model": model, "prompt": "hi"})
        if resp.status_code != 200:
            return False
        tokens = resp.json().get("tokens")
    except (httpx.HTTPError, ValueError):
        return False
    return isinstance(tokens, list) and len(tokens) > 0
