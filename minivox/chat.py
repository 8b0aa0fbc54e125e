"""Conversations for the LLM: chat template, context with a token budget, tool calling, backends.

Read top to bottom:

1. Chat template. Messages are dicts in the dialogue format of `minivox.data.dialogues`
   (docs/data.md): `{"role": "system"|"user"|"assistant"|"tool", "content": str}`, assistant
   messages may carry `tool_calls: [{"name", "arguments": {...}}]`, tool messages a `name`.
   For the local model they become token ids with sentencepiece special tokens:

       <|system|> You are minivox ... <|end|>
       <|user|> <speaker_1> what's 17 times 23 <|end|>
       <|assistant|> <|call|> [{"name": "calculator", "arguments": {"expression": "17 * 23"}}] <|end|>
       <|tool|> calculator: {"result": 391} <|end|>
       <|assistant|> 17 times 23 is 391. <|end|>

   Role markers, `<|end|>` and `<|call|>` are sentencepiece *control* symbols: they have ids but
   no text form, so nothing a user types can forge them. `<speaker_N>` (the diarizer's speaker
   numbers) are *user-defined* symbols: one id each wherever they appear in text. Each message's
   text is encoded on its own, so a word gets the same pieces wherever its message sits.
2. `ChatContext`: the conversation so far, speaker-tagged user turns, and a token budget that
   drops the oldest turns (never the system prompt) and logs what it dropped.
3. Tools: typed Python functions -> JSON schema; argument validation; running with a timeout;
   the demo tools (time, date, calculator, unit conversion, timer, WordNet definitions).
4. Backends behind one interface (`stream_chat`): the local minivox model and a remote
   OpenAI-compatible `/v1/chat/completions` server (server-sent events, stdlib only).
5. `Assistant`: one user turn -> streamed reply text, running tool calls in between; malformed,
   unknown, failing or slow tool calls become a short spoken apology, never an exception.
6. The `minivox chat` command.

`import minivox.chat` pulls only the standard library; torch and sentencepiece load when a
local model is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import http.client
import inspect
import json
import logging
import queue
import re
import socket
import sys
import threading
import time
import types
import typing
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from minivox.data import dialogues as dialogue_data

log = logging.getLogger("minivox.chat")

# ---------------------------------------------------------------------------------------
# 1. Chat template.
# ---------------------------------------------------------------------------------------

ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>", "tool": "<|tool|>"}
END_TOKEN = "<|end|>"  # closes every message; generation stops on it
CALL_TOKEN = "<|call|>"  # starts the JSON list of tool calls in an assistant message
CONTROL_SYMBOLS = (*ROLE_TOKENS.values(), END_TOKEN, CALL_TOKEN)
MAX_SPEAKERS = dialogue_data.MAX_SPEAKERS  # 4, the diarizer's max_num_speakers
SPEAKER_SYMBOLS = tuple(f"<speaker_{n}>" for n in range(1, MAX_SPEAKERS + 1))
SYSTEM_PROMPT = dialogue_data.SYSTEM_PROMPT  # the prompt the demo model was trained with
IGNORE_INDEX = -100  # cross-entropy target of tokens the model is not trained to predict


def train_chat_tokenizer(texts: Sequence[str], vocab_size: int, model_type: str = "unigram", seed: int = 0):
    """A sentencepiece `minivox.text.Tokenizer` with the chat special tokens.

    Digits are split one per piece (numbers are copied digit by digit from tool results),
    and characters outside the trained alphabet fall back to UTF-8 byte pieces instead of `<unk>`.
    """
    from minivox.text import Tokenizer

    return Tokenizer.train(texts, vocab_size, model_type=model_type, user_defined_symbols=SPEAKER_SYMBOLS,
                           control_symbols=list(CONTROL_SYMBOLS), split_digits=True, byte_fallback=True,
                           character_coverage=0.9995, seed=seed)


def format_tool_calls(calls: Sequence[dict]) -> str:
    """The JSON text the model writes after `<|call|>`: [{"name": ..., "arguments": {...}}, ...]."""
    return json.dumps([{"name": c["name"], "arguments": c["arguments"]} for c in calls], ensure_ascii=False)


@dataclass
class ToolCall:
    """One tool call as a model produced it. `arguments` stays the raw JSON text until validated,
    so a malformed call can be reported instead of raising where it was parsed."""

    name: str
    arguments: str  # JSON object text, e.g. '{"expression": "17 * 23"}'
    id: str = ""  # the OpenAI API's call id (made up for the local model)


def parse_tool_calls(text: str) -> list[ToolCall]:
    """The calls in what the local model wrote after `<|call|>`; never raises.

    Expected: a JSON list of {"name": str, "arguments": object} (a single object is accepted too).
    Anything else comes back as one call with an empty name and the raw text as arguments,
    which validation then rejects (and the assistant apologises).
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return [ToolCall(name="", arguments=text)]
    items = value if isinstance(value, list) else [value]
    calls = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("name"), str) and "arguments" in item:
            arguments = item["arguments"]
            calls.append(ToolCall(item["name"], arguments if isinstance(arguments, str) else json.dumps(arguments), f"call_{i}"))
        else:
            calls.append(ToolCall(name="", arguments=json.dumps(item), id=f"call_{i}"))
    return calls or [ToolCall(name="", arguments=text)]


class ChatTemplate:
    """Messages <-> token ids for the local model, given a tokenizer trained by `train_chat_tokenizer`."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        try:
            self.role_ids = {role: tokenizer.piece_to_id(piece) for role, piece in ROLE_TOKENS.items()}
            self.end_id = tokenizer.piece_to_id(END_TOKEN)
            self.call_id = tokenizer.piece_to_id(CALL_TOKEN)
            self.speaker_ids = [tokenizer.piece_to_id(s) for s in SPEAKER_SYMBOLS]
        except ValueError as exc:
            raise ValueError(f"the tokenizer lacks the chat special tokens (train it with train_chat_tokenizer): {exc}") from None

    def encode_message(self, message: dict) -> list[int]:
        """One message -> [role] + text ids + [end] (a tool-call message: [assistant, call] + JSON + [end])."""
        role = message.get("role")
        if role not in ROLE_TOKENS:
            raise ValueError(f"message role must be one of {sorted(ROLE_TOKENS)}, got {role!r}")
        content = message.get("content") or ""
        ids = [self.role_ids[role]]
        if role == "tool":
            content = f"{message.get('name', 'tool')}: {content}"
        if content:
            ids += self.tokenizer.encode(content)
        if role == "assistant" and message.get("tool_calls"):
            ids += [self.call_id] + self.tokenizer.encode(format_tool_calls(message["tool_calls"]))
        return ids + [self.end_id]

    def encode_prompt(self, messages: Sequence[dict]) -> list[int]:
        """The ids the model continues: every message, then the `<|assistant|>` marker."""
        ids: list[int] = []
        for message in messages:
            ids += self.encode_message(message)
        return ids + [self.role_ids["assistant"]]

    def encode_dialogue(self, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
        """Training pair for supervised fine-tuning: (ids [N], targets [N]).

        targets[i] is the id the model should predict after ids[..i] where that id belongs to an
        assistant message's body (its text or calls, and its closing `<|end|>`), else IGNORE_INDEX:
        the loss is on assistant tokens only, never on what the user or a tool said.
        """
        ids: list[int] = []
        trained: list[bool] = []
        for message in messages:
            piece = self.encode_message(message)
            ids += piece
            body = message["role"] == "assistant"
            trained += [False] + [body] * (len(piece) - 1)  # the role marker itself is given, not predicted
        targets = [ids[i + 1] if trained[i + 1] else IGNORE_INDEX for i in range(len(ids) - 1)] + [IGNORE_INDEX]
        return ids, targets

    def decode_reply(self, ids: Sequence[int]) -> tuple[str, list[ToolCall] | None]:
        """An assistant reply's ids (without the closing `<|end|>`) -> (text, tool calls or None)."""
        ids = list(ids)
        if self.end_id in ids:
            ids = ids[: ids.index(self.end_id)]
        if self.call_id in ids:
            at = ids.index(self.call_id)
            return self.tokenizer.decode(ids[:at]), parse_tool_calls(self.tokenizer.decode(ids[at + 1 :]))
        return self.tokenizer.decode(ids), None


class IncrementalDecoder:
    """Token ids in, text deltas out, for streaming.

    sentencepiece decodes a piece's leading space and multi-byte characters (byte fallback) only
    in context, so each step decodes everything so far and returns what was added; a trailing
    partial UTF-8 character (U+FFFD) is held back until it completes.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token: int) -> str:
        """Add one id; returns the new text (possibly "")."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        return self._advance(text)

    def flush(self) -> str:
        """The text still held back at the end (an incomplete character decodes as U+FFFD)."""
        return self._advance(self.tokenizer.decode(self.ids))

    def _advance(self, text: str) -> str:
        if not text.startswith(self.emitted):  # cannot happen with sentencepiece; never emit twice
            return ""
        delta, self.emitted = text[len(self.emitted):], text
        return delta


# ---------------------------------------------------------------------------------------
# 2. Conversation context with a token budget.
# ---------------------------------------------------------------------------------------


def tag_speaker(text: str, speaker: int | None) -> str:
    """Prefix a user turn with `<speaker_N>` (N = 1..4) when the speaker is known."""
    if speaker is None:
        return text
    if not 1 <= speaker <= MAX_SPEAKERS:
        raise ValueError(f"speaker must be in 1..{MAX_SPEAKERS} (diarizer speaker number), got {speaker}")
    return f"<speaker_{speaker}> {text}"


def approximate_token_count(messages: Sequence[dict]) -> int:
    """A tokenizer-free estimate for remote models: about 4 characters per token, plus 4 per message."""
    total = 0
    for m in messages:
        total += 4 + len(m.get("content") or "") // 4
        if m.get("tool_calls"):
            total += len(format_tool_calls(m["tool_calls"])) // 4
    return total


class ChatContext:
    """The conversation: a fixed system prompt and the turns after it, kept within a token budget.

    A *turn* is a user message with everything answering it (assistant messages, tool calls and
    results). When `messages()` would exceed `max_tokens` (as measured by `count_tokens`), the
    oldest turns are dropped for good, never the system prompt nor the newest turn, and a log
    line says how many messages went. If the newest turn alone is still too long its user text is
    cut from the front (the end of what was said matters most), then its tool results from the end.
    """

    def __init__(self, system_prompt: str = SYSTEM_PROMPT, max_tokens: int = 384,
                 count_tokens: Callable[[Sequence[dict]], int] = approximate_token_count):
        self.system = {"role": "system", "content": system_prompt}
        self.max_tokens = max_tokens
        self.count_tokens = count_tokens
        self.turns: list[list[dict]] = []
        self.dropped_messages = 0  # messages dropped so far to stay within the budget
        if count_tokens([self.system]) > max_tokens:
            raise ValueError(f"the system prompt alone takes {count_tokens([self.system])} tokens, "
                             f"more than the context budget of {max_tokens}")

    @classmethod
    def from_messages(cls, messages: Sequence[dict], max_tokens: int,
                      count_tokens: Callable[[Sequence[dict]], int] = approximate_token_count,
                      default_system: str = SYSTEM_PROMPT) -> ChatContext:
        """A context holding a whole message list (as an API request sends it), split into turns.

        Several system messages are joined into one; with none, `default_system` is used. Messages
        before the first user message (an assistant greeting) form a turn of their own.
        """
        systems = [m["content"] for m in messages if m["role"] == "system"]
        context = cls("\n".join(systems) if systems else default_system, max_tokens, count_tokens)
        for m in messages:
            if m["role"] == "system":
                continue
            if m["role"] == "user" or not context.turns:
                context.turns.append([])
            context.turns[-1].append(dict(m))
        return context

    def add_user(self, text: str, speaker: int | None = None) -> None:
        """Start a new turn with what a user said (tagged `<speaker_N>` when the speaker is known)."""
        self.turns.append([{"role": "user", "content": tag_speaker(text, speaker)}])

    def add_assistant(self, text: str = "", tool_calls: Sequence[dict] | None = None) -> None:
        """The assistant's reply text, or its tool calls [{"name", "arguments": dict}]."""
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls:
            message["tool_calls"] = [{"name": c["name"], "arguments": c["arguments"]} for c in tool_calls]
        self._current().append(message)

    def add_tool_result(self, name: str, result: dict) -> None:
        """A tool's JSON result, answering the latest call of `name`."""
        self._current().append({"role": "tool", "name": name, "content": json.dumps(result, ensure_ascii=False)})

    def _current(self) -> list[dict]:
        if not self.turns:
            raise ValueError("add a user message first: a conversation starts with the user")
        return self.turns[-1]

    def reset(self) -> None:
        """Forget every turn (the system prompt stays)."""
        self.turns.clear()

    def messages(self) -> list[dict]:
        """System prompt + turns, dropping the oldest turns until the budget holds."""
        while len(self.turns) > 1 and self.count_tokens(self._flat()) > self.max_tokens:
            dropped = self.turns.pop(0)
            self.dropped_messages += len(dropped)
            log.info("context over its %d-token budget: dropped the oldest turn (%d messages, %d dropped so far)",
                     self.max_tokens, len(dropped), self.dropped_messages)
        if self.turns and self.count_tokens(self._flat()) > self.max_tokens:
            self._shorten_last_turn()
        return self._flat()

    def _flat(self) -> list[dict]:
        return [self.system] + [m for turn in self.turns for m in turn]

    def _shorten_last_turn(self) -> None:
        turn = self.turns[-1]
        over = lambda: self.count_tokens(self._flat()) > self.max_tokens  # noqa: E731
        user = turn[0]
        lo, hi = 0, len(user["content"])  # binary search on how many leading characters to cut
        original = user["content"]
        while lo < hi:
            mid = (lo + hi) // 2
            user["content"] = original[mid:]
            if over():
                lo = mid + 1
            else:
                hi = mid
        user["content"] = original[lo:]
        for message in turn[1:]:
            while over() and message["role"] == "tool" and message["content"]:
                message["content"] = message["content"][: len(message["content"]) // 2]
        log.info("the newest turn alone exceeded the %d-token budget: cut %d characters of it",
                 self.max_tokens, lo)
        if over():
            raise ValueError(f"cannot fit the newest turn into {self.max_tokens} tokens")


# ---------------------------------------------------------------------------------------
# 3. Tools.
# ---------------------------------------------------------------------------------------

JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


class ToolError(Exception):
    """A tool call that cannot be run: `kind` is "malformed", "unknown", "invalid", "error" or "timeout"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Tool:
    """A Python function the model may call, with the JSON schema of its parameters.

    Built from a typed function by `Tool.from_function`: parameter annotations (str, int, float,
    bool, Literal[...]) become JSON schema types, parameters without defaults are required, and
    the docstring's first line is the description.
    """

    name: str
    description: str
    parameters: dict  # JSON schema: {"type": "object", "properties": {...}, "required": [...]}
    function: Callable[..., Any]
    timeout: float = 2.0  # seconds before a call is abandoned

    @classmethod
    def from_function(cls, function: Callable[..., Any], name: str | None = None, timeout: float = 2.0) -> Tool:
        hints = typing.get_type_hints(function)
        properties, required = {}, []
        for pname, param in inspect.signature(function).parameters.items():
            hint = hints.get(pname)
            if hint is None:
                raise ValueError(f"tool {function.__name__}: parameter {pname!r} needs a type annotation")
            properties[pname] = _json_schema_of(hint, f"{function.__name__}.{pname}")
            if param.default is inspect.Parameter.empty:
                required.append(pname)
        doc = inspect.getdoc(function) or ""
        schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
        return cls(name or function.__name__, doc.split("\n")[0], schema, function, timeout)

    def openai_schema(self) -> dict:
        """The tool in the OpenAI API's `tools` list format."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    def validate(self, arguments: Any) -> dict:
        """Check arguments (a dict or JSON object text) against the schema; returns the dict.

        Raises ToolError("malformed") for text that is not a JSON object, ToolError("invalid") for
        missing, unknown or mistyped arguments.
        """
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                raise ToolError("malformed", f"{self.name}: arguments are not JSON ({exc.msg}): {arguments[:80]!r}") from None
        if not isinstance(arguments, dict):
            raise ToolError("malformed", f"{self.name}: arguments must be a JSON object, got {arguments!r}")
        props, required = self.parameters["properties"], self.parameters["required"]
        missing = [p for p in required if p not in arguments]
        unknown = [p for p in arguments if p not in props]
        if missing or unknown:
            raise ToolError("invalid", f"{self.name}: expected arguments {sorted(props)} (required {required}); "
                                       f"missing {missing}, unknown {unknown}")
        for key, value in arguments.items():
            if not _matches(value, props[key]):
                raise ToolError("invalid", f"{self.name}: argument {key!r} must be {props[key]}, got {value!r}")
        return arguments


def _json_schema_of(hint: Any, where: str) -> dict:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return {"type": JSON_TYPES[type(args[0])], "enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _json_schema_of(options[0], where)
    if hint in JSON_TYPES:
        return {"type": JSON_TYPES[hint]}
    raise ValueError(f"tool parameter {where}: type {hint} has no JSON schema here (use str, int, float, bool, Literal)")


def _matches(value: Any, schema: dict) -> bool:
    kind = schema["type"]
    ok = {"string": isinstance(value, str), "boolean": isinstance(value, bool),
          "integer": isinstance(value, int) and not isinstance(value, bool),
          "number": isinstance(value, (int, float)) and not isinstance(value, bool)}[kind]
    return ok and ("enum" not in schema or value in schema["enum"])


def run_with_timeout(function: Callable[[], Any], timeout: float) -> Any:
    """Call `function()` in a daemon thread and wait at most `timeout` seconds.

    Raises ToolError("timeout") if it is still running (the thread is left to finish on its own:
    Python cannot kill a thread) and ToolError("error") if it raised.
    """
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = function()
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            box["error"] = exc

    worker = threading.Thread(target=target, daemon=True, name="minivox-tool")
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise ToolError("timeout", f"still running after {timeout:g} s")
    if "error" in box:
        exc = box["error"]
        raise ToolError("error", f"{type(exc).__name__}: {exc}")
    return box["value"]


class ToolRegistry:
    """The tools an assistant may call, by name."""

    def __init__(self, tools: Sequence[Tool] = ()):
        self.tools: dict[str, Tool] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool | Callable[..., Any]) -> Tool:
        """Register a Tool or a typed function (converted with Tool.from_function)."""
        tool = tool if isinstance(tool, Tool) else Tool.from_function(tool)
        self.tools[tool.name] = tool
        return tool

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def __len__(self) -> int:
        return len(self.tools)

    def openai_schemas(self) -> list[dict]:
        return [tool.openai_schema() for tool in self.tools.values()]

    def call(self, call: ToolCall) -> tuple[dict, dict]:
        """Validate and run one call; returns (the validated arguments, the JSON result; a non-dict
        result is wrapped as {"result": value}). Raises ToolError (kinds: malformed, unknown,
        invalid, error, timeout)."""
        if not call.name:
            raise ToolError("malformed", f"could not read a tool call from {call.arguments[:80]!r}")
        if call.name not in self.tools:
            raise ToolError("unknown", f"no tool named {call.name!r}; known: {sorted(self.tools)}")
        tool = self.tools[call.name]
        arguments = tool.validate(call.arguments)
        result = run_with_timeout(lambda: tool.function(**arguments), tool.timeout)
        if not isinstance(result, dict):
            result = {"result": result}
        try:
            json.dumps(result)
        except (TypeError, ValueError) as exc:
            raise ToolError("error", f"{call.name} returned a result that is not JSON: {exc}") from None
        return arguments, result


# The demo tools. Their results come from minivox.data.dialogues.run_tool, the executor that
# computed every tool result in the training dialogues, so the model sees the same formats live.


class Timers:
    """Running countdown timers; `on_done(seconds)` is called (in a timer thread) when one ends."""

    def __init__(self, on_done: Callable[[int], None] | None = None):
        self.on_done = on_done or (lambda seconds: print(f"\n[timer] {dialogue_data.duration_phrase(seconds)} are up!",
                                                         file=sys.stderr))
        self.active: list[threading.Timer] = []

    def start(self, seconds: int) -> None:
        timer = threading.Timer(seconds, self.on_done, args=(seconds,))
        timer.daemon = True
        timer.start()
        self.active = [t for t in self.active if t.is_alive()] + [timer]

    def cancel_all(self) -> None:
        for timer in self.active:
            timer.cancel()
        self.active.clear()


def demo_tools(now: Callable[[], dt.datetime] = dt.datetime.now, timers: Timers | None = None,
               wordnet_dir: str = "/usr/share/wordnet") -> ToolRegistry:
    """The six tools the demo model was trained to call (define_word only when WordNet is installed)."""
    from minivox.data.textcorpus import WordNet

    timers = timers or Timers()
    wordnet = WordNet(wordnet_dir)
    run = dialogue_data.run_tool

    def get_time() -> dict:
        """the current local time"""
        return run("get_time", {}, now=now())

    def get_date() -> dict:
        """today's date and day of the week"""
        return run("get_date", {}, now=now())

    def calculator(expression: str) -> dict:
        """evaluate arithmetic: numbers, + - * / ** and parentheses (parsed with ast, never eval)"""
        return run("calculator", {"expression": expression})

    def convert_units(value: float, from_unit: str, to_unit: str) -> dict:
        """convert a value between units of length, mass, volume, time, speed or temperature"""
        return run("convert_units", {"value": value, "from_unit": from_unit, "to_unit": to_unit})

    def set_timer(seconds: int) -> dict:
        """start a countdown timer"""
        result = run("set_timer", {"seconds": seconds})
        if "error" not in result:
            timers.start(seconds)
        return result

    def define_word(word: str) -> dict:
        """the most common meaning of an English word (WordNet)"""
        return run("define_word", {"word": word}, wordnet=wordnet)

    tools = [get_time, get_date, calculator, convert_units, set_timer]
    if wordnet.available():
        tools.append(define_word)
    return ToolRegistry([Tool.from_function(f) for f in tools])


# ---------------------------------------------------------------------------------------
# 4. Backends.
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
        """Load a checkpoint; `int8` decodes with int8 Linear weights (about 2x faster on a CPU,
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

        `tools` (OpenAI-format schemas) only switches tool calling on or off here: the demo model
        knows its trained tools and no others, so when none are offered `<|call|>` is banned.
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
            finally:
                stream.close()
        if call_ids is not None:
            calls = parse_tool_calls(self.tokenizer.decode(call_ids))
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
    an HTTP error raises BackendError with the status and the server's message.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, first_token_timeout: float = 5.0,
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


# ---------------------------------------------------------------------------------------
# 5. The assistant loop.
# ---------------------------------------------------------------------------------------

APOLOGIES = {  # ToolError kind (or backend failure) -> what the assistant says instead
    "malformed": "Sorry, I got muddled there. Could you ask me again?",
    "unknown": "Sorry, I can't do that yet.",
    "invalid": "Sorry, I didn't quite catch the details. Could you say that again?",
    "error": "Sorry, something went wrong while I was working that out.",
    "timeout": "Sorry, that took too long. Please try again.",
    "rounds": "Sorry, I couldn't finish that one.",
    "backend": "Sorry, I'm having trouble thinking right now. Please try again in a moment.",
}
MAX_TOOL_ROUNDS = 3  # tool-call rounds per user turn before the assistant gives up


@dataclass
class TurnEvent:
    """What `Assistant.respond` yields: reply text, or a note about a tool call (for logs and UIs)."""

    text: str = ""
    tool_call: dict | None = None  # {"name", "arguments", "result"} or {"name", "error"}


class Assistant:
    """A chat with one backend, its tools and a ChatContext. `respond` runs one user turn."""

    def __init__(self, backend: ChatBackend, tools: ToolRegistry | None = None, context: ChatContext | None = None,
                 options: GenerationOptions | None = None):
        self.backend = backend
        self.tools = tools if tools is not None else ToolRegistry()
        self.options = options or GenerationOptions()
        if context is None:
            budget = getattr(backend, "max_context", 4096) - self.options.max_tokens
            context = ChatContext(SYSTEM_PROMPT, max_tokens=budget, count_tokens=backend.count_tokens)
        self.context = context

    def respond(self, text: str, speaker: int | None = None) -> Iterator[TurnEvent]:
        """Add the user's words, then stream the reply. Never raises for model or tool trouble:
        a failure becomes a short apology (which also goes into the context)."""
        self.context.add_user(text, speaker)
        schemas = self.tools.openai_schemas() or None
        for _ in range(MAX_TOOL_ROUNDS):
            reply, calls = [], None
            try:
                for delta in self.backend.stream_chat(self.context.messages(), schemas, self.options):
                    if delta.text:
                        reply.append(delta.text)
                        yield TurnEvent(text=delta.text)
                    if delta.tool_calls:
                        calls = delta.tool_calls
            except (BackendError, ValueError) as exc:
                log.warning("backend failed: %s", exc)
                yield from self._apologise("backend", already="".join(reply))
                return
            if not calls:
                self.context.add_assistant("".join(reply).strip() or "...")
                return
            done = []  # (name, validated arguments, result)
            for call in calls:
                try:
                    arguments, result = self.tools.call(call)
                except ToolError as exc:
                    log.warning("tool call %s(%s) failed (%s): %s", call.name or "?", call.arguments[:80], exc.kind, exc)
                    yield TurnEvent(tool_call={"name": call.name, "arguments": call.arguments, "error": str(exc)})
                    yield from self._apologise(exc.kind, already="".join(reply))
                    return
                done.append((call.name, arguments, result))
                yield TurnEvent(tool_call={"name": call.name, "arguments": call.arguments, "result": result})
            self.context.add_assistant("".join(reply).strip(), [{"name": n, "arguments": a} for n, a, _ in done])
            for name, _, result in done:
                self.context.add_tool_result(name, result)
        yield from self._apologise("rounds")

    def _apologise(self, kind: str, already: str = "") -> Iterator[TurnEvent]:
        apology = APOLOGIES[kind]
        yield TurnEvent(text=(" " if already and not already.endswith(" ") else "") + apology)
        self.context.add_assistant((already + " " + apology).strip())

    def reply_text(self, text: str, speaker: int | None = None) -> str:
        """`respond` collected into one string."""
        return "".join(event.text for event in self.respond(text, speaker)).strip()


# ---------------------------------------------------------------------------------------
# 6. The `minivox chat` command.
# ---------------------------------------------------------------------------------------


def default_checkpoint() -> str:
    """The bundled demo model's path."""
    from minivox.pretrained import PRETRAINED_DIR

    return str(PRETRAINED_DIR / "llm_demo.pt")


def build_backend(args: argparse.Namespace) -> ChatBackend:
    """The backend named by --backend and its options."""
    if args.backend == "openai":
        if not args.base_url or not args.model:
            raise ValueError("--backend openai needs --base-url (e.g. http://localhost:8000/v1) and --model")
        return OpenAIBackend(args.base_url, args.model, api_key=args.api_key,
                             first_token_timeout=args.first_token_timeout, total_timeout=args.total_timeout)
    return LocalBackend.from_checkpoint(args.checkpoint or default_checkpoint(), threads=args.threads, int8=args.int8)


def run_chat(args: argparse.Namespace) -> int:
    """`minivox chat`: an interactive chat (or one question with --once), streaming the reply."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        backend = build_backend(args)
    except (ValueError, OSError) as exc:
        print(f"minivox chat: {exc}", file=sys.stderr)
        return 2
    options = GenerationOptions(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                seed=args.seed)
    assistant = Assistant(backend, demo_tools(), options=options)

    def turn(text: str) -> None:
        for event in assistant.respond(text, args.speaker):
            if event.text:
                print(event.text, end="", flush=True)
            elif event.tool_call and args.verbose:
                print(f"\n  [tool] {json.dumps(event.tool_call)}", file=sys.stderr)
        print()

    if args.once is not None:
        turn(args.once)
        return 0
    print("minivox chat: type a message (empty line or Ctrl-D to quit, /reset to forget the conversation)")
    while True:
        try:
            text = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not text:
            return 0
        if text == "/reset":
            assistant.context.reset()
            continue
        turn(text)


def register(subparsers) -> None:
    """Add `minivox chat`."""
    p = subparsers.add_parser("chat", help="chat with the LLM (local demo model or an OpenAI-compatible server)")
    p.add_argument("--once", metavar="TEXT", help="ask one question, print the answer and exit")
    p.add_argument("--backend", choices=["local", "openai"], default="local", help="local minivox model or a remote server")
    p.add_argument("--checkpoint", help="local model checkpoint (default: the bundled llm_demo.pt)")
    p.add_argument("--base-url", help="OpenAI-compatible API root, e.g. http://localhost:8000/v1")
    p.add_argument("--model", help="model name for --backend openai")
    p.add_argument("--api-key", default=None, help="bearer token for --backend openai (default: none)")
    p.add_argument("--first-token-timeout", type=float, default=10.0, help="seconds to the first token (openai)")
    p.add_argument("--total-timeout", type=float, default=60.0, help="seconds for a whole reply (openai)")
    p.add_argument("--speaker", type=int, default=None, help="tag your turns <speaker_N>")
    p.add_argument("--max-tokens", type=int, default=128, help="most tokens per reply")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the local model")
    p.add_argument("--int8", action="store_true", help="local model with int8 weights (about 2x faster decoding on a CPU)")
    p.add_argument("-v", "--verbose", action="store_true", help="show tool calls and context trimming")
    p.set_defaults(func=run_chat)
