"""Checkpoints: one dict per model, saved atomically, loaded with `weights_only=True`.

A checkpoint is

    {"kind": "asr" | "diarizer" | "fastpitch" | "hifigan" | "llm",
     "config": asdict(model_config),      # the model is rebuilt from this
     "model": state_dict,                 # optionally stored as fp16
     "tokenizer": bytes | None,           # serialized sentencepiece model, if the model has one
     "meta": {...}}                       # free-form: step, data, scores, minivox version

Training scripts keep their optimizer/scheduler/RNG state in a separate resume file (see
train/common.py); this format is what inference and the bundled demo models load.
"""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from minivox.fileio import atomic_path

KINDS = ("asr", "diarizer", "fastpitch", "hifigan", "llm")
REQUIRED_KEYS = ("kind", "config", "model", "tokenizer", "meta")


def save_checkpoint(
    path: str | Path,
    kind: str,
    config: Any,
    model: torch.nn.Module | dict[str, torch.Tensor],
    tokenizer: bytes | None = None,
    meta: dict[str, Any] | None = None,
    fp16: bool = False,
) -> Path:
    """Write a checkpoint atomically (temp file + rename, so a crash never leaves half a file).

    Args:
        kind: one of KINDS.
        config: the model's config dataclass (stored as `asdict(config)`) or an equivalent dict.
        model: the module or its state_dict.
        tokenizer: serialized tokenizer bytes (`Tokenizer.to_bytes()`), if any.
        meta: JSON-like extra information (training step, data, scores).
        fp16: store floating-point tensors as float16 (half the size); `load_checkpoint` hands
            them back as stored, and `load_state_dict` casts them to the model's dtype.
    Returns:
        The path written.
    """
    if kind not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}, got {kind!r}")
    config_dict = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    state = {name: _stored(tensor, fp16) for name, tensor in state.items()}
    meta = dict(meta or {})
    meta["stored_dtype"] = "float16" if fp16 else "as-trained"  # of this file, whatever a re-saved meta said
    payload = {"kind": kind, "config": config_dict, "model": state, "tokenizer": tokenizer, "meta": meta}

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _stored(tensor: torch.Tensor, fp16: bool) -> torch.Tensor:
    tensor = tensor.detach().cpu()
    if fp16 and tensor.is_floating_point():
        tensor = tensor.half()
    return tensor


def load_checkpoint(path: str | Path, kind: str | None = None, map_location: str | torch.device = "cpu") -> dict:
    """Load and check a checkpoint written by `save_checkpoint`.

    Args:
        path: the .pt file.
        kind: if given, the kind the caller expects; another kind is an error.
    Raises:
        ValueError: missing file, not a minivox checkpoint, or the wrong kind.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable minivox checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED_KEYS):
        found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a minivox checkpoint: expected keys {list(REQUIRED_KEYS)}, found {found}")
    if kind is not None and payload["kind"] != kind:
        raise ValueError(f"{path} holds a {payload['kind']!r} checkpoint, but a {kind!r} checkpoint was expected")
    return payload


def load_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """`model.load_state_dict(state)` with one clear error listing every missing, unexpected and mis-shaped tensor.

    Tensors stored as fp16 are cast to the model's parameter dtype by `load_state_dict` itself.
    """
    own = model.state_dict()
    missing = [name for name in own if name not in state]
    unexpected = [name for name in state if name not in own]
    mismatched = [
        f"{name}: checkpoint {tuple(state[name].shape)} vs model {tuple(own[name].shape)}"
        for name in own
        if name in state and state[name].shape != own[name].shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not fit {type(model).__name__}:"]
        lines += [f"  missing: {name}" for name in missing[:10]] + (["  ..."] if len(missing) > 10 else [])
        lines += [f"  unexpected: {name}" for name in unexpected[:10]] + (["  ..."] if len(unexpected) > 10 else [])
        lines += [f"  shape mismatch {item}" for item in mismatched[:10]] + (["  ..."] if len(mismatched) > 10 else [])
        raise ValueError("\n".join(lines))
    model.load_state_dict(state)
