"""Conversations for the LLM: context with a token budget, the assistant loop, `minivox chat`.

Read top to bottom:

1. `ChatContext`: the conversation so far, speaker-tagged user turns, and a token budget that
   drops the oldest turns (never the system prompt) and logs what it dropped.
2. `Assistant`: one user turn -> streamed reply text, running tool calls in between; malformed,
   unknown, failing or slow tool calls become a short spoken apology, never an exception.
3. The `minivox chat` command.

The pieces it builds on have modules of their own: the chat template (messages <-> token ids,
tool calls as the model writes them) in `minivox.chat_template`, the tools in `minivox.tools`,
the backends (the local model, an OpenAI-compatible server) in `minivox.backends`.

`import minivox.chat` pulls only the standard library; torch and sentencepiece load when a
local model is built.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from minivox.backends import BackendError, ChatBackend, GenerationOptions, LocalBackend, OpenAIBackend
from minivox.chat_template import MAX_SPEAKERS, SYSTEM_PROMPT, approximate_token_count
from minivox.tools import ToolError, ToolRegistry, demo_tools

log = logging.getLogger("minivox.chat")

# ---------------------------------------------------------------------------------------
# 1. Conversation context with a token budget.
# ---------------------------------------------------------------------------------------


def tag_speaker(text: str, speaker: int | None) -> str:
    """Prefix a user turn with `<speaker_N>` (N = 1..4) when the speaker is known."""
    if speaker is None:
        return text
    if not 1 <= speaker <= MAX_SPEAKERS:
        raise ValueError(f"speaker must be in 1..{MAX_SPEAKERS} (diarizer speaker number), got {speaker}")
    return f"<speaker_{speaker}> {text}"


def _untagged(text: str) -> str:
    """A user message without its `<speaker_N>` tag (tag_speaker's inverse)."""
    head, _, rest = text.partition(" ")
    return rest if re.fullmatch(r"<speaker_\d+>", head) else text


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

    def copy(self) -> ChatContext:
        """An independent copy (what an early reply answers, until the turn is known to be over)."""
        twin = ChatContext.__new__(ChatContext)
        twin.__dict__.update(self.__dict__)
        twin.system, twin.turns = dict(self.system), copy.deepcopy(self.turns)
        return twin

    def drop_last_turn(self, text: str) -> bool:
        """Forget the newest turn if the user said `text` in it (speaker tag aside): the user went on
        after it, and the request is asked again whole. Returns whether it was dropped."""
        first = self.turns[-1][0] if self.turns else {}
        if first.get("role") != "user" or _untagged(first["content"]) != text:
            return False
        self.turns.pop()
        return True

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
# 2. The assistant loop.
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
# 3. The `minivox chat` command.
# ---------------------------------------------------------------------------------------


def default_checkpoint() -> str:
    """The bundled demo model's path."""
    from minivox.pretrained import PRETRAINED_DIR

    return str(PRETRAINED_DIR / "llm_demo.pt")


def build_backend(args: argparse.Namespace) -> ChatBackend:
    """The backend named by --backend and its options."""
    if args.backend == "openai":
        if not args.base_url:
            raise ValueError("--backend openai needs --base-url (e.g. http://localhost:8000/v1)")
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
    p.add_argument("--model", help="model name for --backend openai (default: the first the server lists)")
    p.add_argument("--api-key", default=None, help="bearer token for --backend openai (default: none)")
    p.add_argument("--first-token-timeout", type=float, default=10.0, help="seconds to the first token (openai)")
    p.add_argument("--total-timeout", type=float, default=60.0, help="seconds for a whole reply (openai)")
    p.add_argument("--speaker", type=int, default=None, help="tag your turns <speaker_N>")
    p.add_argument("--max-tokens", type=int, default=128, help="most tokens per reply")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the local model")
    p.add_argument("--int8", action="store_true", help="local model with int8 weights (about 1.5x faster decoding, 3x prefill on a CPU)")
    p.add_argument("-v", "--verbose", action="store_true", help="show tool calls and context trimming")
    p.set_defaults(func=run_chat)
