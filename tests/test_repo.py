"""Whole-project properties: the install layout, cheap `import minivox`, README == CI, the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from minivox import cli

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout


def test_subpackages_import_from_their_top_level_folders():
    out = run_python(
        "import minivox, minivox.kernels, minivox.train, minivox.serve\n"
        "print(minivox.kernels.__file__); print(minivox.train.__file__); print(minivox.serve.__file__)"
    )
    folders = [Path(line).parent.name for line in out.split()]
    assert folders == ["kernels", "train", "serve"], out


def test_import_minivox_is_cheap():
    """`import minivox` (and its model modules) pull neither numba nor websockets nor CUDA."""
    modules = [p.stem for p in (ROOT / "minivox").glob("*.py") if p.stem not in ("__init__", "__main__", "cli")]
    code = (
        "import sys, importlib\n"
        f"for name in {modules!r}: importlib.import_module('minivox.' + name)\n"
        "import minivox.kernels\n"
        "bad = [m for m in ('numba', 'websockets') if m in sys.modules]\n"
        "import torch\n"
        "print(bad, torch.cuda.is_initialized())"
    )
    assert run_python(code).strip() == "[] False"


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\s*\$ (.+)$", section, flags=re.M)


def test_readme_has_two_commands_and_ci_runs_the_test_one_verbatim():
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    ci_lines = [
        line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert ci_lines == [commands[1]], (ci_lines, commands)
    makefile = (ROOT / "Makefile").read_text()
    for command in commands:
        target = command.removeprefix("make ").strip()
        assert re.search(rf"^{target}:", makefile, flags=re.M), command


def test_cli_help_and_info(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "info" in capsys.readouterr().out
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    import torch

    assert torch.__version__ in out and "numba CUDA" in out and "checkpoints" in out


def test_console_script_runs():
    exe = Path(sys.executable).parent / "minivox"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "minivox" in out.stdout


def test_selftest_checks_streaming_against_offline(capsys):
    assert cli.main(["selftest", "--seconds", "2"]) == 0
    out = capsys.readouterr().out
    assert "selftest passed" in out and "200 frames x 80 mels" in out


@pytest.mark.parametrize("command", ["info", "selftest", "wer", "der", "data", "transcribe", "synthesize", "chat", "serve-llm"])
def test_every_subcommand_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: minivox " + command in capsys.readouterr().out


def test_missing_bundled_model_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    from minivox.audio import write_wav

    wav = tmp_path / "x.wav"
    write_wav(wav, [0.0] * 1600, 16000)
    code = cli.main(["transcribe", str(wav), "--checkpoint", str(tmp_path / "missing.pt")])
    err = capsys.readouterr().err
    assert code != 0 and "missing.pt" in err and "Traceback" not in err
