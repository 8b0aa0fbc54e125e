"""NeMo-style JSONL manifests: one JSON object per line, one line per utterance.

    {"audio_filepath": "wavs/train/000017.wav", "duration": 2.315, "text": "turn the lights off",
     "speaker": "flite-slt", "offset": 0.0, ...}

Required fields are `audio_filepath` (str), `duration` (seconds, >= 0) and `text` (str); other
manifests name their own (a conversation manifest has `rttm_filepath` and `num_speakers`
instead of `text`). Optional fields that are checked when present: `offset` (seconds, >= 0),
`speaker` (str or int). Any other field is carried along untouched.

Paths: a relative `*_filepath` value is relative to the manifest's folder, so a corpus folder can
be moved as a whole. `read_manifest` returns absolute paths; `write_manifest` writes what it is
given (write relative paths to keep a corpus relocatable).

Writes are safe against interruption: `write_manifest` writes a temporary file and renames it
over the target; `append_manifest` writes whole lines with one `write` call and fsyncs, and
`read_manifest(..., allow_partial_tail=True)` drops a final line cut short by a crash.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from minivox.fileio import atomic_path

REQUIRED_FIELDS = ("audio_filepath", "duration", "text")  # a speech manifest (ASR, TTS)
PATH_SUFFIX = "_filepath"  # fields whose relative values are resolved against the manifest folder


def validate_row(row: Any, required: Sequence[str] = REQUIRED_FIELDS, where: str = "manifest row") -> dict:
    """Check one manifest row and return it.

    Raises:
        ValueError: naming `where`, the field, what was expected and what came.
    """
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}: {row!r}")
    missing = [name for name in required if name not in row]
    if missing:
        raise ValueError(f"{where}: missing required field(s) {missing}; got fields {sorted(row)}")
    for name, value in row.items():
        if name.endswith(PATH_SUFFIX) and (not isinstance(value, str) or not value):
            raise ValueError(f"{where}: field '{name}' must be a non-empty path string, got {value!r}")
    for name in ("duration", "offset"):
        if name in row:
            value = row[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{where}: field '{name}' must be a finite number of seconds >= 0, got {value!r}")
    if "text" in row and not isinstance(row["text"], str):
        raise ValueError(f"{where}: field 'text' must be a string, got {row['text']!r}")
    if "speaker" in row and (isinstance(row["speaker"], bool) or not isinstance(row["speaker"], (str, int))):
        raise ValueError(f"{where}: field 'speaker' must be a string or an int, got {row['speaker']!r}")
    return row


def read_manifest(
    path: str | Path,
    required: Sequence[str] = REQUIRED_FIELDS,
    resolve_paths: bool = True,
    allow_partial_tail: bool = False,
) -> list[dict]:
    """Read and validate a JSONL manifest.

    Args:
        path: the manifest file.
        required: fields every row must have.
        resolve_paths: turn relative `*_filepath` values into absolute paths (against the manifest's folder).
        allow_partial_tail: drop a last line that is not valid JSON and has no newline (an append
            interrupted by a crash) instead of raising.
    Returns:
        the rows, in file order; blank lines are skipped.
    Raises:
        ValueError: a missing file, a line that is not JSON, or an invalid row (naming file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest {path} does not exist")
    base = path.resolve().parent
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            is_tail = number == len(lines) and not text.endswith("\n")
            if allow_partial_tail and is_tail:
                break
            raise ValueError(f"{where}: not a JSON object ({exc.msg}): {line[:80]!r}") from None
        validate_row(row, required, where)
        if resolve_paths:
            row = resolve_row_paths(row, base)
        rows.append(row)
    return rows


def resolve_row_paths(row: dict, base: str | Path) -> dict:
    """A copy of `row` with each relative `*_filepath` value joined onto folder `base`."""
    out = dict(row)
    for name, value in row.items():
        if name.endswith(PATH_SUFFIX) and not os.path.isabs(value):
            out[name] = os.path.normpath(os.path.join(base, value))
    return out


def write_manifest(path: str | Path, rows: Iterable[dict], required: Sequence[str] = REQUIRED_FIELDS) -> int:
    """Validate `rows` and write them as JSONL, atomically (temporary file + rename).

    Returns the number of rows written. The target is untouched if any row is invalid.
    """
    path = Path(path)
    lines = _dump_lines(rows, required, path)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
    return len(lines)


def append_manifest(path: str | Path, rows: Iterable[dict], required: Sequence[str] = REQUIRED_FIELDS) -> int:
    """Validate `rows` and append them to `path` (created if missing) with one write + fsync.

    Returns the number of rows appended.
    """
    path = Path(path)
    lines = _dump_lines(rows, required, path)
    if not lines:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())
    return len(lines)


def _dump_lines(rows: Iterable[dict], required: Sequence[str], path: Path) -> list[str]:
    lines = []
    for i, row in enumerate(rows):
        validate_row(row, required, f"{path}: row {i}")
        try:
            lines.append(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: row {i} is not JSON-serialisable: {exc}") from None
    return lines


def total_duration(rows: Iterable[dict]) -> float:
    """Sum of the `duration` fields, in seconds."""
    return float(sum(row["duration"] for row in rows))
