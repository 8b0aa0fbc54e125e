"""Tools the LLM may call: typed Python functions -> JSON schema; argument validation; running
with a timeout; the demo tools (time, date, calculator, unit conversion, timer, WordNet definitions).

Used by `minivox.chat.Assistant`, which runs the calls a backend's reply asks for (a failing call
becomes a spoken apology there), and by the voice agent (`serve/pipeline.py`). `import
minivox.tools` pulls only the standard library.
"""

from __future__ import annotations

import ast
import datetime as dt
import inspect
import json
import operator
import sys
import threading
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from minivox.chat_template import ToolCall

if TYPE_CHECKING:
    from minivox.data.textcorpus import WordNet

# ---------------------------------------------------------------------------------------
# Tools.
# ---------------------------------------------------------------------------------------

JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
USER_WORD = "x-user-word"  # schema keyword of a string parameter whose value is one word the user said
UserWord = typing.Annotated[str, USER_WORD]  # annotate such a parameter with this (define_word's `word`);
#   the local model's calls are then held to the words of the user's last message (minivox.backends)


class ToolError(Exception):
    """A tool call that cannot be run: `kind` is "malformed", "unknown", "invalid", "error" or "timeout"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Tool:
    """A Python function the model may call, with the JSON schema of its parameters.

    Built from a typed function by `Tool.from_function`: parameter annotations (str, int, float,
    bool, Literal[...], UserWord) become JSON schema types, parameters without defaults are
    required, and the docstring's first line is the description.
    """

    name: str
    description: str
    parameters: dict  # JSON schema: {"type": "object", "properties": {...}, "required": [...]}
    function: Callable[..., Any]
    timeout: float = 2.0  # seconds before a call is abandoned

    @classmethod
    def from_function(cls, function: Callable[..., Any], name: str | None = None, timeout: float = 2.0) -> Tool:
        hints = typing.get_type_hints(function, include_extras=True)  # keeps Annotated (UserWord)
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
    if origin is typing.Annotated:
        schema = _json_schema_of(args[0], where)
        if USER_WORD in hint.__metadata__:
            if schema != {"type": "string"}:
                raise ValueError(f"tool parameter {where}: UserWord marks a str parameter, got {args[0]}")
            schema[USER_WORD] = True
        return schema
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


# ---------------------------------------------------------------------------------------
# The demo tools' executor: their specification, the calculator, unit conversion, run_tool.
# It computed every tool result in the training dialogues (minivox/data/dialogues.py), so
# the model sees the same formats live.
# ---------------------------------------------------------------------------------------

TOOLS: dict[str, dict[str, Any]] = {  # name -> description and parameters (all required): name -> type
    "get_time": {"description": "the current local time", "parameters": {}},
    "get_date": {"description": "today's date and day of the week", "parameters": {}},
    "calculator": {"description": "evaluate arithmetic: numbers, + - * / ** and parentheses",
                   "parameters": {"expression": "string"}},
    "convert_units": {"description": "convert a value between units of length, mass, volume, time, speed or temperature",
                      "parameters": {"value": "number", "from_unit": "string", "to_unit": "string"}},
    "set_timer": {"description": "start a countdown timer", "parameters": {"seconds": "integer"}},
    "define_word": {"description": "the most common meaning of an English word (WordNet)", "parameters": {"word": "string"}},
}
PARAM_TYPES = {"string": (str,), "number": (int, float), "integer": (int,)}

CALC_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
MAX_EXPONENT = 10  # bounds ** so a request cannot ask for a number with millions of digits
CALC_DECIMALS = 4  # calculator results are rounded to this many decimals

# unit -> (quantity, size in SI units, singular name, plural name); temperatures convert through kelvin
UNITS = {
    "m": ("length", 1.0, "meter", "meters"), "km": ("length", 1000.0, "kilometer", "kilometers"),
    "cm": ("length", 0.01, "centimeter", "centimeters"), "mm": ("length", 0.001, "millimeter", "millimeters"),
    "mi": ("length", 1609.344, "mile", "miles"), "ft": ("length", 0.3048, "foot", "feet"),
    "in": ("length", 0.0254, "inch", "inches"), "yd": ("length", 0.9144, "yard", "yards"),
    "kg": ("mass", 1.0, "kilogram", "kilograms"), "g": ("mass", 0.001, "gram", "grams"),
    "lb": ("mass", 0.45359237, "pound", "pounds"), "oz": ("mass", 0.028349523125, "ounce", "ounces"),
    "l": ("volume", 1.0, "liter", "liters"), "ml": ("volume", 0.001, "milliliter", "milliliters"),
    "gal": ("volume", 3.785411784, "gallon", "gallons"), "cup": ("volume", 0.2365882365, "cup", "cups"),
    "s": ("time", 1.0, "second", "seconds"), "min": ("time", 60.0, "minute", "minutes"),
    "h": ("time", 3600.0, "hour", "hours"), "day": ("time", 86400.0, "day", "days"),
    "week": ("time", 604800.0, "week", "weeks"),
    "km/h": ("speed", 1 / 3.6, "kilometer per hour", "kilometers per hour"),
    "mph": ("speed", 0.44704, "mile per hour", "miles per hour"), "m/s": ("speed", 1.0, "meter per second", "meters per second"),
    "c": ("temperature", None, "degree Celsius", "degrees Celsius"),
    "f": ("temperature", None, "degree Fahrenheit", "degrees Fahrenheit"), "k": ("temperature", None, "kelvin", "kelvins"),
}
UNIT_ALIASES = {name.lower(): code for code, (_, _, one, many) in UNITS.items() for name in (code, one, many)}
TO_KELVIN = {"c": lambda x: x + 273.15, "f": lambda x: (x - 32) * 5 / 9 + 273.15, "k": lambda x: x}
FROM_KELVIN = {"c": lambda x: x - 273.15, "f": lambda x: (x - 273.15) * 9 / 5 + 32, "k": lambda x: x}


def _exact(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _exact(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in CALC_OPS:
        return CALC_OPS[type(node.op)](_exact(node.left), _exact(node.right))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base, exponent = _exact(node.left), _exact(node.right)
        if exponent.denominator != 1 or abs(exponent) > MAX_EXPONENT:
            raise ValueError(f"exponent must be a whole number within +-{MAX_EXPONENT}, got {exponent}")
        return base ** int(exponent)
    raise ValueError(f"unsupported expression element {ast.dump(node)[:40]}")


def round_number(x: float | Fraction, decimals: int) -> int | float:
    """`x` rounded to `decimals` places, as an int when it is whole (JSON and speech-friendly)."""
    x = round(float(x), decimals)
    return int(x) if x == int(x) and abs(x) < 2**53 else x


def calculate(expression: str) -> int | float:
    """Evaluate an arithmetic expression exactly (fractions), rounded to CALC_DECIMALS decimals.

    Raises ValueError for anything but numbers, + - * / ** and parentheses; ZeroDivisionError.
    """
    try:
        tree = ast.parse(expression.replace("^", "**").replace("x", "*"), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    return round_number(_exact(tree.body), CALC_DECIMALS)


def convert_units(value: float, from_unit: str, to_unit: str) -> int | float:
    """`value` in `from_unit` expressed in `to_unit` (codes or names of UNITS), rounded for speech:
    2 decimals, or 3 significant digits below 1."""
    src, dst = (UNIT_ALIASES.get(u.lower().strip()) for u in (from_unit, to_unit))
    if src is None or dst is None:
        raise ValueError(f"unknown unit {from_unit if src is None else to_unit!r}; known: {', '.join(UNITS)}")
    if UNITS[src][0] != UNITS[dst][0]:
        raise ValueError(f"cannot convert {UNITS[src][0]} ({src}) to {UNITS[dst][0]} ({dst})")
    if UNITS[src][0] == "temperature":
        result = FROM_KELVIN[dst](TO_KELVIN[src](value))
    else:
        result = value * UNITS[src][1] / UNITS[dst][1]
    if result != 0 and abs(result) < 1:
        return float(f"{result:.3g}")
    return round_number(result, 2)


def format_time(now: dt.datetime) -> str:
    """"3:07 PM": how the time tool reports a time of day."""
    return f"{(now.hour - 1) % 12 + 1}:{now.minute:02d} {'AM' if now.hour < 12 else 'PM'}"


def format_date(now: dt.date) -> str:
    """"March 5, 2026": how the date tool reports a date."""
    return f"{now.strftime('%B')} {now.day}, {now.year}"


def run_tool(name: str, arguments: dict, now: dt.datetime | None = None, wordnet: WordNet | None = None) -> dict:
    """Execute one tool call; returns its JSON-able result, or {"error": message} for a bad request.

    `now` fixes the clock (the generator gives each dialogue its own); `wordnet` is the dictionary.
    """
    now = now or dt.datetime.now()
    try:
        check_arguments(name, arguments)
        if name == "get_time":
            return {"time": format_time(now)}
        if name == "get_date":
            return {"weekday": now.strftime("%A"), "date": format_date(now)}
        if name == "calculator":
            return {"result": calculate(arguments["expression"])}
        if name == "convert_units":
            value = convert_units(arguments["value"], arguments["from_unit"], arguments["to_unit"])
            return {"value": value, "unit": UNIT_ALIASES[arguments["to_unit"].lower().strip()]}
        if name == "set_timer":
            if arguments["seconds"] <= 0:
                raise ValueError(f"a timer needs a positive number of seconds, got {arguments['seconds']}")
            return {"status": "started", "seconds": arguments["seconds"]}
        if name == "define_word":
            if wordnet is None or not wordnet.available():
                return {"error": "no dictionary is installed"}
            entry = wordnet.lookup(arguments["word"])
            if entry is None:
                return {"error": f"no definition found for {arguments['word']!r}"}
            return entry
    except ZeroDivisionError:
        return {"error": "division by zero"}
    except ValueError as exc:
        return {"error": str(exc)}
    raise AssertionError(name)


def check_arguments(name: str, arguments: Any) -> None:
    """Raise ValueError unless `arguments` has exactly the parameters of tool `name` with their types."""
    if name not in TOOLS:
        raise ValueError(f"unknown tool {name!r}; expected one of {sorted(TOOLS)}")
    params = TOOLS[name]["parameters"]
    if not isinstance(arguments, dict) or set(arguments) != set(params):
        raise ValueError(f"tool {name}: expected arguments {sorted(params)}, got {arguments!r}")
    for key, kind in params.items():
        value = arguments[key]
        if isinstance(value, bool) or not isinstance(value, PARAM_TYPES[kind]):
            raise ValueError(f"tool {name}: argument {key!r} must be a {kind}, got {value!r}")


def duration_phrase(seconds: int) -> str:
    """300 -> "5 minutes", 5400 -> "1 hour and 30 minutes", 90 -> "1 minute and 30 seconds"."""
    parts = []
    for size, one, many in ((3600, "hour", "hours"), (60, "minute", "minutes"), (1, "second", "seconds")):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {one if count == 1 else many}")
    return " and ".join(parts)


def number_text(x: int | float) -> str:
    """A number as the assistant writes it: no exponent, no trailing zeros."""
    return str(x) if isinstance(x, int) else f"{x:.6f}".rstrip("0").rstrip(".")


# The demo tools, as typed functions over run_tool.


class Timers:
    """Running countdown timers; `on_done(seconds)` is called (in a timer thread) when one ends."""

    def __init__(self, on_done: Callable[[int], None] | None = None):
        self.on_done = on_done or (lambda seconds: print(f"\n[timer] {duration_phrase(seconds)} are up!",
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
    run = run_tool

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

    def define_word(word: UserWord) -> dict:
        """the most common meaning of an English word (WordNet)"""
        return run("define_word", {"word": word}, wordnet=wordnet)

    tools = [get_time, get_date, calculator, convert_units, set_timer]
    if wordnet.available():
        tools.append(define_word)
    return ToolRegistry([Tool.from_function(f) for f in tools])
