"""TOML presets -> nested dataclasses, with `section.key=value` command-line overrides.

Every model and recipe has one `@dataclass` config whose fields all have defaults. A TOML
file sets some of them; unknown keys and wrong types are errors that name the key, so a typo
never trains a silently different model:

    @dataclass
    class Optim:
        lr: float = 1e-3

    @dataclass
    class TrainConfig:
        steps: int = 1000
        optim: Optim = field(default_factory=Optim)

    cfg = load_config(TrainConfig, "configs/x.toml", ["optim.lr=3e-4", "steps=20"])

Override values are read as TOML literals (`3e-4`, `true`, `[70, 1]`, `"text"`); a value
that is not a TOML literal is taken as a plain string (`name=asr_demo`).
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Iterable[str] = (),
                section: str | None = None) -> T:
    """Build `cls` (a dataclass) from a TOML file plus `key=value` overrides.

    Args:
        cls: the dataclass type; nested dataclass fields become TOML tables.
        path: a TOML file, or None for the defaults.
        overrides: strings like "optim.lr=3e-4", applied after the file (relative to `section`).
        section: read only this top-level table of the file, e.g. "model" when one preset holds
            the model and the training recipe; the other tables belong to other readers.
    Raises:
        ValueError: missing/invalid TOML file, unknown key, or a value of the wrong type.
    """
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    if section is not None:
        data = data.get(section, {})
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
    where = f" (in {path})" if path is not None else ""
    try:
        return from_dict(cls, data)
    except ValueError as exc:
        raise ValueError(f"{exc}{where}") from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """The contents of a TOML file; a missing or malformed file is a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from None


def parse_override(item: str) -> tuple[str, Any]:
    """Split "a.b=value" into ("a.b", parsed value); the value is a TOML literal or a plain string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {item!r} is not of the form section.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, last = dotted.split(".")
    node = data
    for name in sections:
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted}: {name} is a value, not a section")
    node[last] = value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict, checking keys and value types.

    Errors name the full dotted key, e.g. "unknown config key 'optim.lrr'".
    """
    if not isinstance(data, dict):
        raise ValueError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a table, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ValueError(f"unknown config key '{prefix}{unknown[0]}' (known keys here: {known})")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-dict form of a config dataclass (what checkpoints store)."""
    return dataclasses.asdict(config)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the type hint `hint`, converting where it is lossless (int -> float, list -> tuple)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, prefix=key + ".")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if len(errors) == 1 else f"config key '{key}': {value!r} matches none of {hint}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"config key '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key '{key}' must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"config key '{key}' must have {len(args)} items, got {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_hint = args[0] if args else Any
        items = [_coerce(v, item_hint, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key '{key}' must be a table, got {value!r}")
        return dict(value)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, str):
            return value
    elif isinstance(hint, type):
        if isinstance(value, hint):
            return value
    else:  # an unusual hint: accept the value as it is
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ValueError(f"config key '{key}' must be {name}, got {value!r} ({type(value).__name__})")
