"""minivox.config: TOML -> dataclasses, unknown keys and wrong types rejected, overrides coerced."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minivox.config import from_dict, load_config, parse_override, to_dict


@dataclass
class Optim:
    lr: float = 1e-3  # learning rate
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas


@dataclass
class Model:
    d_model: int = 176  # width
    att_context: list[int] = field(default_factory=lambda: [70, 1])  # [left, right] frames
    norm: Literal["layer", "batch"] = "layer"  # normalisation kind
    init_from: Optional[str] = None  # checkpoint to start from


@dataclass
class Train:
    name: str = "run"  # run name
    steps: int = 100  # optimizer steps
    amp: bool = False  # mixed precision
    model: Model = field(default_factory=Model)
    optim: Optim = field(default_factory=Optim)


def write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_without_file():
    assert load_config(Train) == Train()


def test_file_and_overrides(tmp_path):
    path = write(tmp_path, 'name = "demo"\nsteps = 5\n[model]\nd_model = 256\natt_context = [16, 0]\n[optim]\nlr = 1\n')
    cfg = load_config(Train, path, ["optim.lr=3e-4", "model.norm=batch", "amp=true", "optim.betas=[0.8, 0.9]"])
    assert cfg.name == "demo" and cfg.steps == 5
    assert cfg.model.d_model == 256 and cfg.model.att_context == [16, 0] and cfg.model.norm == "batch"
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.amp is True


def test_int_is_accepted_for_float_but_not_the_reverse(tmp_path):
    assert load_config(Train, write(tmp_path, "[optim]\nlr = 1\n")).optim.lr == 1.0
    with pytest.raises(ValueError, match="'steps' must be int, got 1.5"):
        load_config(Train, write(tmp_path, "steps = 1.5\n"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("stepz = 3\n", "unknown config key 'stepz'"),
        ("[model]\nd_modle = 3\n", "unknown config key 'model.d_modle'"),
        ('steps = "ten"\n', "'steps' must be int"),
        ("amp = 1\n", "'amp' must be bool"),
        ("[model]\natt_context = [1, 2.5]\n", r"'model.att_context\[1\]' must be int"),
        ('[model]\nnorm = "group"\n', "'model.norm' must be one of"),
        ("model = 3\n", "section 'model' must be a table"),
        ("[optim]\nbetas = [0.9]\n", "'optim.betas' must have 2 items"),
    ],
)
def test_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_config(Train, write(tmp_path, text))


def test_bad_file_and_bad_override(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(Train, tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(Train, write(tmp_path, "steps = = 3"))
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(Train, None, ["steps"])
    with pytest.raises(ValueError, match="unknown config key 'optim.momentum'"):
        load_config(Train, None, ["optim.momentum=0.9"])


def test_optional_and_plain_string_override():
    cfg = load_config(Train, None, ["model.init_from=runs/asr/last.pt", "name=asr_demo"])
    assert cfg.model.init_from == "runs/asr/last.pt" and cfg.name == "asr_demo"


@given(st.integers(-10**9, 10**9), st.floats(allow_nan=False, allow_infinity=False), st.booleans())
def test_round_trip_through_dict_and_overrides(steps, lr, amp):
    cfg = Train(steps=steps, amp=amp, optim=Optim(lr=lr))
    assert from_dict(Train, to_dict(cfg)) == cfg
    again = load_config(Train, None, [f"steps={steps}", f"optim.lr={lr!r}", f"amp={str(amp).lower()}"])
    assert again == cfg


def test_parse_override_literals():
    assert parse_override("a.b=[70, 1]") == ("a.b", [70, 1])
    assert parse_override("x=1e-3") == ("x", 1e-3)
    assert parse_override("x=hello world") == ("x", "hello world")


def test_section_reads_one_table_of_a_shared_preset(tmp_path):
    path = write(tmp_path, "[model]\nd_model = 64\n[train]\nsteps = 3\nwhatever = 1\n")
    cfg = load_config(Model, path, ["att_context=[8, 0]"], section="model")
    assert cfg.d_model == 64 and cfg.att_context == [8, 0]
    with pytest.raises(ValueError, match="unknown config key 'd_modle'"):
        load_config(Model, path, ["d_modle=3"], section="model")
