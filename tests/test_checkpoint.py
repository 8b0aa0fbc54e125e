"""minivox.checkpoint: round trips (fp32 and fp16), weights_only loading, clear errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from minivox.checkpoint import load_checkpoint, load_state_dict, save_checkpoint


@dataclass
class TinyConfig:
    d_in: int = 4  # input width
    d_out: int = 3  # output width


def make_model(cfg: TinyConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(cfg.d_in, cfg.d_out), torch.nn.LayerNorm(cfg.d_out))


def test_round_trip_rebuilds_the_same_model(tmp_path):
    cfg = TinyConfig()
    model = make_model(cfg)
    path = save_checkpoint(tmp_path / "m.pt", "asr", cfg, model, tokenizer=b"\x00spm", meta={"step": 7})
    ckpt = load_checkpoint(path, kind="asr")
    assert ckpt["config"] == {"d_in": 4, "d_out": 3} and ckpt["tokenizer"] == b"\x00spm" and ckpt["meta"]["step"] == 7
    again = make_model(TinyConfig(**ckpt["config"]))
    torch.nn.init.zeros_(again[0].weight)
    load_state_dict(again, ckpt["model"])
    x = torch.randn(5, 4)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_fp16_storage_halves_and_loads_within_fp16_error(tmp_path):
    cfg = TinyConfig(d_in=256, d_out=256)
    model = make_model(cfg)
    full = save_checkpoint(tmp_path / "full.pt", "llm", cfg, model)
    half = save_checkpoint(tmp_path / "half.pt", "llm", cfg, model, fp16=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    ckpt = load_checkpoint(half, kind="llm")
    assert ckpt["model"]["0.weight"].dtype == torch.float16 and ckpt["meta"]["stored_dtype"] == "float16"
    full_meta = load_checkpoint(full, kind="llm")["meta"]  # exporting a training checkpoint's meta as fp16
    assert full_meta["stored_dtype"] == "as-trained"
    resaved = save_checkpoint(tmp_path / "resaved.pt", "llm", cfg, model, meta=full_meta, fp16=True)
    assert load_checkpoint(resaved, kind="llm")["meta"]["stored_dtype"] == "float16"
    again = make_model(cfg)
    load_state_dict(again, ckpt["model"])
    assert again[0].weight.dtype == torch.float32
    torch.testing.assert_close(again[0].weight, model[0].weight, rtol=1e-3, atol=1e-4)


def test_wrong_kind_missing_file_and_garbage(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", "hifigan", TinyConfig(), make_model(TinyConfig()))
    with pytest.raises(ValueError, match="holds a 'hifigan' checkpoint, but a 'asr' checkpoint was expected"):
        load_checkpoint(path, kind="asr")
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable minivox checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a minivox checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="kind must be one of"):
        save_checkpoint(tmp_path / "x.pt", "vae", TinyConfig(), make_model(TinyConfig()))


def test_unsafe_pickles_are_refused(tmp_path):
    """weights_only=True: a checkpoint that would run code on load is rejected, not executed."""
    torch.save({"kind": "asr", "config": {}, "model": {}, "tokenizer": None, "meta": {"x": TinyConfig()}},
               tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a readable minivox checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_shape_mismatch_is_listed(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", "asr", TinyConfig(), make_model(TinyConfig()))
    other = make_model(TinyConfig(d_in=5))
    with pytest.raises(ValueError, match=r"shape mismatch 0.weight: checkpoint \(3, 4\) vs model \(3, 5\)"):
        load_state_dict(other, load_checkpoint(path)["model"])
    state = load_checkpoint(path)["model"]
    del state["1.bias"]
    state["extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match="(?s)missing: 1.bias.*unexpected: extra"):
        load_state_dict(make_model(TinyConfig()), state)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", "asr", TinyConfig(), make_model(TinyConfig()), meta={"v": 1})

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, "asr", TinyConfig(), make_model(TinyConfig()), meta={"v": 2})
    assert load_checkpoint(path)["meta"]["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_saved_files_get_ordinary_permissions(tmp_path):
    """Atomic writes go through a private temp file; the result must still be readable like any file."""
    import os

    umask = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "m.pt", "asr", TinyConfig(), make_model(TinyConfig()))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
