"""serve/openai_api.py with the official `openai` client, and minivox's remote backend against it
(plus an unreachable port and servers that stall)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import torch

from minivox.backends import (BackendError, BackendTimeout, BackendUnreachable, ChatDelta, GenerationOptions,
                              LocalBackend, OpenAIBackend, iter_sse)
from minivox.chat import APOLOGIES, Assistant
from minivox.chat_template import ToolCall, train_chat_tokenizer
from minivox.llm import GPT, GPTConfig
from minivox.serve.openai_api import ApiError, parse_chat_request, serve
from minivox.tools import demo_tools

import openai  # noqa: E402  (a dev dependency: the official client is the peer these tests use)

LINES = ["what time is it", "It's 2:05 PM.", "what's 17 times 23", "17 times 23 is 391.", "hello there",
         '[{"name": "calculator", "arguments": {"expression": "17 * 23"}}]', '{"result": 391}',
         "You are minivox, a friendly voice assistant."] * 20
MESSAGES = [{"role": "system", "content": "You are minivox."}, {"role": "user", "content": "what time is it"}]


@pytest.fixture(scope="module")
def local_backend():
    tokenizer = train_chat_tokenizer(LINES, vocab_size=320)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, d_model=32, max_seq_len=256)).eval()
    model.tokenizer = tokenizer
    return LocalBackend(model)


@pytest.fixture(scope="module")
def server(local_backend):
    srv = serve(local_backend, port=0, model_name="minivox-test", default_max_tokens=20)
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


class ToolCallingBackend:
    """A backend that always asks for the calculator, then answers: stands in for a model that calls tools."""

    max_context = 512

    def count_tokens(self, messages):
        return sum(len(m["content"]) // 4 + 4 for m in messages)

    def stream_chat(self, messages, tools, options):
        if messages[-1]["role"] == "tool":
            yield ChatDelta(text="17 times 23 is ")
            yield ChatDelta(text=json.loads(messages[-1]["content"])["result"].__str__() + ".")
            yield ChatDelta(finish_reason="stop")
        elif tools:
            yield ChatDelta(tool_calls=[ToolCall("calculator", '{"expression": "17 * 23"}', "call_7")], finish_reason="tool_calls")
        else:
            yield ChatDelta(text="I have no tools.", finish_reason="stop")


@pytest.fixture(scope="module")
def tool_server():
    srv = serve(ToolCallingBackend(), port=0, model_name="tools")
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def local_reply(backend, messages, max_tokens=20) -> str:
    return "".join(d.text for d in backend.stream_chat(messages, None, GenerationOptions(max_tokens=max_tokens)))


# ---- the official client against serve-llm ------------------------------------------------------


def test_openai_client_streams_a_chat_completion(server, local_backend):
    client = openai.OpenAI(base_url=server, api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(model="minivox-test", messages=MESSAGES, stream=True, max_tokens=20,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == local_reply(local_backend, MESSAGES)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (["stop"], ["length"])
    assert chunks[-1].usage.prompt_tokens == local_backend.count_tokens(MESSAGES)
    assert len({c.id for c in chunks}) == 1


def test_openai_client_non_streaming_and_models(server, local_backend):
    client = openai.OpenAI(base_url=server, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["minivox-test"]
    completion = client.chat.completions.create(model="minivox-test", messages=MESSAGES, max_tokens=20)
    assert completion.choices[0].message.content == local_reply(local_backend, MESSAGES)
    assert completion.usage.completion_tokens <= 20


def test_openai_client_gets_tool_calls(tool_server):
    client = openai.OpenAI(base_url=tool_server, api_key="unused", max_retries=0)
    tools = demo_tools().openai_schemas()
    completion = client.chat.completions.create(model="tools", messages=MESSAGES, tools=tools)
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("call_7", "calculator", {"expression": "17 * 23"})
    chunks = list(client.chat.completions.create(model="tools", messages=MESSAGES, tools=tools, stream=True))
    streamed = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert streamed[0].function.name == "calculator" and streamed[0].index == 0
    # the client runs the tool and sends the result back, as with any OpenAI model
    follow = MESSAGES + [completion.choices[0].message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": "call_7", "content": '{"result": 391}'}]
    final = client.chat.completions.create(model="tools", messages=follow, tools=tools)
    assert final.choices[0].message.content == "17 times 23 is 391."


def test_openai_client_sees_api_errors(server):
    client = openai.OpenAI(base_url=server, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="not served"):
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="minivox-test", messages=[])


def test_request_parsing_without_sockets():
    request = parse_chat_request(json.dumps({"model": "m", "messages": MESSAGES, "max_tokens": 5, "temperature": 0.5,
                                             "stream": True, "tool_choice": "none", "tools": [{"type": "function", "function": {"name": "x"}}]}).encode(), "m")
    assert request.stream and request.tools is None and request.options.max_tokens == 5 and request.options.temperature == 0.5
    for body, param in [(b"{", None), (b'{"model": "m"}', "messages"), (b'{"model": "m", "messages": [{"role": "x"}]}', "messages"),
                        (json.dumps({"model": "m", "messages": MESSAGES, "temperature": 9}).encode(), "temperature"),
                        (json.dumps({"model": "m", "messages": MESSAGES, "n": 2}).encode(), "n"),
                        (json.dumps({"model": "m", "messages": MESSAGES, "max_tokens": 0}).encode(), "max_tokens")]:
        with pytest.raises(ApiError) as err:
            parse_chat_request(body, "m")
        assert err.value.status == 400 and err.value.param == param


# ---- minivox's remote backend -------------------------------------------------------------------------


def test_remote_backend_streams_the_same_text_as_the_local_model(server, local_backend):
    remote = OpenAIBackend(server, "minivox-test", first_token_timeout=5, total_timeout=10)
    deltas = list(remote.stream_chat(MESSAGES, None, GenerationOptions(max_tokens=20)))
    assert "".join(d.text for d in deltas) == local_reply(local_backend, MESSAGES)
    assert deltas[-1].finish_reason in ("stop", "length")
    assert remote.list_models() == ["minivox-test"]
    unnamed = OpenAIBackend(server, None, first_token_timeout=5, total_timeout=10)  # the server's first model
    assert "".join(d.text for d in unnamed.stream_chat(MESSAGES, None, GenerationOptions(max_tokens=20))) == \
        local_reply(local_backend, MESSAGES)
    assert unnamed.model == "minivox-test"


def test_assistant_runs_tools_through_the_remote_backend(tool_server):
    assistant = Assistant(OpenAIBackend(tool_server, "tools"), demo_tools())
    assert assistant.reply_text("what's 17 times 23") == "17 times 23 is 391."


def test_remote_backend_reports_http_errors(server):
    with pytest.raises(BackendError, match="not served"):
        list(OpenAIBackend(server, "nope").stream_chat(MESSAGES, None, GenerationOptions()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_remote_backend_unreachable_is_reported_at_once():
    backend = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "m", first_token_timeout=2, total_timeout=5)
    start = time.monotonic()
    with pytest.raises(BackendUnreachable, match="cannot reach"):
        list(backend.stream_chat(MESSAGES, None, GenerationOptions()))
    assert time.monotonic() - start < 1.5


class StallingServer:
    """Accepts connections, reads the request, sends `prefix` bytes and then nothing until closed."""

    def __init__(self, prefix: bytes = b""):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.prefix, self.conns, self.closed = prefix, [], threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _accept(self):
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            conn.recv(65536)
            if self.prefix:
                conn.sendall(self.prefix)

    def close(self):
        self.closed.set()
        for conn in self.conns:
            conn.close()
        self.sock.close()


HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
ONE_CHUNK = b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}]}\n\n'


@pytest.mark.parametrize("prefix", [b"", HEADERS], ids=["silent", "headers-only"])
def test_stalled_server_hits_the_first_token_timeout(prefix):
    stall = StallingServer(prefix)
    try:
        backend = OpenAIBackend(stall.url, "m", first_token_timeout=0.4, total_timeout=5)
        start = time.monotonic()
        with pytest.raises(BackendTimeout, match="first token within 0.4"):
            list(backend.stream_chat(MESSAGES, None, GenerationOptions()))
        assert 0.35 < time.monotonic() - start < 1.5
    finally:
        stall.close()


def test_stream_that_stalls_midway_hits_the_total_timeout():
    stall = StallingServer(HEADERS + ONE_CHUNK)
    try:
        backend = OpenAIBackend(stall.url, "m", first_token_timeout=0.5, total_timeout=1.0)
        start, got = time.monotonic(), []
        with pytest.raises(BackendTimeout, match="end of the reply within 1"):
            for delta in backend.stream_chat(MESSAGES, None, GenerationOptions()):
                got.append(delta.text)
        assert got == ["Hel"] and 0.9 < time.monotonic() - start < 2.0
    finally:
        stall.close()


def test_assistant_apologises_when_the_remote_model_stalls():
    stall = StallingServer(HEADERS)
    try:
        assistant = Assistant(OpenAIBackend(stall.url, "m", first_token_timeout=0.3, total_timeout=1), demo_tools())
        start = time.monotonic()
        assert assistant.reply_text("hello") == APOLOGIES["backend"]
        assert time.monotonic() - start < 1.5
    finally:
        stall.close()


def test_sse_parsing():
    raw = [b"data: one\n", b"\n", b": comment\n", b"event: x\n", b"data: two\n", b"data: lines\n", b"\n", b"data:three"]
    assert list(iter_sse(iter(raw))) == ["one", "two\nlines", "three"]
