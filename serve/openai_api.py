"""The local minivox LLM behind an OpenAI-compatible HTTP API, so existing OpenAI clients can use it.

    minivox serve-llm --port 8000 [--checkpoint minivox/pretrained/llm_demo.pt] [--model-name minivox-llm]

    GET  /v1/models              the one model served
    POST /v1/chat/completions    messages (+ tools) -> a completion, or server-sent events with "stream": true
    GET  /healthz                {"status": "ok"}

    from openai import OpenAI
    client = OpenAI(base_url="http://localhost:8000/v1", api_key="unused")
    for chunk in client.chat.completions.create(model="minivox-llm", stream=True,
                                                messages=[{"role": "user", "content": "what time is it"}]):
        print(chunk.choices[0].delta.content or "", end="")

The request/response logic is a sans-I/O core (`parse_chat_request`, `CompletionBuilder`) that
tests use without sockets; `OpenAIServer` is a thin `http.server` shell around it (one thread per
connection; generations take turns on the model). What differs from OpenAI's service, by design:

- A request without a system message gets the system prompt the demo model was trained with.
- The demo model calls only the six tools it was trained on; the request's `tools` switch tool
  calling on (`tool_choice` "none" or no tools switches it off). Calls come back as `tool_calls`
  for the client to run, as with any OpenAI model; the model never runs them here.
- The context is cut to the model's window by dropping the oldest turns (never the system prompt).
- `n` must be 1; `stop`, `logprobs`, `response_format` and penalties other than these are ignored.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from minivox.backends import ChatDelta, GenerationOptions, from_openai_messages
from minivox.chat import ChatContext

log = logging.getLogger("minivox.serve.openai_api")
MAX_BODY_BYTES = 1 << 20  # 1 MiB of JSON is far beyond any context this model can read


class ApiError(Exception):
    """An error answered as {"error": {...}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """A validated /v1/chat/completions request."""

    model: str
    messages: list[dict]  # dialogue format (minivox.chat_template)
    tools: list[dict] | None
    options: GenerationOptions
    stream: bool = False
    include_usage: bool = False
    extra: dict = field(default_factory=dict)


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"'{key}' must be a number in [{low}, {high}], got {value!r}", param=key)
    return float(value)


def parse_chat_request(raw: bytes, served_model: str, default_max_tokens: int = 128) -> ChatRequest:
    """Read and check a request body; raises ApiError (400 or 404) naming the bad field."""
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = body.get("model")
    if model != served_model:
        raise ApiError(404, f"model {model!r} is not served here; this server serves {served_model!r}",
                       param="model", code="model_not_found")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    try:
        messages = from_openai_messages(body["messages"])
    except ValueError as exc:
        raise ApiError(400, str(exc), param="messages") from None
    if body.get("n", 1) != 1:
        raise ApiError(400, f"only n=1 is supported, got {body.get('n')!r}", param="n")
    tools = body.get("tools") or None
    if tools is not None and (not isinstance(tools, list) or
                              not all(isinstance(t, dict) and isinstance(t.get("function"), dict) for t in tools)):
        raise ApiError(400, "'tools' must be a list of {\"type\": \"function\", \"function\": {...}}", param="tools")
    if body.get("tool_choice") == "none":
        tools = None
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = default_max_tokens if max_tokens is None else max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ApiError(400, f"'max_tokens' must be a positive integer, got {max_tokens!r}", param="max_tokens")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"'seed' must be an integer, got {seed!r}", param="seed")
    options = GenerationOptions(max_tokens=max_tokens, temperature=_number(body, "temperature", 0.0, 0.0, 2.0),
                                top_p=_number(body, "top_p", 1.0, 1e-6, 1.0), seed=seed)
    stream = bool(body.get("stream", False))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage", False))
    return ChatRequest(model, messages, tools, options, stream, include_usage)


class CompletionBuilder:
    """Turns a backend's ChatDeltas into OpenAI response objects (chunks, or one completion)."""

    def __init__(self, model: str):
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    @staticmethod
    def _tool_calls(delta: ChatDelta, streaming: bool) -> list[dict]:
        calls = []
        for i, call in enumerate(delta.tool_calls or []):
            item = {"id": call.id or f"call_{i}", "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments}}
            calls.append({"index": i, **item} if streaming else item)
        return calls

    def chunks(self, deltas, usage: callable = None):
        """Yield chat.completion.chunk dicts: the role first, then content/tool-call deltas, then finish."""
        yield self._chunk({"role": "assistant", "content": ""})
        for delta in deltas:
            if delta.text:
                yield self._chunk({"content": delta.text})
            if delta.tool_calls:
                yield self._chunk({"tool_calls": self._tool_calls(delta, streaming=True)})
            if delta.finish_reason:
                yield self._chunk({}, delta.finish_reason)
        if usage is not None:
            yield {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                   "choices": [], "usage": usage()}

    def completion(self, deltas, usage: dict) -> dict:
        """One chat.completion object from all deltas."""
        text, calls, finish = [], [], "stop"
        for delta in deltas:
            text.append(delta.text)
            calls += self._tool_calls(delta, streaming=False)
            finish = delta.finish_reason or finish
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if not calls else ("".join(text) or None)}
        if calls:
            message["tool_calls"] = calls
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": usage}


class LLMService:
    """What the HTTP shell calls: fits the context, runs the backend, counts tokens."""

    def __init__(self, backend, model_name: str, default_max_tokens: int = 128):
        self.backend, self.model_name, self.default_max_tokens = backend, model_name, default_max_tokens

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0, "owned_by": "minivox"}]}

    def prepare(self, request: ChatRequest) -> list[dict]:
        """The messages that fit the model's window with room for the reply."""
        budget = self.backend.max_context - min(request.options.max_tokens, self.backend.max_context // 2)
        try:
            return ChatContext.from_messages(request.messages, budget, self.backend.count_tokens).messages()
        except ValueError as exc:
            raise ApiError(400, f"the conversation does not fit the model's context: {exc}", param="messages") from None

    def usage(self) -> dict:
        stream = getattr(self.backend, "last_stream", None)
        prompt = len(stream.prompt) if stream is not None else 0
        completion = len(stream.completion_ids) if stream is not None else 0
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class OpenAIServer(ThreadingHTTPServer):
    """http.server shell: one thread per connection, JSON in, JSON or server-sent events out."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: LLMService):
        super().__init__(address, _Handler)
        self.service = service


class _Handler(BaseHTTPRequestHandler):
    server: OpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args) -> None:  # route http.server's access log to logging
        log.info("%s " + fmt, self.address_string(), *args)

    def _send_json(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/models":
            self._send_json(200, self.server.service.models())
        elif path == "/healthz":
            self._send_json(200, {"status": "ok", "model": self.server.service.model_name})
        else:
            self._send_json(404, ApiError(404, f"no route GET {self.path}").body())

    def do_POST(self) -> None:  # noqa: N802
        service = self.server.service
        if self.path.split("?")[0].rstrip("/") != "/v1/chat/completions":
            self._send_json(404, ApiError(404, f"no route POST {self.path}").body())
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise ApiError(413, f"request body of {length} bytes exceeds {MAX_BODY_BYTES}")
            request = parse_chat_request(self.rfile.read(length), service.model_name, service.default_max_tokens)
            messages = service.prepare(request)
            deltas = service.backend.stream_chat(messages, request.tools, request.options)
            builder = CompletionBuilder(service.model_name)
            if not request.stream:
                self._send_json(200, builder.completion(list(deltas), service.usage()))
                return
        except ApiError as exc:
            self._send_json(exc.status, exc.body())
            return
        except Exception as exc:  # noqa: BLE001 - a server answers 500 rather than dropping the connection
            log.exception("chat completion failed")
            self._send_json(500, ApiError(500, f"{type(exc).__name__}: {exc}").body())
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        chunks = builder.chunks(deltas, service.usage if request.include_usage else None)
        try:
            for chunk in chunks:
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            log.info("client went away mid-stream: generation stopped")
        except Exception as exc:  # noqa: BLE001 - headers are sent: report the error as an event
            log.exception("streaming failed")
            try:
                self.wfile.write(f"data: {json.dumps(ApiError(500, str(exc)).body())}\n\n".encode())
            except OSError:
                pass
        finally:
            chunks.close()
            deltas.close()


def serve(backend, host: str = "127.0.0.1", port: int = 8000, model_name: str = "minivox-llm",
          default_max_tokens: int = 128) -> OpenAIServer:
    """A started server (in a daemon thread) for `backend`; `server.shutdown()` stops it.
    `port=0` picks a free port (see `server.server_address`)."""
    server = OpenAIServer((host, port), LLMService(backend, model_name, default_max_tokens))
    threading.Thread(target=server.serve_forever, daemon=True, name="minivox-openai-api").start()
    return server


def run_serve_llm(args: argparse.Namespace) -> int:
    """`minivox serve-llm`: serve a checkpoint until Ctrl-C / SIGTERM."""
    import signal

    from minivox.backends import LocalBackend
    from minivox.chat import default_checkpoint

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        backend = LocalBackend.from_checkpoint(args.checkpoint or default_checkpoint(), threads=args.threads, int8=args.int8)
    except (ValueError, OSError) as exc:
        print(f"minivox serve-llm: {exc}", file=sys.stderr)
        return 2
    server = OpenAIServer((args.host, args.port), LLMService(backend, args.model_name, args.max_tokens))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    host, port = server.server_address[:2]
    print(f"serving {args.model_name} at http://{host}:{port}/v1 (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def register(subparsers) -> None:
    """Add `minivox serve-llm`."""
    p = subparsers.add_parser("serve-llm", help="serve the local LLM over an OpenAI-compatible HTTP API")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--checkpoint", help="model checkpoint (default: the bundled llm_demo.pt)")
    p.add_argument("--model-name", default="minivox-llm", help="the model id clients ask for")
    p.add_argument("--max-tokens", type=int, default=128, help="reply length when a request gives none")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--int8", action="store_true", help="int8 weights (about 1.5x faster decoding, 3x prefill on a CPU)")
    p.set_defaults(func=run_serve_llm)
