"""TTFT accounting against the fake streaming server (no absolute speed is asserted)."""

from __future__ import annotations

import asyncio

import pytest

from kvpanel.bench.client import (
    RequestFailed,
    StreamOutcome,
    chunk_has_token,
    make_client,
    probe_tokenizer,
    stream_request,
)
from kvpanel.bench.prompts import Prompt
from tests.bench.fake_server import FakeServer

DELAY = 0.3


def _request(server: FakeServer, prompt: Prompt, chat: bool, output_len: int = 4) -> StreamOutcome:
    async def go() -> StreamOutcome:
        async with make_client(server.url, None, 4, 30.0) as client:
            return await stream_request(client, "fake-model", prompt, output_len, chat)

    return asyncio.run(go())


def _assert_ttft(out: StreamOutcome) -> None:
    assert out.ttft_s is not None
    # At least the server's delay, and not the whole stream; the upper bound is only a sanity
    # margin for slow CI machines.
    assert DELAY * 0.95 <= out.ttft_s < DELAY + 2.0
    assert out.ttft_s <= out.latency_s


def test_chunk_has_token_rules() -> None:
    assert not chunk_has_token({"choices": []})
    assert not chunk_has_token({"choices": [], "usage": {"prompt_tokens": 3}})
    assert not chunk_has_token({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
    assert chunk_has_token({"choices": [{"text": ""}]})
    assert chunk_has_token({"choices": [{"text": "", "token_ids": [5]}]})
    assert chunk_has_token({"choices": [{"delta": {"content": None, "reasoning_content": "x"}}]})
    assert chunk_has_token({"choices": [{"delta": {"reasoning": "x"}}]})
    assert chunk_has_token({"choices": [{"delta": {"content": "x"}}]})


@pytest.mark.parametrize("style", ["text", "token_ids", "empty"])
def test_completions_ttft_is_the_delay(style: str) -> None:
    with FakeServer(first_delay=DELAY, style=style) as server:
        out = _request(server, [300, 100, 100] if style != "text" else "0 hi hi", chat=False)
        body = server.requests[0]
    _assert_ttft(out)
    assert out.output_tokens == 4
    assert out.prompt_tokens == 3
    assert body["ignore_eos"] is True and body["max_tokens"] == 4 and body["stream"] is True
    assert body["_path"] == "/v1/completions"
    if style == "text":
        assert out.text == " hi" * 4


@pytest.mark.parametrize("style", ["chat", "reasoning"])
def test_chat_ttft_skips_role_chunk(style: str) -> None:
    with FakeServer(first_delay=DELAY, style=style) as server:
        out = _request(server, "0 hi hi", chat=True)
        body = server.requests[0]
    _assert_ttft(out)
    assert body["messages"] == [{"role": "user", "content": "0 hi hi"}]
    assert body["ignore_eos"] is True


def test_http_error_raises() -> None:
    with FakeServer(fail_status=500) as server, pytest.raises(RequestFailed, match="HTTP 500"):
        _request(server, "x", chat=False)


def test_token_ids_need_completions() -> None:
    with FakeServer() as server, pytest.raises(ValueError):
        _request(server, [1, 2], chat=True)


@pytest.mark.parametrize("tokenizer", [True, False])
def test_probe_tokenizer(tokenizer: bool) -> None:
    async def go(url: str) -> bool:
        async with make_client(url, None, 2, 10.0) as client:
            return await probe_tokenizer(client, "fake-model")

    with FakeServer(tokenizer=tokenizer) as server:
        assert asyncio.run(go(server.url)) is tokenizer
