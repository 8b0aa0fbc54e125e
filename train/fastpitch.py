"""Train FastPitch with its learned aligner (`minivox.fastpitch.FastPitch`) with torchrun.

Usage (from the repository root, after `pip install -e .`):

    # The bundled demo voice on the joe corpus (minivox data synth --config configs/data_tts.toml),
    # in the background on a shared CPU:
    nohup nice -n 10 torchrun --standalone --nproc_per_node=1 -m minivox.train.fastpitch \\
        --config configs/fastpitch_demo.toml --out runs/fastpitch_demo > runs/fastpitch_demo.out 2>&1 &

    # Continue exactly where it stopped (SIGINT/SIGTERM save first; so does every checkpoint_every steps):
    torchrun --standalone --nproc_per_node=1 -m minivox.train.fastpitch --config configs/fastpitch_demo.toml \\
        --out runs/fastpitch_demo --resume runs/fastpitch_demo/state.pt

    # CPU DDP over gloo, GPUs over nccl (one process per GPU):
    torchrun --standalone --nproc_per_node=2 -m minivox.train.fastpitch --config configs/fastpitch_tiny.toml \\
        data.train_manifest=my/train.jsonl data.dev_manifest=my/dev.jsonl
    torchrun --standalone --nproc_per_node=8 -m minivox.train.fastpitch --config configs/fastpitch_base.toml

    # Then: minivox synthesize "Hello there." -o hello.wav --checkpoint runs/fastpitch_demo/last.pt

A preset holds three tables: [model] (minivox.fastpitch.FastPitchConfig), [train] (TrainConfig
below, with [train.loss] = FastPitchLossWeights) and [data] (DataConfig). `key=value` arguments
override any field (`train.lr=1e-3`, `model.d_model=256`).

The run folder (--out) gets:
    features_train.pt, features_dev.pt  log-mels (float16), F0 tracks and symbol ids of every
                      utterance, computed once at the start (minutes for hours of audio)
    state.pt          everything --resume needs (model, AdamW, LR schedule, step, batch order, RNG)
    last.pt           inference checkpoint (FastPitch.save) at the last save
    samples/          at each evaluation: dev sentences synthesised with the predicted durations and
                      pitch, as WAV through `train.vocoder` (a HiFi-GAN checkpoint) when it exists,
                      else as log-mel tensors (.pt)
    log.jsonl         one JSON line per log/eval event (each loss, lr, grad norm, frames per second)

Recipe: length-bucketed batches (utterances sorted by frames, at most `max_batch_frames` padded
frames each); AdamW, linear warm-up then cosine decay, gradient clipping; losses as in NeMo's
FastPitch (mel MSE + 0.1 duration + 0.1 pitch + forward-sum), plus the binarisation loss after
`binarization_start_step` (Badlani et al. 2021: the soft alignment must settle first).
Pitch is normalised by the training set's voiced-frame mean and std, stored in the model config.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist

from minivox.audio import TTS_FEATURES, LogMel, read_wav, resample, write_wav
from minivox.config import load_config
from minivox.data.manifest import read_manifest
from minivox.fastpitch import FastPitch, FastPitchConfig, FastPitchLossWeights, fastpitch_losses
from minivox.normalize import normalize_text
from minivox.pitch import TTS_PITCH, estimate_pitch
from minivox.text import tts_symbol_ids
from minivox.train.common import (GracefulStop, JSONLLogger, ResumableBatches, all_reduce_mean, cleanup_distributed,
                                  init_distributed, load_training_state, make_scheduler, parse_train_args, run_main,
                                  save_training_state, seed_everything)

# ---------------------------------------------------------------------------------------
# Config: the [train] and [data] tables of configs/fastpitch_*.toml ([model] is FastPitchConfig).
# ---------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Optimisation, schedule and bookkeeping."""

    seed: int = 0  # model init, batch order
    max_steps: int = 100000  # optimizer steps in all; the LR schedule ends here
    run_steps: int = 0  # stop this invocation after this many steps (0: run to max_steps); --resume continues
    lr: float = 1e-3  # peak AdamW learning rate (NeMo's FastPitch: 1e-3)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas (NeMo's FastPitch)
    weight_decay: float = 1e-6  # AdamW weight decay (NeMo's FastPitch)
    warmup_steps: int = 1000  # linear warm-up from lr / warmup_steps
    min_lr_ratio: float = 0.05  # cosine decay ends at lr * min_lr_ratio
    grad_clip: float = 1000.0  # max global gradient norm (NeMo's FastPitch: 1000, i.e. only against blow-ups)
    log_every: int = 25  # steps between train lines in log.jsonl
    eval_every: int = 2000  # steps between dev evaluations + audio samples (also at the end); 0 = only at the end
    checkpoint_every: int = 250  # steps between state.pt / last.pt saves (also at exit)
    threads: int = 0  # torch intra-op threads per process (0: torch's default / OMP_NUM_THREADS)
    device: str = "auto"  # "auto" (CUDA when available), "cpu" or "cuda"
    vocoder: str = ""  # HiFi-GAN checkpoint for the audio samples at evaluation ("" or missing: mels only)
    loss: FastPitchLossWeights = field(default_factory=FastPitchLossWeights)


@dataclass
class DataConfig:
    """Manifests and batching."""

    train_manifest: str = "data/tts/train.jsonl"  # NeMo-style JSONL of one voice: audio_filepath, duration, text
    dev_manifest: str = "data/tts/dev.jsonl"
    min_duration: float = 0.3  # s; shorter rows are skipped
    max_duration: float = 15.0  # s; longer rows are skipped
    max_batch_frames: int = 6000  # padded mel frames per batch and rank (longest x count)
    max_batch_size: int = 32  # utterances per batch at most
    dev_utterances: int = 64  # dev rows scored at each evaluation (0 = all)
    samples: int = 3  # dev sentences synthesised at each evaluation


@dataclass
class FastPitchTrainingConfig:
    """A whole preset: configs/fastpitch_*.toml."""

    model: FastPitchConfig = field(default_factory=FastPitchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)


# ---------------------------------------------------------------------------------------
# Data: features computed once, length buckets, batches
# ---------------------------------------------------------------------------------------


def compute_features(rows: list[dict]) -> dict[str, list]:
    """Symbol ids, log-mel (float16 [n_mels, M]) and F0 (float32 [M], Hz, 0 unvoiced) of every row."""
    from tqdm import tqdm

    logmel = LogMel(TTS_FEATURES)
    out: dict[str, list] = {"text": [], "mel": [], "pitch": []}
    for row in tqdm(rows, desc="features", mininterval=5.0):
        audio, rate = read_wav(row["audio_filepath"], mono=True)
        if rate != TTS_FEATURES.sample_rate:
            audio = resample(audio, rate, TTS_FEATURES.sample_rate)
        audio = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        mel, _ = logmel(audio[None])  # [1, n_mels, M]
        f0, _ = estimate_pitch(audio, TTS_PITCH)  # [M]
        out["text"].append(torch.tensor(tts_symbol_ids(normalize_text(row["text"])), dtype=torch.int16))
        out["mel"].append(mel[0].half())
        out["pitch"].append(f0)
    return out


def load_or_compute_features(rows: list[dict], path: Path, dist) -> dict[str, list]:
    """The features of `rows`, cached at `path` (rank 0 computes; a cache of other rows is recomputed)."""
    key = hashlib.sha256(json.dumps([[r["audio_filepath"], r["text"]] for r in rows]).encode()).hexdigest()
    key += f"|{asdict(TTS_FEATURES)}|{asdict(TTS_PITCH)}"
    if dist.is_main:
        cached = torch.load(path, weights_only=True) if path.is_file() else None
        if cached is None or cached.get("key") != key:
            features = compute_features(rows)
            torch.save({"key": key, **features}, path)
    if dist.world_size > 1:
        torch_dist.barrier()
    cached = torch.load(path, weights_only=True)
    return {name: cached[name] for name in ("text", "mel", "pitch")}


def length_batches(lengths: list[int], max_frames: int, max_size: int) -> list[list[int]]:
    """Indices sorted by length and cut so that (count x longest) <= max_frames and count <= max_size."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, current = [], []
    for i in order:
        if current and ((len(current) + 1) * lengths[i] > max_frames or len(current) == max_size):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@dataclass
class Batch:
    text: torch.Tensor  # [B, N] symbol ids, TTS_PAD_ID-padded
    text_lens: torch.Tensor  # [B]
    mels: torch.Tensor  # [B, n_mels, M] log-mel, 0-padded
    mel_lens: torch.Tensor  # [B]
    pitch: torch.Tensor  # [B, M] Hz, 0 unvoiced / padding


def make_batch(features: dict[str, list], indices: list[int], device: torch.device) -> Batch:
    """Pad the utterances `indices` into one batch."""
    texts = [features["text"][i].long() for i in indices]
    mels = [features["mel"][i].float() for i in indices]
    text_lens = torch.tensor([len(t) for t in texts])
    mel_lens = torch.tensor([m.shape[1] for m in mels])
    B, N, M = len(indices), int(text_lens.max()), int(mel_lens.max())
    text = torch.zeros(B, N, dtype=torch.long)
    mel = torch.zeros(B, mels[0].shape[0], M)
    pitch = torch.zeros(B, M)
    for b, i in enumerate(indices):
        text[b, :text_lens[b]] = texts[b]
        mel[b, :, :mel_lens[b]] = mels[b]
        pitch[b, :mel_lens[b]] = features["pitch"][i]
    return Batch(text.to(device), text_lens.to(device), mel.to(device), mel_lens.to(device), pitch.to(device))


def pitch_statistics(pitches: list[torch.Tensor]) -> tuple[float, float]:
    """Mean and std (Hz) of the voiced frames of every F0 track."""
    voiced = torch.cat([p[p > 0] for p in pitches]).double()
    return float(voiced.mean()), float(voiced.std())


# ---------------------------------------------------------------------------------------
# The script
# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_train_args(__doc__, "configs/fastpitch_demo.toml", argv)
    cfg = load_config(FastPitchTrainingConfig, args.config, args.overrides)
    dist = init_distributed(cfg.train.device)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    out = Path(args.out)
    log = JSONLLogger(out / "log.jsonl", enabled=dist.is_main)
    try:
        return train(cfg, args, dist, out, log)
    finally:
        cleanup_distributed()


def train(cfg: FastPitchTrainingConfig, args, dist, out: Path, log: JSONLLogger) -> int:
    from tqdm import tqdm

    tc, dc = cfg.train, cfg.data
    out.mkdir(parents=True, exist_ok=True)

    # ---- data
    def usable(manifest: str) -> list[dict]:
        return [r for r in read_manifest(manifest) if dc.min_duration <= r["duration"] <= dc.max_duration]

    rows = usable(dc.train_manifest)
    if not rows:
        raise ValueError(f"no training rows in {dc.train_manifest} between {dc.min_duration} and {dc.max_duration} s")
    features = load_or_compute_features(rows, out / "features_train.pt", dist)
    keep = [i for i in range(len(rows)) if features["mel"][i].shape[1] >= len(features["text"][i])]  # MAS needs M >= N
    features = {name: [values[i] for i in keep] for name, values in features.items()}
    dev_rows = usable(dc.dev_manifest)
    if 0 < dc.dev_utterances < len(dev_rows):
        dev_rows = [dev_rows[k * len(dev_rows) // dc.dev_utterances] for k in range(dc.dev_utterances)]
    dev = load_or_compute_features(dev_rows, out / "features_dev.pt", dist) if dev_rows else None
    frames = [m.shape[1] for m in features["mel"]]
    batches = ResumableBatches(length_batches(frames, dc.max_batch_frames, dc.max_batch_size),
                               seed=tc.seed, rank=dist.rank, world_size=dist.world_size)
    if cfg.model.pitch_mean == 0.0:  # 0 = take the statistics from the training data
        cfg.model.pitch_mean, cfg.model.pitch_std = pitch_statistics(features["pitch"])

    # ---- model and optimizer
    seed_everything(tc.seed)
    model = FastPitch(cfg.model).to(dist.device)
    torch.manual_seed(tc.seed + 1 + dist.rank)  # each rank its own dropout stream
    params = sum(p.numel() for p in model.parameters())
    ddp = model
    if dist.world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    scheduler = make_scheduler(optimizer, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio)
    step, extra = 0, {"wall_s": 0.0, "frames": 0, "best_dev_mel": float("inf")}
    if args.resume:
        step, extra = load_training_state(args.resume, ddp, optimizer, scheduler, batches)
        if extra.get("model_config") != asdict(cfg.model):
            raise ValueError(f"cannot resume {args.resume}: it was trained with another [model] config "
                             f"({extra.get('model_config')}), this run has {asdict(cfg.model)}")
    extra["model_config"] = asdict(cfg.model)
    if dist.is_main:
        log.log(event="start", step=step, params=params, world_size=dist.world_size, threads=torch.get_num_threads(),
                device=str(dist.device), train_rows=len(features["mel"]), batches_per_epoch=batches.per_epoch,
                train_hours=sum(frames) * TTS_FEATURES.hop_length / TTS_FEATURES.sample_rate / 3600,
                config=asdict(cfg), resume=args.resume)

    stop = GracefulStop()  # Ctrl-C / SIGTERM: finish the step, save, exit

    def save() -> None:
        save_training_state(out / "state.pt", ddp, optimizer, scheduler, step, batches, extra)
        if dist.is_main:
            model.save(out / "last.pt", meta=checkpoint_meta(cfg, step, extra, params))

    def run_eval() -> None:
        started = time.perf_counter()
        scores = evaluate(model, dev, tc.loss, step, dist.device) if dev else {}
        write_samples(model, dev_rows[:dc.samples], out / "samples", step, tc.vocoder)
        model.train()
        log.log(event="eval", step=step, eval_s=round(time.perf_counter() - started, 1), **scores)
        if scores:
            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
            if scores["dev_mel"] < extra["best_dev_mel"]:
                extra["best_dev_mel"] = scores["dev_mel"]
                model.save(out / "best.pt", meta=checkpoint_meta(cfg, step, extra, params))

    # ---- the loop
    stream = iter(batches)
    bar = tqdm(total=tc.max_steps, initial=step, disable=not dist.is_main, dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 60.0, desc="fastpitch")
    run_end = tc.max_steps if tc.run_steps <= 0 else min(tc.max_steps, step + tc.run_steps)
    window: dict[str, float] = {}
    model.train()
    try:
        while step < run_end:
            started = time.perf_counter()
            batch = make_batch(features, next(stream), dist.device)
            out_ = ddp(batch.text, batch.text_lens, batch.mels, batch.mel_lens, batch.pitch)
            losses = fastpitch_losses(out_, batch.mels, tc.loss, step)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            if torch.isfinite(grad_norm):  # gradients are all-reduced: every rank agrees
                optimizer.step()
            scheduler.step()
            step += 1
            elapsed = time.perf_counter() - started
            extra["wall_s"] += elapsed
            extra["frames"] += int(batch.mel_lens.sum()) * dist.world_size
            for name, value in losses.items():
                window[name] = window.get(name, 0.0) + float(value.detach())
            window["n"] = window.get("n", 0) + 1
            window["frames"] = window.get("frames", 0) + int(batch.mel_lens.sum())
            window["step_s"] = window.get("step_s", 0.0) + elapsed
            bar.update(1)
            if step % tc.log_every == 0 or step == run_end:
                means = {name: all_reduce_mean(window[name] / window["n"], dist) for name in losses}
                bar.set_postfix(loss=f"{means['loss']:.3f}", mel=f"{means['mel']:.3f}", refresh=False)
                log.log(event="train", step=step, epoch=batches.epoch, **{k: round(v, 4) for k, v in means.items()},
                        binarization_weight=tc.loss.binarization_weight(step), lr=scheduler.get_last_lr()[0],
                        grad_norm=round(float(grad_norm), 3), step_s=round(window["step_s"] / window["n"], 3),
                        frames_per_s=round(window["frames"] / window["step_s"], 1))
                window = {}
            if dist.is_main and tc.eval_every > 0 and step % tc.eval_every == 0 and step < tc.max_steps:
                run_eval()
            if step % tc.checkpoint_every == 0:
                save()
            if stop.agreed(dist):  # every rank stops at the same step
                bar.write(f"stopping at step {step} (signal): saving {out / 'state.pt'}")
                break
        save()
        if dist.is_main and step >= tc.max_steps:
            run_eval()
        if dist.is_main:
            log.log(event="end", step=step, wall_s=round(extra["wall_s"], 1), stopped=stop.requested)
    finally:
        bar.close()
        stop.restore()
    return 0


@torch.no_grad()
def evaluate(model: FastPitch, dev: dict[str, list], weights: FastPitchLossWeights, step: int,
             device: torch.device) -> dict[str, float]:
    """Teacher-forced dev losses (mean over dev batches) and the duration predictor's error in frames."""
    model.eval()
    frames = [m.shape[1] for m in dev["mel"]]
    totals: dict[str, float] = {}
    abs_error, symbols = 0.0, 0
    batches = length_batches(frames, 4000, 16)
    for indices in batches:
        batch = make_batch(dev, indices, device)
        out = model(batch.text, batch.text_lens, batch.mels, batch.mel_lens, batch.pitch)
        for name, value in fastpitch_losses(out, batch.mels, weights, step).items():
            totals[name] = totals.get(name, 0.0) + float(value) / len(batches)
        predicted = (torch.exp(out.log_durations) - 1).clamp_min(0)
        abs_error += float(((predicted - out.durations) * out.text_mask).abs().sum())
        symbols += int(out.text_mask.sum())
    scores = {f"dev_{name}": value for name, value in totals.items()}
    scores["dev_duration_abs_error_frames"] = abs_error / max(1, symbols)
    return scores


@torch.no_grad()
def write_samples(model: FastPitch, rows: list[dict], folder: Path, step: int, vocoder: str) -> None:
    """Synthesise `rows`' texts with predicted durations and pitch: WAVs through the vocoder, else mels."""
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    generator = None
    if vocoder and Path(vocoder).is_file():
        from minivox.hifigan import load_generator

        generator = load_generator(vocoder)
    for k, row in enumerate(rows):
        ids = torch.tensor([tts_symbol_ids(normalize_text(row["text"]))])
        mels = model.infer(ids).mels  # [1, n_mels, M]
        if generator is None:
            torch.save(mels[0].cpu(), folder / f"step{step:07d}_{k}.mel.pt")
        else:
            audio = generator(mels.cpu())[0, 0]
            write_wav(folder / f"step{step:07d}_{k}.wav", audio.numpy(), TTS_FEATURES.sample_rate)


def checkpoint_meta(cfg: FastPitchTrainingConfig, step: int, extra: dict, params: int) -> dict:
    """What an inference checkpoint records about its training (MODEL_CARD material)."""
    hours = extra["frames"] * TTS_FEATURES.hop_length / TTS_FEATURES.sample_rate / 3600
    return {"step": step, "params": params, "train_wall_s": round(extra["wall_s"], 1),
            "train_audio_hours_seen": round(hours, 2), "best_dev_mel": extra["best_dev_mel"],
            "symbols": "characters (minivox.text.TTS_SYMBOLS)", "train": asdict(cfg.train), "data": asdict(cfg.data)}


if __name__ == "__main__":
    sys.exit(run_main(main))
