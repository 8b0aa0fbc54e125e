"""Train the HiFi-GAN vocoder (`minivox.hifigan`) with torchrun: generator and discriminators, inline.

Usage (from the repository root, after `pip install -e .`):

    # The bundled demo vocoder on the joe corpus, in the background on a shared CPU:
    nohup nice -n 10 torchrun --standalone --nproc_per_node=1 -m minivox.train.hifigan \\
        --config configs/hifigan_demo.toml --out runs/hifigan_demo > runs/hifigan_demo.out 2>&1 &

    # Continue exactly where it stopped (SIGINT/SIGTERM save first; so does every checkpoint_every steps):
    torchrun --standalone --nproc_per_node=1 -m minivox.train.hifigan --config configs/hifigan_demo.toml \\
        --out runs/hifigan_demo --resume runs/hifigan_demo/state.pt

    # Fine-tune on FastPitch's own (teacher-forced) mels, starting from a trained vocoder's state:
    torchrun --standalone --nproc_per_node=1 -m minivox.train.hifigan --config configs/hifigan_demo.toml \\
        --out runs/hifigan_demo_ft data.fastpitch=runs/fastpitch_demo/last.pt \\
        train.init_state=runs/hifigan_demo/state.pt train.max_steps=5000 train.gan_start_step=0

    # GPUs (one process per GPU; gradients are averaged over ranks by hand, see average_gradients):
    torchrun --standalone --nproc_per_node=8 -m minivox.train.hifigan --config configs/hifigan_base.toml

A preset holds three tables: [model] (minivox.hifigan.HiFiGANConfig), [train] (TrainConfig below,
with [train.loss] = HiFiGANLossWeights) and [data] (DataConfig). `key=value` arguments override
any field.

The run folder (--out) gets:
    state.pt          everything --resume needs: generator + discriminators, both AdamW states, the
                      LR schedule, step, batch order, RNG
    last.pt           inference checkpoint (the generator, `HiFiGAN.save`) at the last save
    samples/          at each evaluation: dev utterances resynthesised from their mels (WAV)
    log.jsonl         one JSON line per log/eval event (every loss, lr, seconds per step)

One training step (Kong et al. 2020, section 2.4), on random `segment_samples`-long slices of
the training audio and the matching frames of their log-mels:
  1. the generator turns the mel frames into audio;
  2. discriminator step: LSGAN loss of both discriminators on (real, generated.detach()), AdamW;
  3. generator step: LSGAN loss on the generated audio + 2 x feature matching + 45 x mel L1, AdamW.
Before `gan_start_step` only the mel L1 term trains the generator and the discriminators rest: on a
CPU budget this gets an intelligible vocoder fast, and the GAN steps then remove its buzz.
"""

from __future__ import annotations

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
from minivox.hifigan import (HiFiGAN, HiFiGANConfig, HiFiGANLossWeights, discriminator_loss,
                             feature_matching_loss, generator_adversarial_loss)
from minivox.train.common import (GracefulStop, JSONLLogger, ResumableBatches, all_reduce_mean, cleanup_distributed,
                                  init_distributed, load_training_state, make_scheduler, parse_train_args, run_main,
                                  save_training_state, seed_everything)

# ---------------------------------------------------------------------------------------
# Config: the [train] and [data] tables of configs/hifigan_*.toml ([model] is HiFiGANConfig).
# ---------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Optimisation, schedule and bookkeeping (defaults: the paper's AdamW settings)."""

    seed: int = 0  # model init, batch order, segment positions
    max_steps: int = 500000  # optimizer steps (each = one D step + one G step); the LR schedule ends here
    run_steps: int = 0  # stop this invocation after this many steps (0: run to max_steps)
    lr: float = 2e-4  # AdamW learning rate of both networks (paper: 2e-4)
    betas: tuple[float, float] = (0.8, 0.99)  # AdamW betas (paper)
    weight_decay: float = 0.01  # AdamW weight decay (paper)
    warmup_steps: int = 0  # linear warm-up (the paper has none)
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio (the paper decays 0.999 per epoch)
    gan_start_step: int = 0  # steps of mel-L1-only generator training before the GAN losses switch on
    grad_clip: float = 1000.0  # max global gradient norm per network (only against blow-ups)
    log_every: int = 50
    eval_every: int = 5000  # steps between dev evaluations + audio samples (also at the end); 0 = only at the end
    checkpoint_every: int = 500  # steps between state.pt / last.pt saves (also at exit)
    threads: int = 0  # torch intra-op threads per process (0: torch's default / OMP_NUM_THREADS)
    device: str = "auto"
    init_state: str = ""  # start from the weights (not the optimizer) of this state.pt (fine-tuning)
    loss: HiFiGANLossWeights = field(default_factory=HiFiGANLossWeights)


@dataclass
class DataConfig:
    """Manifests, segments and the mel source."""

    train_manifest: str = "data/tts/train.jsonl"
    dev_manifest: str = "data/tts/dev.jsonl"
    segment_samples: int = 8192  # training slice length (a multiple of the hop; paper: 8192)
    batch_size: int = 16  # slices per step and rank (paper: 16)
    dev_utterances: int = 16  # dev rows resynthesised at each evaluation (0 = all)
    samples: int = 3  # of which this many are written as WAV
    fastpitch: str = ""  # FastPitch checkpoint: train on its teacher-forced mels instead of the real ones


@dataclass
class HiFiGANTrainingConfig:
    """A whole preset: configs/hifigan_*.toml."""

    model: HiFiGANConfig = field(default_factory=HiFiGANConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def load_utterances(rows: list[dict]) -> list[torch.Tensor]:
    """Every row's audio as float32 [S] at the TTS rate (held in memory: 3.7 h is 1.2 GB)."""
    out = []
    for row in rows:
        audio, rate = read_wav(row["audio_filepath"], mono=True)
        if rate != TTS_FEATURES.sample_rate:
            audio = resample(audio, rate, TTS_FEATURES.sample_rate)
        out.append(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)))
    return out


@torch.no_grad()
def utterance_mels(audio: list[torch.Tensor], rows: list[dict], fastpitch: str) -> list[torch.Tensor]:
    """Log-mel [n_mels, T] of every utterance: of its audio, or FastPitch's teacher-forced prediction
    (aligner durations and the real pitch, so frame t still matches audio frame t)."""
    if not fastpitch:
        logmel = LogMel(TTS_FEATURES)
        return [logmel(a[None])[0][0] for a in audio]
    from minivox.fastpitch import FastPitch
    from minivox.normalize import normalize_text
    from minivox.pitch import estimate_pitch
    from minivox.text import tts_symbol_ids

    model, logmel = FastPitch.from_checkpoint(fastpitch), LogMel(TTS_FEATURES)
    mels = []
    for a, row in zip(audio, rows):
        real = logmel(a[None])[0]  # [1, n_mels, T]
        ids = torch.tensor([tts_symbol_ids(normalize_text(row["text"]))])
        T = real.shape[2]
        if ids.shape[1] > T:  # too short to align: keep the real mel
            mels.append(real[0])
            continue
        f0, _ = estimate_pitch(a)
        out = model(ids, torch.tensor([ids.shape[1]]), real, torch.tensor([T]), f0[None])
        mels.append(out.mels[0])
    return mels


def make_batch(audio: list[torch.Tensor], mels: list[torch.Tensor], indices: list[int], segment: int,
               rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random frame-aligned slices: (mel frames [B, n_mels, segment / hop], audio [B, 1, segment]).
    Utterances shorter than a segment are zero-padded (their mel with the log of silence)."""
    hop = TTS_FEATURES.hop_length
    frames = segment // hop
    silence = float(np.log(TTS_FEATURES.log_guard))
    mel_out = torch.full((len(indices), mels[0].shape[0], frames), silence)
    audio_out = torch.zeros(len(indices), 1, segment)
    for b, i in enumerate(indices):
        start = int(rng.integers(0, max(1, mels[i].shape[1] - frames + 1)))  # in frames
        piece = mels[i][:, start:start + frames]
        mel_out[b, :, :piece.shape[1]] = piece
        samples = audio[i][start * hop:start * hop + segment]
        audio_out[b, 0, :samples.numel()] = samples
    return mel_out, audio_out


def average_gradients(params: list[torch.nn.Parameter], dist) -> None:
    """Average the gradients of `params` over the ranks (what DDP would do; explicit here because the
    generator and the discriminators step separately)."""
    if dist.world_size == 1:
        return
    for p in params:
        if p.grad is not None:
            torch_dist.all_reduce(p.grad)
            p.grad /= dist.world_size


# ---------------------------------------------------------------------------------------
# The script
# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_train_args(__doc__, "configs/hifigan_demo.toml", argv)
    cfg = load_config(HiFiGANTrainingConfig, args.config, args.overrides)
    dist = init_distributed(cfg.train.device)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    out = Path(args.out)
    log = JSONLLogger(out / "log.jsonl", enabled=dist.is_main)
    try:
        return train(cfg, args, dist, out, log)
    finally:
        cleanup_distributed()


def train(cfg: HiFiGANTrainingConfig, args, dist, out: Path, log: JSONLLogger) -> int:
    from tqdm import tqdm

    tc, dc = cfg.train, cfg.data
    hop = cfg.model.hop_length
    if dc.segment_samples % hop:
        raise ValueError(f"data.segment_samples ({dc.segment_samples}) must be a multiple of the hop ({hop})")
    out.mkdir(parents=True, exist_ok=True)

    # ---- data: all audio and mels in memory
    rows = read_manifest(dc.train_manifest)
    audio = load_utterances(rows)
    mels = utterance_mels(audio, rows, dc.fastpitch)
    order = list(range(len(rows)))
    batches = ResumableBatches([order[k:k + dc.batch_size] for k in range(0, len(order), dc.batch_size)],
                               seed=tc.seed, rank=dist.rank, world_size=dist.world_size)
    dev_rows = read_manifest(dc.dev_manifest) if dist.is_main else []
    if 0 < dc.dev_utterances < len(dev_rows):
        dev_rows = [dev_rows[k * len(dev_rows) // dc.dev_utterances] for k in range(dc.dev_utterances)]
    dev_audio = load_utterances(dev_rows)
    dev_mels = utterance_mels(dev_audio, dev_rows, dc.fastpitch)

    # ---- model, optimizers: generator (the main ones for train/common) and discriminators (in `extra`)
    seed_everything(tc.seed)
    model = HiFiGAN(cfg.model, TTS_FEATURES, loss_fmax=tc.loss.mel_fmax).to(dist.device)
    generator = model.generator
    discriminators = list(model.mpd.parameters()) + list(model.msd.parameters())
    if tc.init_state:
        state = torch.load(tc.init_state, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
    params = {"generator": sum(p.numel() for p in generator.parameters()),
              "discriminators": sum(p.numel() for p in discriminators)}
    optim_g = torch.optim.AdamW(generator.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    optim_d = torch.optim.AdamW(discriminators, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    sched_g = make_scheduler(optim_g, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio)  # D follows G's LR
    step, extra = 0, {"wall_s": 0.0, "best_dev_mel_l1": float("inf")}
    if args.resume:
        step, extra = load_training_state(args.resume, model, optim_g, sched_g, batches)
        if extra.get("model_config") != asdict(cfg.model):
            raise ValueError(f"cannot resume {args.resume}: it was trained with another [model] config "
                             f"({extra.get('model_config')}), this run has {asdict(cfg.model)}")
        optim_d.load_state_dict(extra.pop("optimizer_d"))
        extra.pop("scheduler_d", None)  # written by earlier versions; D now follows G's schedule
    extra["model_config"] = asdict(cfg.model)
    if dist.is_main:
        log.log(event="start", step=step, params=params, world_size=dist.world_size, threads=torch.get_num_threads(),
                device=str(dist.device), train_rows=len(rows), batches_per_epoch=batches.per_epoch,
                config=asdict(cfg), resume=args.resume)

    stop = GracefulStop()  # Ctrl-C / SIGTERM: finish the step, save, exit

    def save() -> None:
        state_extra = {**extra, "optimizer_d": optim_d.state_dict()}
        save_training_state(out / "state.pt", model, optim_g, sched_g, step, batches, state_extra)
        if dist.is_main:
            model.save(out / "last.pt", meta=checkpoint_meta(cfg, step, extra, params))

    def run_eval() -> None:
        started = time.perf_counter()
        scores = evaluate(model, dev_audio, dev_mels, out / "samples", step, dc.samples, dist.device)
        model.train()
        log.log(event="eval", step=step, eval_s=round(time.perf_counter() - started, 1), **scores)
        bar.write(f"step {step}: dev mel L1 {scores['dev_mel_l1']:.4f}")
        if scores["dev_mel_l1"] < extra["best_dev_mel_l1"]:
            extra["best_dev_mel_l1"] = scores["dev_mel_l1"]
            model.save(out / "best.pt", meta=checkpoint_meta(cfg, step, extra, params))

    # ---- the loop
    stream = iter(batches)
    bar = tqdm(total=tc.max_steps, initial=step, disable=not dist.is_main, dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 60.0, desc="hifigan")
    run_end = tc.max_steps if tc.run_steps <= 0 else min(tc.max_steps, step + tc.run_steps)
    window: dict[str, float] = {}
    w = tc.loss
    model.train()
    try:
        while step < run_end:
            started = time.perf_counter()
            rng = np.random.default_rng([tc.seed, dist.rank, step])
            mel, real = make_batch(audio, mels, next(stream), dc.segment_samples, rng)
            mel, real = mel.to(dist.device), real.to(dist.device)
            gan = step >= tc.gan_start_step
            fake = generator(mel)  # [B, 1, segment]
            losses: dict[str, torch.Tensor] = {}

            # discriminator step: real vs generated (no gradient into the generator)
            if gan:
                for group in optim_d.param_groups:  # the discriminators follow the generator's LR schedule
                    group["lr"] = sched_g.get_last_lr()[0]
                real_scores, _ = model.discriminate(real)
                fake_scores, _ = model.discriminate(fake.detach())
                losses["disc"] = discriminator_loss(real_scores, fake_scores)
                optim_d.zero_grad(set_to_none=True)
                losses["disc"].backward()
                average_gradients(discriminators, dist)
                torch.nn.utils.clip_grad_norm_(discriminators, tc.grad_clip)
                optim_d.step()

            # generator step: fool the (updated) discriminators, match their features and the mel
            real_mel, _ = model.loss_mel(real[:, 0])
            fake_mel, _ = model.loss_mel(fake[:, 0])
            losses["mel_l1"] = torch.mean(torch.abs(real_mel - fake_mel))
            total = w.mel * losses["mel_l1"]
            if gan:
                _, real_features = model.discriminate(real)
                fake_scores, fake_features = model.discriminate(fake)
                losses["gen_adv"] = generator_adversarial_loss(fake_scores)
                losses["feature_matching"] = feature_matching_loss(real_features, fake_features)
                total = total + w.adversarial * losses["gen_adv"] + w.feature_matching * losses["feature_matching"]
            losses["gen_total"] = total
            optim_g.zero_grad(set_to_none=True)
            total.backward()
            average_gradients(list(generator.parameters()), dist)
            grad_norm = torch.nn.utils.clip_grad_norm_(generator.parameters(), tc.grad_clip)
            optim_g.step()
            sched_g.step()
            step += 1

            elapsed = time.perf_counter() - started
            extra["wall_s"] += elapsed
            for name, value in losses.items():
                window[name] = window.get(name, 0.0) + float(value.detach())
            window["n"] = window.get("n", 0) + 1
            window["step_s"] = window.get("step_s", 0.0) + elapsed
            bar.update(1)
            if step % tc.log_every == 0 or step == run_end:
                means = {name: all_reduce_mean(window[name] / window["n"], dist) for name in losses}
                bar.set_postfix(mel=f"{means['mel_l1']:.3f}", refresh=False)
                log.log(event="train", step=step, epoch=batches.epoch, gan=gan, **{k: round(v, 4) for k, v in means.items()},
                        lr=sched_g.get_last_lr()[0], grad_norm_g=round(float(grad_norm), 3),
                        step_s=round(window["step_s"] / window["n"], 3))
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
def evaluate(model: HiFiGAN, audio: list[torch.Tensor], mels: list[torch.Tensor], folder: Path, step: int,
             samples: int, device: torch.device) -> dict[str, float]:
    """Resynthesise whole dev utterances: mean L1 between the log-mels of real and generated audio
    (the loss mel), and the first `samples` written as WAV."""
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    total = 0.0
    for k, (a, mel) in enumerate(zip(audio, mels)):
        fake = model.generator(mel[None].to(device))[0, 0, :a.numel()]  # [S]
        real_mel, _ = model.loss_mel(a[None].to(device))
        fake_mel, _ = model.loss_mel(fake[None])
        total += float(torch.mean(torch.abs(real_mel - fake_mel)))
        if k < samples:
            write_wav(folder / f"step{step:07d}_{k}.wav", fake.cpu().numpy(), TTS_FEATURES.sample_rate)
    return {"dev_mel_l1": total / max(1, len(audio)), "dev_utterances": len(audio)}


def checkpoint_meta(cfg: HiFiGANTrainingConfig, step: int, extra: dict, params: dict) -> dict:
    """What an inference checkpoint records about its training (MODEL_CARD material)."""
    return {"step": step, "params": params, "train_wall_s": round(extra["wall_s"], 1),
            "best_dev_mel_l1": extra["best_dev_mel_l1"], "train": asdict(cfg.train), "data": asdict(cfg.data)}


if __name__ == "__main__":
    sys.exit(run_main(main))
