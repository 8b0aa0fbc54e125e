"""Tools the LLM may call: typed Python functions -> JSON schema; argument validation; running
with a timeout; the demo tools (time, date, calculator, unit conversion, timer, WordNet definitions).

Used by `minivox.chat.Assistant`, which runs the calls a backend's reply asks for (a failing call
becomes a spoken apology there), and by the voice agent (`serve/pipeline.py`). `import
minivox.tools` pulls only the standard library.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import sys
import threading
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from minivox.chat_template import ToolCall
from minivox.data import dialogues as dialogue_data

# ---------------------------------------------------------------------------------------
# Tools.
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
