"""train/asr.py and `minivox transcribe`: length buckets, SpecAugment, targets, a 2-process gloo
torchrun run, exact resume, the CLI against the Python API, and (slow) a tiny model trained by
the script that learns a few spoken utterances to WER 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minivox.asr import EOB, EOU, Transducer, load_model_config
from minivox.audio import resample, write_wav
from minivox.data.manifest import write_manifest
from minivox.text import Tokenizer
from minivox.train import asr as train_asr

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "asr_tiny.toml"
SR = 16000
SENTENCES = ["turn on the lights", "what time is it", "good morning to you", "play some music please",
             "how is the weather today", "set a timer for ten minutes", "call my sister", "open the door",
             "the quick brown fox jumps", "read me the news", "stop the music", "where are my keys"]


def tone_clip(seed: int, seconds: float) -> np.ndarray:
    """Stand-in speech for plumbing tests: a few tone bursts whose pitches depend on the seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    pitch = np.interp(t, np.linspace(0, seconds, 5), rng.uniform(150, 900, 5))
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    envelope = (np.sin(2 * np.pi * 3 * t + seed) > -0.3).astype(np.float32)
    return (0.3 * np.sin(phase) * envelope).astype(np.float32)


def tone_corpus(folder: Path) -> tuple[Path, Path]:
    """A train manifest of 12 tone clips (one labelled a backchannel) and a 3-row dev manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(SENTENCES + ["uh huh"]):
        seconds = 0.8 + 0.1 * (i % 7)
        write_wav(folder / f"u{i}.wav", tone_clip(i, seconds), SR)
        rows.append({"audio_filepath": f"u{i}.wav", "duration": seconds, "text": text, "backchannel": text == "uh huh"})
    write_manifest(folder / "train.jsonl", rows)
    write_manifest(folder / "dev.jsonl", rows[:3])
    return folder / "train.jsonl", folder / "dev.jsonl"


# ---------------------------------------------------------------------------------------
# Pieces of the recipe.
# ---------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(durations=st.lists(st.floats(0.1, 30.0), min_size=1, max_size=60), max_seconds=st.floats(5.0, 60.0),
       max_size=st.integers(1, 16))
def test_duration_batches_cover_every_utterance_within_the_budget(durations, max_seconds, max_size):
    batches = train_asr.duration_batches(durations, max_seconds, max_size)
    assert sorted(i for b in batches for i in b) == list(range(len(durations)))  # each index exactly once
    for b in batches:
        padded = len(b) * max(durations[i] for i in b)
        assert len(b) <= max_size and (padded <= max_seconds or len(b) == 1), (b, padded)
    longest = [max(durations[i] for i in b) for b in batches]
    shortest = [min(durations[i] for i in b) for b in batches]
    assert all(hi <= lo for hi, lo in zip(longest, shortest[1:]))  # buckets follow the sorted order


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), lengths=st.lists(st.integers(0, 60), min_size=1, max_size=4))
def test_spec_augment_masks_inside_lengths_with_the_row_mean(seed, lengths):
    torch.manual_seed(0)
    T = max(lengths) + 3
    feats = torch.randn(len(lengths), 20, T)
    lengths = torch.tensor(lengths)
    cfg = train_asr.SpecAugmentConfig(freq_masks=2, freq_width=6, time_masks=3, time_width=0.2)
    out = train_asr.spec_augment(feats, lengths, cfg, np.random.default_rng(seed))
    again = train_asr.spec_augment(feats, lengths, cfg, np.random.default_rng(seed))
    assert torch.equal(out, again)  # the draws come from the generator only
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(out[b, :, n:], feats[b, :, n:])  # padding untouched
        changed = out[b, :, :n] != feats[b, :, :n]
        if n:
            assert torch.all(out[b, :, :n][changed] == feats[b, :, :n].mean())
        # Masked cells form whole mel bands (rows) or whole time spans (columns).
        full_rows, full_cols = changed.all(dim=1), changed.all(dim=0)
        assert torch.equal(changed, full_rows[:, None] | full_cols[None, :])
        assert int(full_cols.sum()) <= cfg.time_masks * int(cfg.time_width * n)
        assert n == 0 or int(full_rows.sum()) <= cfg.freq_masks * cfg.freq_width


@pytest.mark.parametrize("alpha", [0.88, 0.95, 1.05, 1.12])
def test_vtlp_moves_a_tone_as_a_tone_of_alpha_times_its_frequency(alpha):
    """Vocal tract length perturbation: warp 1 is the identity; with warp alpha, a 1 kHz tone's
    features peak where an alpha kHz tone's do, and the warped filterbank applies row by row."""
    from minivox.audio import LogMel

    logmel = LogMel()
    fb = logmel.filterbank
    assert torch.allclose(train_asr.vtlp_filterbank(fb, 1.0), fb)
    t = torch.arange(16000) / 16000
    tone = lambda hz: torch.sin(2 * np.pi * hz * t)[None]  # noqa: E731
    peak = lambda feats: int(feats[0].mean(1).argmax())  # noqa: E731
    warped, _ = logmel(tone(1000), filterbank=train_asr.vtlp_filterbank(fb, alpha)[None])
    moved, _ = logmel(tone(1000 * alpha))
    assert abs(peak(warped) - peak(moved)) <= 1 and peak(warped) != peak(logmel(tone(1000))[0])
    both = torch.cat([tone(1000), tone(1000)])
    rows, _ = logmel(both, filterbank=torch.stack([fb, train_asr.vtlp_filterbank(fb, alpha)]))
    assert torch.equal(rows[0], logmel(tone(1000))[0][0]) and torch.allclose(rows[1], warped[0])
    with pytest.raises(ValueError, match="filterbank per row"):
        logmel(both, filterbank=fb[None])


def test_transcripts_end_in_eou_or_eob_for_backchannels():
    assert train_asr.transcript({"text": "turn it off"}) == "turn it off" + EOU
    assert train_asr.transcript({"text": "uh huh", "backchannel": True}) == "uh huh" + EOB
    assert train_asr.transcript({"text": "uh huh", "backchannel": True}, eob_backchannels=False) == "uh huh" + EOU
    tok = Tokenizer.train([train_asr.transcript({"text": s}) for s in SENTENCES * 3] + ["uh huh" + EOB], 40)
    ids = tok.encode(train_asr.transcript({"text": "uh huh", "backchannel": True}))
    assert ids[-1] == tok.piece_to_id(EOB) and tok.decode(ids[:-1]) == "uh huh"


def test_training_logits_after_an_end_symbol_read_the_restarted_state():
    """Decoding restarts the prediction net after <EOU>/<EOB>; Transducer.forward trains exactly that:
    for a target ending in one, the last prefix's logits are joint(frame, start-symbol output), and
    every other prefix is the stepwise prediction net's."""
    tok = Tokenizer.train([s + EOU for s in SENTENCES * 3] + ["uh huh" + EOB], 40)
    cfg = load_model_config(TINY, [f"tokenizer.vocab_size={tok.vocab_size}", "decoder.dropout=0.0",
                                   "joint.dropout=0.0", "encoder.dropout=0.0", "encoder.dropout_att=0.0",
                                   "encoder.dropout_pre_encoder=0.0"])
    torch.manual_seed(0)
    model = Transducer(cfg, tok).eval()
    eou, eob = tok.piece_to_id(EOU), tok.piece_to_id(EOB)
    targets = torch.tensor([[5, 9, eou, 0], [7, 3, 11, 6], [8, eob, 0, 0]])
    lengths = torch.tensor([3, 4, 2])
    feats = torch.randn(3, 80, 40)
    with torch.no_grad():
        logits, _ = model(feats, torch.full((3,), 40), targets, lengths)
        enc, _ = model.encoder(feats, torch.full((3,), 40))
        f = model.joint.project_encoder(enc)  # [B, T, J]
        for b in range(3):
            state = model.decoder.initial_state(1)
            start, state = model.decoder.step(torch.tensor([model.blank_id]), state)
            out = start
            for u in range(int(lengths[b]) + 1):
                restarted = u == lengths[b] and int(targets[b, u - 1]) in (eou, eob)
                g = model.joint.project_prednet(start if restarted else out)  # [1, J]
                torch.testing.assert_close(logits[b, :, u], model.joint.joint_after_projection(f[b], g),
                                           atol=1e-5, rtol=1e-5)
                if u < lengths[b]:
                    out, state = model.decoder.step(targets[b, u:u + 1], state)


def test_presets_hold_valid_train_and_data_tables():
    from minivox.config import load_config
    for name in ("asr_tiny", "asr_demo", "asr_base"):
        cfg = load_config(train_asr.ASRTrainingConfig, ROOT / "configs" / f"{name}.toml")
        assert cfg.model == load_model_config(ROOT / "configs" / f"{name}.toml")  # the model loader agrees
        assert cfg.train.warmup_steps < cfg.train.max_steps
    with pytest.raises(ValueError, match="unknown config key 'train.lrr'"):
        load_config(train_asr.ASRTrainingConfig, TINY, ["train.lrr=1"])


# ---------------------------------------------------------------------------------------
# The script: DDP over gloo, exact resume.
# ---------------------------------------------------------------------------------------


def test_torchrun_two_processes_gloo(tmp_path):
    """`torchrun --nproc_per_node=2` on asr_tiny: DDP keeps both ranks' weights equal, the loss is
    logged for every step (2 CTC-only steps, then RNN-T + CTC), and the inference checkpoint loads
    and transcribes."""
    train, dev = tone_corpus(tmp_path / "data")
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "minivox.train.asr", "--config", str(TINY),
           "--out", str(out), f"data.train_manifest={train}", f"data.dev_manifest={dev}", "model.tokenizer.vocab_size=40",
           "train.ctc_only_steps=2", "train.log_every=1"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[0]["world_size"] == 2
    assert [r["step"] for r in log if r["event"] == "train"] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in log if r["event"] == "train")
    assert [("rnnt_loss" in r, "ctc_loss" in r) for r in log if r["event"] == "train"] == \
        [(False, True)] * 2 + [(True, True)] * 2
    assert [r["step"] for r in log if r["event"] == "eval"] == [4] and log[-1]["event"] == "end"
    rank0 = torch.load(out / "state.pt", weights_only=False)
    rank1 = torch.load(out / "state.pt.rank1", weights_only=False)
    assert rank0["step"] == rank1["step"] == 4
    for name, value in rank0["model"].items():
        assert torch.equal(value, rank1["model"][name]), name
    assert not torch.equal(rank0["rng"]["torch"], rank1["rng"]["torch"])  # each rank its own dropout stream
    model = Transducer.from_checkpoint(out / "last.pt")
    assert model.meta["step"] == 4 and model.tokenizer == Tokenizer.load(out / "tokenizer.model")
    for name, value in model.state_dict().items():
        assert torch.equal(value, rank0["model"][name]), name
    assert isinstance(model.transcribe(tone_clip(0, 1.0))[0].text, str)


def run_script(out: Path, train: Path, dev: Path, *extra: str, resume: Path | None = None,
               init_from: Path | None = None) -> None:
    """`python -m minivox.train.asr` on asr_tiny for 6 steps (a fresh process, as a resumed run is)."""
    cmd = [sys.executable, "-m", "minivox.train.asr", "--config", str(TINY), "--out", str(out)]
    cmd += ["--resume", str(resume)] if resume else []
    cmd += ["--init-from", str(init_from)] if init_from else []
    cmd += [f"data.train_manifest={train}", f"data.dev_manifest={dev}", "model.tokenizer.vocab_size=40",
            "train.max_steps=6", "train.eval_every=2", "train.checkpoint_every=100", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])


def test_resume_is_exact(tmp_path):
    """6 steps straight == 3 steps, then --resume in a new process, 3 steps: the same weights and
    AdamW moments, bit for bit (speed perturbation, VTLP, SpecAugment, dropout and the evaluations
    in between included)."""
    train, dev = tone_corpus(tmp_path / "data")
    vtlp = "data.vtlp=[0.9, 1.1]"
    run_script(tmp_path / "straight", train, dev, vtlp)
    run_script(tmp_path / "split", train, dev, vtlp, "train.run_steps=3")
    assert torch.load(tmp_path / "split" / "state.pt", weights_only=False)["step"] == 3
    run_script(tmp_path / "split", train, dev, vtlp, resume=tmp_path / "split" / "state.pt")
    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "state.pt", weights_only=False)
    assert a["step"] == b["step"] == 6 and a["batches"] == b["batches"]
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for key, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][key][name]), (key, name)
    losses = [[r["loss"] for r in map(json.loads, (tmp_path / d / "log.jsonl").read_text().splitlines())
               if r["event"] == "train"] for d in ("straight", "split")]
    assert losses[0] == losses[1]
    with pytest.raises(ValueError, match="cannot resume .* another \\[model\\] config"):
        main_in_process(tmp_path / "split", train, dev, "--resume", str(tmp_path / "split" / "state.pt"),
                        "model.joint.dropout=0.3")


def main_in_process(out: Path, train: Path, dev: Path, *argv: str) -> int:
    """`train_asr.main` on asr_tiny in this process (torch's thread count restored after)."""
    threads = torch.get_num_threads()
    try:
        return train_asr.main(["--config", str(TINY), "--out", str(out), *argv, f"data.train_manifest={train}",
                               f"data.dev_manifest={dev}", "model.tokenizer.vocab_size=40"])
    finally:
        torch.set_num_threads(threads)


def test_init_from_fine_tunes_a_checkpoint_with_another_look_ahead(tmp_path):
    """--init-from starts from the checkpoint's weights (input normalisation included) and
    tokenizer: with lr 0 they come out unchanged. Multi-look-ahead draws are seeded by step (the
    same on every rank and after a resume), use every context, and leave the default in place
    between steps; a checkpoint of another architecture, or --resume beside it, is refused."""
    train, dev = tone_corpus(tmp_path / "data")
    run_script(tmp_path / "base", train, dev)
    source = Transducer.from_checkpoint(tmp_path / "base" / "last.pt")
    run_script(tmp_path / "ft", train, dev, "train.lr=0", "train.ctc_only_steps=0",
               "model.encoder.train_att_contexts=[[4, 0]]", init_from=tmp_path / "base" / "last.pt")
    tuned = Transducer.from_checkpoint(tmp_path / "ft" / "last.pt")
    assert Tokenizer.load(tmp_path / "ft" / "tokenizer.model") == source.tokenizer == tuned.tokenizer
    for name, value in source.state_dict().items():
        assert torch.equal(value, tuned.state_dict()[name]), name
    assert tuned.cfg.encoder.att_context_size == (4, 1) and tuned.cfg.encoder.train_att_contexts == [(4, 0)]
    start = json.loads((tmp_path / "ft" / "log.jsonl").read_text().splitlines()[0])
    assert start["init_from"] == str(tmp_path / "base" / "last.pt")

    draws = [train_asr.draw_att_context(tuned.cfg.encoder, 0, step) for step in range(40)]
    assert set(draws) == {(4, 1), (4, 0)} and 10 <= draws.count((4, 0)) <= 30
    assert draws == [train_asr.draw_att_context(tuned.cfg.encoder, 0, step) for step in range(40)]
    with pytest.raises(RuntimeError):
        with train_asr.att_context(tuned, (4, 0)):
            assert tuned.encoder.cfg.att_context_size == (4, 0)
            raise RuntimeError("the step failed")
    assert tuned.encoder.cfg.att_context_size == (4, 1)

    with pytest.raises(ValueError, match="cannot fine-tune .* differs .* encoder"):
        main_in_process(tmp_path / "bad", train, dev, "--init-from", str(tmp_path / "base" / "last.pt"),
                        "model.encoder.n_layers=1")
    with pytest.raises(SystemExit):
        train_asr.main(["--init-from", "a.pt", "--resume", "b/state.pt"])


# ---------------------------------------------------------------------------------------
# `minivox transcribe`.
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def talking_checkpoint(tmp_path_factory) -> Path:
    """A random asr_tiny model whose blank bias is set so that it emits tokens on about a third
    of the frames (a random model emits almost always or never), saved with its tokenizer."""
    tok = Tokenizer.train([s + EOU for s in SENTENCES * 4], vocab_size=40)
    cfg = load_model_config(TINY, [f"tokenizer.vocab_size={tok.vocab_size}"])
    torch.manual_seed(0)
    model = Transducer(cfg, tok).eval()
    with torch.no_grad():
        model.joint.enc.weight.mul_(4.0)  # outputs follow the audio
        enc, _ = model.encode_audio(tone_clip(5, 4.0))
        out, _ = model.decoder.step(torch.tensor([model.blank_id]), model.decoder.initial_state(1))
        logits = model.joint(enc, out[:, None])[0, :, 0]  # [T, V + 1]
        margin = logits[:, model.blank_id] - logits[:, :model.blank_id].max(-1).values
        model.joint.joint_net[2].bias[model.blank_id] -= torch.quantile(margin, 0.35)
    return model.save(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`minivox transcribe ...` through the parser the integrator wires (register + func) -> (status, out, err)."""
    import argparse

    from minivox import transcribe

    parser = argparse.ArgumentParser(prog="minivox")
    transcribe.register(parser.add_subparsers())
    args = parser.parse_args(["transcribe", *argv])
    threads = torch.get_num_threads()
    try:
        status = args.func(args)
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    return status, out, err


def test_transcribe_cli_equals_the_python_api(tmp_path, talking_checkpoint, capsys):
    """16 kHz mono and 44.1 kHz stereo files: the CLI's text, words and events are Transducer.transcribe's
    on the downmixed, resampled audio; --streaming gives the same text; a bad file is one error line."""
    model = Transducer.from_checkpoint(talking_checkpoint)
    mono = tone_clip(1, 2.5)
    stereo = np.stack([tone_clip(2, 2.0), 0.5 * tone_clip(3, 2.0)], axis=1)
    stereo_44k = resample(stereo.T, SR, 44100).T.astype(np.float32)  # [S, 2]
    write_wav(tmp_path / "mono.wav", mono, SR)
    write_wav(tmp_path / "stereo.wav", stereo_44k, 44100, encoding="float32")
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    expected_stereo = resample(np.clip(stereo_44k.mean(axis=1), -1, 1), 44100, SR).astype(np.float32)
    want = [model.transcribe(mono)[0], model.transcribe(np.clip(expected_stereo, -1, 1))[0]]
    assert any(h.text for h in want)  # the model talks, so equal texts mean something

    status, out, err = cli(capsys, str(tmp_path / "mono.wav"), str(tmp_path / "broken.wav"),
                           str(tmp_path / "stereo.wav"), "--checkpoint", str(talking_checkpoint), "--json")
    assert status == 1
    errors = err.strip().splitlines()
    assert len(errors) == 1 and "broken.wav" in errors[0], err
    got = [json.loads(line) for line in out.splitlines()]
    assert [g["file"] for g in got] == [str(tmp_path / "mono.wav"), str(tmp_path / "stereo.wav")]
    for g, h in zip(got, want):
        assert g["text"] == h.text
        assert [w["word"] for w in g["words"]] == h.text.split()
        assert [w["start"] for w in g["words"]] == [round(w.start, 3) for w in h.words]
        eou_frames = [t for y, t in zip(h.y_sequence, h.timestamps) if y == model.tokenizer.piece_to_id(EOU)]
        assert [e["time"] for e in g["events"] if e["type"] == "eou"] == \
            [round((t + 1) * model.cfg.frame_seconds, 3) for t in eou_frames]
    assert got[0]["duration"] == 2.5

    status, out, err = cli(capsys, str(tmp_path / "mono.wav"), "--checkpoint", str(talking_checkpoint),
                           "--streaming", "--json")
    assert status == 0, err
    s = json.loads(out)
    assert s["text"].split() == want[0].text.split() and s["words"] == got[0]["words"]
    assert s["utterances"] and all(u["end"] <= 2.5 + 1e-9 for u in s["utterances"])

    status, out, _ = cli(capsys, str(tmp_path / "mono.wav"), "--checkpoint", str(talking_checkpoint), "--beam", "3")
    assert status == 0 and out.strip() == model.transcribe(mono, beam_size=3)[0].text

    # --att-context: the text of the model switched to that context (asr_tiny: [4, 1] -> [4, 0]).
    model.set_att_context((4, 0))
    status, out, _ = cli(capsys, str(tmp_path / "mono.wav"), "--checkpoint", str(talking_checkpoint),
                         "--streaming", "--att-context", "4,0")
    assert status == 0 and out.strip() == model.transcribe(mono)[0].text
    for bad in ("4", "4,x", "4,-1"):
        status, _, err = cli(capsys, str(tmp_path / "mono.wav"), "--checkpoint", str(talking_checkpoint),
                             "--att-context", bad)
        assert status == 2 and "--att-context takes LEFT,RIGHT" in err and err.count("\n") == 1


def test_transcribe_cli_errors(tmp_path, talking_checkpoint, monkeypatch, capsys):
    from minivox import transcribe

    parser = __import__("argparse").ArgumentParser()
    transcribe.register(parser.add_subparsers())
    monkeypatch.setattr(transcribe, "DEMO_CHECKPOINT", tmp_path / "nothing.pt")
    args = parser.parse_args(["transcribe", "x.wav"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "nothing.pt is missing" in err and "-m minivox.train.asr --config configs/asr_demo.toml" in err
    args = parser.parse_args(["transcribe", "x.wav", "--checkpoint", str(talking_checkpoint), "--streaming",
                              "--beam", "2"])
    assert args.func(args) == 2 and "streaming transcriber is greedy" in capsys.readouterr().err
    args = parser.parse_args(["transcribe", str(tmp_path / "missing.wav"), "--checkpoint", str(talking_checkpoint)])
    assert args.func(args) == 1 and "missing.wav: no such file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Slow: the script learns real (synthesised) speech.
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_model_trained_by_the_script_overfits_spoken_utterances(tmp_path):
    """Four espeak-ng sentences, the real recipe (tokenizer, buckets, CTC-only steps then RNN-T + CTC,
    AdamW) with augmentation and dropout off: after training the greedy transcripts are exact (WER 0) and
    end in <EOU>, offline and streaming."""
    from minivox.asr import StreamingTranscriber
    from minivox.data import voices
    from minivox.metrics import word_error_rate

    texts = SENTENCES[:4]
    voice = voices.catalogue_voice("espeak-ng:en-us")
    rows = []
    for i, text in enumerate(texts):
        audio, rate = voices.synthesize(voice, text)
        audio = resample(np.asarray(audio, dtype=np.float32), rate, SR)
        audio = np.concatenate([np.zeros(SR // 5, np.float32), audio, np.zeros(SR // 2, np.float32)])
        write_wav(tmp_path / f"s{i}.wav", audio, SR)
        rows.append({"audio_filepath": f"s{i}.wav", "duration": len(audio) / SR, "text": text})
    write_manifest(tmp_path / "train.jsonl", rows)
    off = ["data.speed_factors=[1.0]", "train.spec_augment.freq_masks=0", "train.spec_augment.time_masks=0",
           "train.fastemit_lambda=0.0"] + [f"model.{k}=0.0" for k in (
               "encoder.dropout", "encoder.dropout_att", "encoder.dropout_pre_encoder", "decoder.dropout",
               "joint.dropout")]
    argv = [sys.executable, "-m", "minivox.train.asr", "--config", str(TINY), "--out", str(tmp_path / "run"),
            f"data.train_manifest={tmp_path / 'train.jsonl'}", f"data.dev_manifest={tmp_path / 'train.jsonl'}",
            "data.max_batch_seconds=60", "model.tokenizer.vocab_size=24", "train.max_steps=1000",
            "train.ctc_only_steps=500",  # without the CTC-only half the first word stayed wrong (WER 0.125-0.75)
            "train.warmup_steps=50", "train.lr=5e-3", "train.eval_every=100", "train.log_every=50",
            "train.checkpoint_every=1000", *off]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = Transducer.from_checkpoint(tmp_path / "run" / "last.pt")
    audio = [train_asr.load_audio(str(tmp_path / r["audio_filepath"]), SR) for r in rows]
    hyps = model.transcribe(audio)
    assert word_error_rate(texts, [h.text for h in hyps]).rate == 0.0, [h.text for h in hyps]
    eou = model.tokenizer.piece_to_id(EOU)
    assert all(h.y_sequence[-1] == eou for h in hyps)
    transcriber = StreamingTranscriber(model)
    for text, clip in zip(texts, audio):
        results = [r for start in range(0, len(clip), 1280) for r in transcriber.step(clip[start:start + 1280])]
        results += transcriber.flush()
        assert "".join(r.text for r in results).strip() == text
        assert any(r.is_final and r.eou_latency is not None for r in results)


def test_feature_stats_normalise_training_features():
    """set_feature_stats: the encoder's input normalisation maps the sampled features to zero
    mean and unit variance per mel bin (checked against numpy over the same valid frames)."""
    from minivox.conformer import ConformerConfig, ConformerEncoder

    torch.manual_seed(0)
    encoder = ConformerEncoder(ConformerConfig(n_layers=1, d_model=16, n_heads=2, conv_kernel_size=3,
                                               att_context_size=(4, 1)))
    feats = torch.randn(3, 80, 50) * torch.linspace(1, 5, 80)[:, None] - 7
    lengths = torch.tensor([50, 31, 12])
    encoder.set_feature_stats(feats, lengths)
    frames = np.concatenate([feats[b, :, :n].numpy().T for b, n in enumerate(lengths.tolist())])  # [N, M]
    normalised = (frames - frames.mean(0)) / frames.std(0, ddof=1)
    got = encoder.normalize(feats)
    got = np.concatenate([got[b, :, :n].numpy().T for b, n in enumerate(lengths.tolist())])
    np.testing.assert_allclose(got, normalised, atol=1e-4)


def _ctc_by_enumeration(log_probs: torch.Tensor, target: list[int], blank: int) -> torch.Tensor:
    """-log sum over every frame labelling [T] that collapses (merge repeats, drop blanks) to target."""
    import itertools

    T, C = log_probs.shape
    total = []
    for path in itertools.product(range(C), repeat=T):
        collapsed = [c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])]
        if collapsed == target:
            total.append(sum(log_probs[t, c] for t, c in enumerate(path)))
    return -torch.logsumexp(torch.stack(total), 0)


def tiny_model_with_ctc_head() -> Transducer:
    """asr_tiny with a CTC head, dropout off, seeded."""
    tok = Tokenizer.train([s + EOU for s in SENTENCES * 3], 40)
    cfg = load_model_config(TINY, ["tokenizer.vocab_size=40", "ctc_head=true", "decoder.dropout=0.0",
                                   "joint.dropout=0.0", "encoder.dropout=0.0", "encoder.dropout_att=0.0",
                                   "encoder.dropout_pre_encoder=0.0"])
    torch.manual_seed(0)
    return Transducer(cfg, tok).eval()


def test_training_loss_is_rnnt_plus_weighted_ctc_by_enumeration():
    """training_loss = RNN-T (mean over the batch) + ctc_weight x CTC of the encoder head, the CTC term
    checked against brute-force enumeration of frame labellings (tiny T and vocabulary)."""
    from minivox.kernels import rnnt_loss_reference

    model = tiny_model_with_ctc_head()
    feats, feat_lengths = torch.randn(2, 80, 25), torch.tensor([25, 17])  # -> 4 and 3 encoder frames
    targets, target_lengths = torch.tensor([[1, 2], [2, 0]]), torch.tensor([2, 1])
    batch = train_asr.Batch(feats, feat_lengths, targets, target_lengths, 1.0)
    tc = train_asr.TrainConfig(ctc_weight=0.3, fastemit_lambda=0.0)
    loss, parts = train_asr.training_loss(model, batch, tc)
    with torch.no_grad():
        logits, enc_lengths, ctc_lp = model(feats, feat_lengths, targets, target_lengths, with_ctc=True)
        rnnt = rnnt_loss_reference(logits.double(), targets, enc_lengths, target_lengths)
        blank = ctc_lp.shape[-1] - 1
        ctc = []
        for b in range(2):
            n = int(enc_lengths[b])
            # Enumerate over {1, 2, blank} only: paths through other classes cannot collapse to the target.
            sub = ctc_lp[b, :n][:, [0, 1, 2, blank]].double()  # class 3 here = blank
            target = [int(t) for t in targets[b, :target_lengths[b]]]
            ctc.append(_ctc_by_enumeration(sub, target, blank=3))
    assert enc_lengths.tolist() == [4, 3]
    torch.testing.assert_close(parts["ctc"], float(torch.stack(ctc).mean()), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts["rnnt"], float(rnnt), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss.item(), float(rnnt) + 0.3 * float(torch.stack(ctc).mean()), rtol=1e-5, atol=1e-4)
    # The CTC term reaches the subsampling convolutions (the path the RNN-T-only runs starved).
    loss.backward()
    assert float(model.encoder.pre_encode.conv[0].weight.grad.abs().sum()) > 0
    assert float(model.ctc_decoder.weight.grad.abs().sum()) > 0


def test_ctc_only_steps_train_the_encoder_alone():
    """Before ctc_only_steps the loss is the CTC head's alone (the value the RNN-T + CTC step logs as
    its CTC part) and neither the prediction net nor the joint gets a gradient; from then on both terms."""
    model = tiny_model_with_ctc_head()
    batch = train_asr.Batch(torch.randn(2, 80, 25), torch.tensor([25, 17]), torch.tensor([[1, 2], [2, 0]]),
                            torch.tensor([2, 1]), 1.0)
    tc = train_asr.TrainConfig(ctc_weight=0.3, ctc_only_steps=5, fastemit_lambda=0.0)
    loss, parts = train_asr.training_loss(model, batch, tc, step=4)
    both_loss, both = train_asr.training_loss(model, batch, tc, step=5)
    assert set(parts) == {"ctc"} and set(both) == {"rnnt", "ctc"}
    torch.testing.assert_close(loss.item(), both["ctc"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(both_loss.item(), both["rnnt"] + 0.3 * both["ctc"], rtol=1e-5, atol=1e-4)
    loss.backward()
    assert float(model.encoder.pre_encode.conv[0].weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in [*model.decoder.parameters(), *model.joint.parameters()])


def test_ctc_weight_needs_a_ctc_head():
    cfg = train_asr.ASRTrainingConfig()
    cfg.train.ctc_weight = 0.3
    cfg.model.ctc_head = False
    with pytest.raises(ValueError, match="ctc_weight must be 0, or > 0 with model.ctc_head = true"):
        train_asr.train(cfg, None, None, Path("/nonexistent"), None)
