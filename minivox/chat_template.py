"""The chat template: messages <-> token ids for the local model, tool calls as the model writes them.

Messages are dicts in the dialogue format of `minivox.data.dialogues` (docs/data.md):
`{"role": "system"|"user"|"assistant"|"tool", "content": str}`, assistant messages may carry
`tool_calls: [{"name", "arguments": {...}}]`, tool messages a `name`. For the local model they
become token ids with sentencepiece special tokens:

    <|system|> You are minivox ... <|end|>
    <|user|> <speaker_1> what's 17 times 23 <|end|>
    <|assistant|> <|call|> [{"name": " calculator", "arguments": {"expression": " 17 * 23"}}] <|end|>
    <|tool|> calculator: {"result": 391} <|end|>
    <|assistant|> 17 times 23 is 391. <|end|>

JSON string values (tool names, arguments, tool results) are written with one space after the
opening quote, and read back without it: sentencepiece then cuts a word inside a call or result
into the same pieces as in a sentence ("▁reduction" in both; without the space the quote glues
to it and it becomes "red" + "uction" in the call against "▁red" + "uction" in the user's words),
so the model copies pieces instead of re-spelling words. What reaches tools and API clients is
plain JSON.

Role markers, `<|end|>` and `<|call|>` are sentencepiece *control* symbols: they have ids but
no text form, so nothing a user types can forge them. `<speaker_N>` (the diarizer's speaker
numbers) are *user-defined* symbols: one id each wherever they appear in text. Each message's
text is encoded on its own, so a word gets the same pieces wherever its message sits.

Used by the local backend (`minivox.backends.LocalBackend`), the conversation context
(`minivox.chat.ChatContext`, which also uses `approximate_token_count`) and the LLM's
supervised fine-tuning (`train/llm.py`). `import minivox.chat_template` pulls only the standard
library; sentencepiece loads when a tokenizer is trained.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass


# ---------------------------------------------------------------------------------------
# Chat template.
# ---------------------------------------------------------------------------------------

ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>", "tool": "<|tool|>"}
END_TOKEN = "<|end|>"  # closes every message; generation stops on it
CALL_TOKEN = "<|call|>"  # starts the JSON list of tool calls in an assistant message
CONTROL_SYMBOLS = (*ROLE_TOKENS.values(), END_TOKEN, CALL_TOKEN)
MAX_SPEAKERS = 4  # the diarizer's max_num_speakers (DESIGN.md section 3)
SPEAKER_SYMBOLS = tuple(f"<speaker_{n}>" for n in range(1, MAX_SPEAKERS + 1))
# the prompt the demo model was trained with
SYSTEM_PROMPT = ("You are minivox, a friendly voice assistant. Answer in one or two short spoken sentences. "
                 "Use a tool for the time, the date, arithmetic, unit conversions, timers and word definitions.")
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


def _map_strings(value, f):
    """JSON data with f applied to every string value (not to keys)."""
    if isinstance(value, str):
        return f(value)
    if isinstance(value, list):
        return [_map_strings(v, f) for v in value]
    if isinstance(value, dict):
        return {k: _map_strings(v, f) for k, v in value.items()}
    return value


def spaced(value):
    """JSON data with one space before every string value, as the model reads and writes it."""
    return _map_strings(value, lambda s: " " + s)


def unspaced(value):
    """`spaced` undone: one leading space off every string value (a value without one is kept)."""
    return _map_strings(value, lambda s: s[1:] if s.startswith(" ") else s)


def format_tool_calls(calls: Sequence[dict]) -> str:
    """The JSON text the model writes after `<|call|>`: [{"name": ..., "arguments": {...}}, ...],
    string values spaced (module docstring)."""
    return json.dumps([spaced({"name": c["name"], "arguments": c["arguments"]}) for c in calls], ensure_ascii=False)


def format_tool_result(content: str) -> str:
    """A tool message's content as the model reads it: a JSON object or list with its string values
    spaced; any other text as it is."""
    try:
        value = json.loads(content)
    except json.JSONDecodeError:
        return content
    return json.dumps(spaced(value), ensure_ascii=False) if isinstance(value, (dict, list)) else content


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
        value = unspaced(json.loads(text))
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
            content = f"{message.get('name', 'tool')}: {format_tool_result(content)}"
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


def approximate_token_count(messages: Sequence[dict]) -> int:
    """A tokenizer-free estimate for remote models: about 4 characters per token, plus 4 per message."""
    total = 0
    for m in messages:
        total += 4 + len(m.get("content") or "") // 4
        if m.get("tool_calls"):
            total += len(format_tool_calls(m["tool_calls"])) // 4
    return total
