"""Chat backends behind one interface (`stream_chat`): the local minivox model and a remote
OpenAI-compatible `/v1/chat/completions` server (server-sent events, stdlib only).

Used by `minivox.chat.Assistant` (and `minivox chat --backend local|openai`), the voice agent
(`serve/pipeline.py`) and `minivox serve-llm` (`serve/openai_api.py`, which also converts API
messages with `from_openai_messages`). `import minivox.backends` pulls only the standard
library; torch and sentencepiece load when a local model is built.
"""

from __future__ import annotations

import http.client
import json
import queue
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from minivox.chat_template import (ChatTemplate, IncrementalDecoder, ToolCall, approximate_token_count, format_tool_calls,
                                   parse_tool_calls)
from minivox.tools import USER_WORD

# ---------------------------------------------------------------------------------------
# Backends.
# ---------------------------------------------------------------------------------------


@dataclass
class ChatDelta:
    """One piece of a streamed reply: text, or (once, at the end) the tool calls; then finish_reason."""

    text: str = ""
    tool_calls: list[ToolCall] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "tool_calls" on the last delta


@dataclass
class GenerationOptions:
    """Per-request sampling settings shared by every backend."""

    max_tokens: int = 128
    temperature: float = 0.0  # greedy by default: the demo model's tool calls must be exact
    top_p: float = 1.0
    top_k: int = 0  # local model only (not part of the OpenAI API)
    repetition_penalty: float = 1.0  # local model only
    seed: int | None = None


class BackendError(Exception):
    """A backend failed: unreachable, timed out, or answered with an error."""


class BackendUnreachable(BackendError):
    """Could not connect to the server."""


class BackendTimeout(BackendError):
    """No first token, or no complete reply, within the configured time."""


class ChatBackend(Protocol):
    """What the Assistant needs from a model: stream a reply to these messages, tools offered."""

    def stream_chat(self, messages: Sequence[dict], tools: Sequence[dict] | None,
                    options: GenerationOptions) -> Iterator[ChatDelta]: ...

    def count_tokens(self, messages: Sequence[dict]) -> int: ...


CONTEXT_WEIGHT = 1.0  # alpha of context-aware decoding (Shi et al. 2023, "Trusting Your Evidence"); chosen on the
#   dev split's define_word turns: 81 of 93 right with 1.0, 80 with 0.5, 79 with 0 (the model's own scores) or 2.0
_WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*")  # letters, with inner apostrophes or hyphens ("don't")
_SPEAKER_TAG = re.compile(r"<speaker_\d+>")


def user_words(messages: Sequence[dict]) -> list[str]:
    """The distinct lower-cased words of the last user message, in order (speaker tags left out)."""
    text = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    return list(dict.fromkeys(_WORD.findall(_SPEAKER_TAG.sub(" ", text).lower())))


def _without_user_text(messages: Sequence[dict]) -> list[dict]:
    """The messages with the last user message's text left empty."""
    last = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    return [*messages[:last], {**messages[last], "content": ""}, *messages[last + 1:]]


def hold_to_user_words(model, template: ChatTemplate, prompt: Sequence[int], calls: list[ToolCall],
                       tools: Sequence[dict] | None, messages: Sequence[dict], cache=None) -> list[ToolCall]:
    """`calls` with every `x-user-word` argument (`minivox.tools.UserWord`) made a word of the user's last message.

    A small model asked "what does charm mean?" often starts the word right and loses it on the
    way (define_word("compar")): copying an unseen word piece by piece is what it learned least.
    When the value it wrote is not one of the user's words, the word is chosen among them by the
    model itself, as greedy decoding held to those words would write it: the word whose first
    piece is the most likely where the value starts, ties broken by the whole call's likelihood.
    The first piece is scored by context-aware decoding (Shi et al. 2023): its log-probability
    plus CONTEXT_WEIGHT x how much the user's message raises it (against the same prompt with that
    message left empty), so a word the message asks about beats one the model writes anyway ("of").
    Calls that are malformed, or arguments already among the user's words, are left as they are.
    """
    from minivox.llm import continuation_logprobs

    held = {}  # tool name -> its UserWord parameters
    for tool in tools or ():
        function = tool.get("function") or {}
        properties = (function.get("parameters") or {}).get("properties") or {}
        held[function.get("name")] = [k for k, v in properties.items() if isinstance(v, dict) and v.get(USER_WORD)]
    words = user_words(messages)
    if not words or not any(held.get(c.name) for c in calls):
        return calls
    try:
        parsed = [{"name": c.name, "arguments": json.loads(c.arguments)} for c in calls]
    except json.JSONDecodeError:
        return calls
    changed = set()
    for i, call in enumerate(parsed):
        for key in held.get(call["name"], ()):
            value = call["arguments"].get(key) if isinstance(call["arguments"], dict) else None
            if not isinstance(value, str) or value.lower() in words:
                continue
            options = []
            for word in words:  # the whole call list as the model would write it with `word`
                call["arguments"][key] = word
                options.append(template.tokenizer.encode(format_tool_calls(parsed)) + [template.end_id])
            shared = 0  # the pieces every option starts with: the calls up to the value
            while all(len(o) > shared + 1 and o[shared] == options[0][shared] for o in options):
                shared += 1
            tails = [o[shared:] for o in options]
            bare = continuation_logprobs(model, [*template.encode_prompt(_without_user_text(messages)), template.call_id,
                                                 *options[0][:shared]], tails, cache)
            real = continuation_logprobs(model, [*prompt, template.call_id, *options[0][:shared]], tails, cache)
            best = max(range(len(words)), key=lambda w: (real[w][0] + CONTEXT_WEIGHT * (real[w][0] - bare[w][0]),
                                                         sum(real[w])))
            call["arguments"][key] = words[best]
            changed.add(i)
    return [ToolCall(p["name"], json.dumps(p["arguments"]), c.id) if i in changed else c
            for i, (p, c) in enumerate(zip(parsed, calls))]


class LocalBackend:
    """The minivox model, in this process. One KV cache is kept between calls, so each chat turn
    only prefills what is new since the previous one (see `minivox.llm.generate`)."""

    def __init__(self, model, tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer or model.tokenizer
        if self.tokenizer is None:
            raise ValueError("LocalBackend needs a tokenizer (the checkpoint has none attached)")
        self.template = ChatTemplate(self.tokenizer)
        self.cache = model.new_cache()
        self.lock = threading.Lock()  # one generation at a time shares the cache
        self.last_stream = None  # the TokenStream of the latest call (timings, finish reason)

    @classmethod
    def from_checkpoint(cls, path: str, threads: int | None = None, int8: bool = False) -> LocalBackend:
        """Load a checkpoint; `int8` runs with int8 Linear weights (on a CPU about 1.5x faster decoding, 3x prefill;
        see `minivox.llm.quantize_int8`)."""
        import torch

        from minivox.llm import GPT, quantize_int8

        if threads:
            torch.set_num_threads(threads)
        model = GPT.from_checkpoint(path)
        return cls(quantize_int8(model) if int8 else model)

    @property
    def max_context(self) -> int:
        return self.model.cfg.max_seq_len

    def count_tokens(self, messages: Sequence[dict]) -> int:
        """Exact prompt length in tokens (with the trailing assistant marker)."""
        return len(self.template.encode_prompt(messages))

    def stream_chat(self, messages: Sequence[dict], tools: Sequence[dict] | None,
                    options: GenerationOptions) -> Iterator[ChatDelta]:
        """Generate one assistant message. Text streams as it comes; if the model opens a tool call
        (`<|call|>`) the rest is collected and parsed into ToolCalls at `<|end|>`.

        `tools` (OpenAI-format schemas) switches tool calling on or off here (the demo model knows
        its trained tools and no others, so when none are offered `<|call|>` is banned) and says
        which arguments are the user's words (`hold_to_user_words`).
        """
        from minivox.llm import SamplingConfig, generate

        prompt = self.template.encode_prompt(messages)
        max_new = min(options.max_tokens, self.model.cfg.max_seq_len - len(prompt))
        if max_new <= 0:
            raise ValueError(f"the prompt takes {len(prompt)} of the model's {self.model.cfg.max_seq_len} positions: "
                             f"no room to answer (shorten the context)")
        sampling = SamplingConfig(temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
                                  repetition_penalty=options.repetition_penalty, max_tokens=max_new,
                                  stop_tokens=(self.template.end_id,), seed=options.seed)
        banned = [] if tools else [self.template.call_id]
        with self.lock:
            stream = generate(self.model, prompt, sampling, cache=self.cache, banned_tokens=banned)
            self.last_stream = stream
            decoder = IncrementalDecoder(self.tokenizer)
            call_ids: list[int] | None = None
            try:
                for token in stream:
                    if call_ids is not None:
                        call_ids.append(token)
                    elif token == self.template.call_id:
                        call_ids = []
                    else:
                        delta = decoder.push(token)
                        if delta:
                            yield ChatDelta(text=delta)
                tail = decoder.flush() if call_ids is None else ""
                if tail:
                    yield ChatDelta(text=tail)
                if call_ids is not None:
                    calls = hold_to_user_words(self.model, self.template, prompt,
                                               parse_tool_calls(self.tokenizer.decode(call_ids)), tools, messages, self.cache)
            finally:
                stream.close()
        if call_ids is not None:
            yield ChatDelta(tool_calls=calls, finish_reason="tool_calls")
        else:
            yield ChatDelta(finish_reason=stream.finish_reason or "stop")


def to_openai_messages(messages: Sequence[dict]) -> list[dict]:
    """Dialogue-format messages -> the OpenAI chat API's (tool calls get ids; tool results point at them)."""
    out, pending = [], []  # pending: ids of calls not yet answered, in order
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = [{"id": f"call_{i}_{j}", "type": "function",
                      "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                     for j, c in enumerate(m["tool_calls"])]
            pending = [c["id"] for c in calls]
            out.append({"role": "assistant", "content": m.get("content") or None, "tool_calls": calls})
        elif m["role"] == "tool":
            out.append({"role": "tool", "tool_call_id": pending.pop(0) if pending else "call_unknown",
                        "content": m["content"]})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


def from_openai_messages(messages: Sequence[dict]) -> list[dict]:
    """The OpenAI chat API's messages -> dialogue format (arguments parsed; tool results named by their call).

    Content given as a list of parts keeps its text parts. Raises ValueError for what cannot be read.
    """
    out, names = [], {}  # call id -> tool name
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise ValueError(f"messages[{i}]: expected a role of system/user/assistant/tool, got {m!r:.80}")
        content = m.get("content") or ""
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string or a list of text parts")
        role = "system" if m["role"] == "developer" else m["role"]
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                function = call.get("function", {})
                try:
                    arguments = json.loads(function.get("arguments") or "{}")
                except json.JSONDecodeError:
                    raise ValueError(f"messages[{i}]: tool call arguments are not JSON: {function.get('arguments')!r:.80}") from None
                names[call.get("id", "")] = function.get("name", "")
                calls.append({"name": function.get("name", ""), "arguments": arguments})
            out.append({"role": "assistant", "content": content, "tool_calls": calls})
        elif role == "tool":
            out.append({"role": "tool", "name": m.get("name") or names.get(m.get("tool_call_id", ""), "tool"),
                        "content": content})
        else:
            out.append({"role": role, "content": content})
    return out


def iter_sse(lines: Iterator[bytes]) -> Iterator[str]:
    """The `data:` payloads of a server-sent-event stream, one per event (multi-line data joined by newlines)."""
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" ") if line[5:6] == " " else line[5:])
        # other fields (event:, id:, retry:) and comments (":") are not used by the chat API
    if data:
        yield "\n".join(data)


class OpenAIBackend:
    """A remote OpenAI-compatible server's `/v1/chat/completions`, streamed over HTTP with the stdlib.

    The request runs in a reader thread that hands events to the caller through a queue, so both
    time limits hold whatever the network does: `first_token_timeout` (seconds from the request to
    the first text or tool call) and `total_timeout` (to the end of the reply). A server that
    cannot be reached raises BackendUnreachable at once; one that stalls raises BackendTimeout;
    an HTTP error raises BackendError with the status and the server's message. With no `model`,
    the first the server lists (GET /v1/models) is used, asked once at the first request.
    """

    def __init__(self, base_url: str, model: str | None, api_key: str | None = None, first_token_timeout: float = 5.0,
                 total_timeout: float = 30.0, connect_timeout: float = 3.0, max_context: int = 4096):
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"base_url must look like http://host:port/v1, got {base_url!r}")
        self.base_url, self.model, self.api_key = base_url.rstrip("/"), model, api_key
        self.first_token_timeout, self.total_timeout, self.connect_timeout = first_token_timeout, total_timeout, connect_timeout
        self.max_context = max_context
        self._parsed = parsed

    def count_tokens(self, messages: Sequence[dict]) -> int:
        return approximate_token_count(messages)

    def _connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._parsed.scheme == "https" else http.client.HTTPConnection
        return cls(self._parsed.hostname, self._parsed.port, timeout=self.connect_timeout)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def list_models(self) -> list[str]:
        """Ids from GET /v1/models (raises BackendError when unreachable or failing)."""
        conn = self._connection()
        try:
            conn.request("GET", self._parsed.path.rstrip("/") + "/models", headers=self._headers())
            response = conn.getresponse()
            body = response.read()
        except OSError as exc:
            raise BackendUnreachable(f"cannot reach {self.base_url}: {exc}") from None
        finally:
            conn.close()
        if response.status != 200:
            raise BackendError(f"{self.base_url}/models answered HTTP {response.status}: {body[:200]!r}")
        return [m["id"] for m in json.loads(body).get("data", [])]

    def stream_chat(self, messages: Sequence[dict], tools: Sequence[dict] | None,
                    options: GenerationOptions) -> Iterator[ChatDelta]:
        if not self.model:
            models = self.list_models()
            if not models:
                raise BackendError(f"{self.base_url}/models lists no model: name one")
            self.model = models[0]
        payload: dict[str, Any] = {"model": self.model, "messages": to_openai_messages(messages), "stream": True,
                                   "max_tokens": options.max_tokens, "temperature": options.temperature,
                                   "top_p": options.top_p}
        if options.seed is not None:
            payload["seed"] = options.seed
        if tools:
            payload["tools"] = list(tools)
        events: queue.Queue = queue.Queue()
        conn = self._connection()
        reader = threading.Thread(target=self._read, args=(conn, json.dumps(payload).encode(), events),
                                  daemon=True, name="minivox-openai")
        start = time.monotonic()
        reader.start()
        calls: dict[int, dict[str, str]] = {}  # index -> {"id", "name", "arguments"} assembled from deltas
        finish, got_output = None, False
        try:
            while True:
                limit = self.first_token_timeout if not got_output else self.total_timeout
                remaining = start + limit - time.monotonic()
                try:
                    kind, value = events.get(timeout=max(0.0, remaining))
                except queue.Empty:
                    what = "a first token" if not got_output else "the end of the reply"
                    raise BackendTimeout(f"{self.base_url}: no {what} within {limit:g} s") from None
                if kind == "error":
                    raise value
                if kind == "done":
                    break
                choice = (value.get("choices") or [{}])[0]
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    got_output = True
                    yield ChatDelta(text=delta["content"])
                for call in delta.get("tool_calls") or []:
                    got_output = True
                    slot = calls.setdefault(call.get("index", 0), {"id": "", "name": "", "arguments": ""})
                    function = call.get("function") or {}
                    slot["id"] = call.get("id") or slot["id"]
                    slot["name"] += function.get("name") or ""
                    slot["arguments"] += function.get("arguments") or ""
                finish = choice.get("finish_reason") or finish
        finally:
            if conn.sock is not None:  # wake a reader blocked on the socket (close alone may not)
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            conn.close()
        if calls:
            yield ChatDelta(tool_calls=[ToolCall(c["name"], c["arguments"], c["id"]) for _, c in sorted(calls.items())],
                            finish_reason="tool_calls")
        else:
            yield ChatDelta(finish_reason=finish or "stop")

    def _read(self, conn: http.client.HTTPConnection, body: bytes, events: queue.Queue) -> None:
        """Reader thread: POST, then put ("chunk", dict) per event, and ("done", None) or ("error", exc)."""
        path = self._parsed.path.rstrip("/") + "/chat/completions"
        try:
            try:
                conn.request("POST", path, body=body, headers=self._headers())
                conn.sock.settimeout(None)  # the consumer enforces the time limits
                response = conn.getresponse()
            except (ConnectionError, socket.gaierror, socket.timeout) as exc:
                events.put(("error", BackendUnreachable(f"cannot reach {self.base_url}: {exc}")))
                return
            if response.status != 200:
                text = response.read(2000).decode("utf-8", "replace")
                try:
                    text = json.loads(text)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    pass
                events.put(("error", BackendError(f"{self.base_url} answered HTTP {response.status}: {text}")))
                return
            for data in iter_sse(iter(response.readline, b"")):
                if data.strip() == "[DONE]":
                    break
                try:
                    events.put(("chunk", json.loads(data)))
                except json.JSONDecodeError:
                    events.put(("error", BackendError(f"{self.base_url} sent an event that is not JSON: {data[:80]!r}")))
                    return
            events.put(("done", None))
        except (OSError, http.client.HTTPException, ValueError) as exc:  # includes the socket closed by the consumer
            events.put(("error", BackendError(f"{self.base_url}: connection failed mid-reply ({exc})")))
