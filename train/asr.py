"""Train the streaming Conformer-RNNT (`minivox.asr.Transducer`) with torchrun.

Usage (from the repository root, after `pip install -e .`):

    # The bundled demo model on the synthesised corpus (minivox data synth --config configs/data_asr.toml).
    # On a 2-core CPU one process with 2 threads is fastest (bench: ~100 s of audio per second):
    torchrun --standalone --nproc_per_node=1 -m minivox.train.asr --config configs/asr_demo.toml \\
        --out runs/asr_demo train.threads=2

    # Continue exactly where it stopped (Ctrl-C / SIGTERM save first; so does every checkpoint_every steps):
    torchrun --standalone --nproc_per_node=1 -m minivox.train.asr --config configs/asr_demo.toml \\
        --out runs/asr_demo --resume runs/asr_demo/state.pt train.threads=2

    # CPU DDP over gloo (what the tests run), GPUs over nccl (one process per GPU):
    torchrun --standalone --nproc_per_node=2 -m minivox.train.asr --config configs/asr_tiny.toml \\
        data.train_manifest=my/train.jsonl data.dev_manifest=my/dev.jsonl
    torchrun --standalone --nproc_per_node=8 -m minivox.train.asr --config configs/asr_base.toml

    # Fine-tune a checkpoint (its weights and tokenizer; a fresh optimizer and schedule), e.g. the
    # bundled model on your data, or with another look-ahead added (multi-look-ahead, below):
    torchrun --standalone --nproc_per_node=1 -m minivox.train.asr --config configs/asr_demo.toml \
        --out runs/asr_ft --init-from minivox/pretrained/asr_demo.pt train.ctc_only_steps=0 \
        'model.encoder.train_att_contexts=[[70, 0]]' train.max_steps=2000 train.warmup_steps=100

    # Then: minivox transcribe speech.wav --checkpoint runs/asr_demo/best.pt

A preset holds three tables: [model] (minivox.asr.ASRConfig), [train] (TrainConfig below, with
[train.spec_augment]) and [data] (DataConfig). `key=value` arguments override any field
(`train.lr=1e-3`, `model.encoder.n_layers=4`, `data.max_batch_seconds=60`).

The run folder (--out) gets:
    tokenizer.model   the sentencepiece model, trained at the start of a fresh run
    state.pt          everything --resume needs (model, AdamW, LR schedule, step, batch order, RNG;
                      state.pt.rankN for the other ranks' random-number streams)
    last.pt           inference checkpoint (Transducer.save) at the last save
    best.pt           the one with the lowest dev WER so far
    log.jsonl         one JSON line per log/eval event (loss, lr, grad norm, seconds of audio,
                      data vs compute time, dev WER)

Recipe, in the order the loop runs it:
  - Transcripts end in `<EOU>`; rows labelled `"backchannel": true` ("uh huh", "yeah") end in
    `<EOB>` instead, so the model learns to tell a turn end from an acknowledgement (NeMo's
    realtime EOU models do the same with the same two tokens; the agent's turn taking reads them).
  - Length-bucketed batches: utterances sorted by duration and cut into batches of at most
    `max_batch_seconds` of padded audio, dealt to ranks in a fresh order every epoch.
  - Speed perturbation (Ko et al. 2015): each utterance resampled by a factor drawn from
    `speed_factors` (0.9 / 1.0 / 1.1: tempo and pitch change together).
  - Log-mel features computed per batch in torch (~3 % of a step, measured: caching them would rule out
    speed perturbation and save little; the log's data_s vs step_s shows the split).
  - Vocal tract length perturbation (`data.vtlp`, Jaitly & Hinton 2013): each utterance's spectrum
    warped by a factor in [low, high] through its mel filterbank, so formants move as another
    speaker's would.
  - SpecAugment (Park et al. 2019): frequency and time masks (`spec_augment` below).
  - RNN-T loss (minivox.kernels.rnnt_loss) with FastEmit (Yu et al. 2021) for earlier emissions,
    plus `ctc_weight` x an auxiliary CTC loss on the encoder (model.ctc_head; why: Transducer.forward);
    the first `ctc_only_steps` steps may train the encoder with CTC alone (prediction net and joint idle),
    AdamW, linear warm-up then cosine decay, gradient clipping.
  - Multi-look-ahead (NeMo's cache-aware models): with `model.encoder.train_att_contexts`, each step
    draws its attention context uniformly from those and `att_context_size` (the same on every
    rank), so one model streams with any of them (`Transducer.set_att_context`).
  - Every `eval_every` steps rank 0 transcribes dev utterances with greedy decoding (the
    streaming transcriber's search, `Transducer.transcribe`) and logs the WER.
Every random draw of the data side (speed factors, masks) comes from a generator seeded with
(seed, rank, step), and dropout from the saved torch RNG, so `--resume` continues bit for bit.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Idle OpenMP threads (torch's, and numba's in the RNN-T loss) sleep instead of spinning: set before
# torch loads. On the shared 2-core box, with 4 training jobs at once, a spinning thread took half
# of this process's CPU and a step took 40 s instead of 2.6 s. Export OMP_WAIT_POLICY to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.distributed as torch_dist

from minivox.asr import EOB, EOU, ASRConfig, Transducer
from minivox.audio import read_wav, resample
from minivox.conformer import ConformerConfig
from minivox.config import load_config
from minivox.data.augment import speed_perturb
from minivox.data.manifest import read_manifest
from minivox.kernels import rnnt_loss
from minivox.metrics import word_error_rate
from minivox.text import Tokenizer
from minivox.train.common import (GracefulStop, JSONLLogger, ResumableBatches, all_reduce_mean, cleanup_distributed,
                                  init_distributed, load_training_state, make_scheduler, parse_train_args, run_main,
                                  save_training_state, seed_everything)

# ---------------------------------------------------------------------------------------
# Config: the [train] and [data] tables of configs/asr_*.toml ([model] is minivox.asr.ASRConfig).
# ---------------------------------------------------------------------------------------


@dataclass
class SpecAugmentConfig:
    """SpecAugment masks (Park et al. 2019); defaults are NeMo FastConformer's except fewer time masks."""

    freq_masks: int = 2  # bands of mel bins masked per utterance
    freq_width: int = 27  # each band is 0..freq_width bins wide (NeMo: 27 of 80)
    time_masks: int = 5  # spans of frames masked per utterance (NeMo: 10; a small model on 25 h learns faster with 5)
    time_width: float = 0.05  # each span is 0..time_width * frames long (a fraction, as NeMo)


@dataclass
class TrainConfig:
    """Optimisation, schedule and bookkeeping."""

    seed: int = 0  # model init, batch order and every augmentation draw
    max_steps: int = 20000  # optimizer steps in all; the LR schedule ends here
    run_steps: int = 0  # stop this invocation after this many steps (0: run to max_steps); --resume continues
    lr: float = 2e-3  # peak AdamW learning rate (after warm-up)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas (NeMo's conformer recipes)
    weight_decay: float = 1e-3  # AdamW decoupled weight decay (NeMo's conformer recipes)
    warmup_steps: int = 1000  # linear warm-up from lr / warmup_steps
    min_lr_ratio: float = 0.02  # cosine decay ends at lr * min_lr_ratio
    decay: str = "cosine"  # "cosine" or "constant" after warm-up
    grad_clip: float = 1.0  # max global gradient norm
    fastemit_lambda: float = 0.005  # FastEmit regularisation (NeMo's streaming recipes: 0.005-0.01); 0 = off
    ctc_weight: float = 0.0  # loss = RNN-T + ctc_weight * CTC on the encoder (needs model.ctc_head; ESPnet: 0.3)
    ctc_only_steps: int = 0  # the first steps train the encoder with CTC alone (needs model.ctc_head)
    log_every: int = 25  # steps between loss lines in log.jsonl
    eval_every: int = 1000  # steps between dev WER evaluations (also at max_steps); 0 = only at max_steps
    checkpoint_every: int = 250  # steps between state.pt / last.pt saves (also at exit)
    threads: int = 0  # torch intra-op threads per process (0: leave torch's default / OMP_NUM_THREADS)
    device: str = "auto"  # "auto" (CUDA when available), "cpu" or "cuda"
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)


@dataclass
class DataConfig:
    """Manifests, batching and augmentation of the audio."""

    train_manifest: str = "data/asr/train.jsonl"  # NeMo-style JSONL: audio_filepath, duration, text[, backchannel]
    dev_manifest: str = "data/asr/dev.jsonl"  # for the periodic WER
    min_duration: float = 0.1  # s; shorter training rows are skipped
    max_duration: float = 20.0  # s; longer training rows are skipped (RNN-T logits grow with T * U)
    max_batch_seconds: float = 120.0  # padded audio per batch and rank (after speed perturbation)
    max_batch_size: int = 64  # utterances per batch at most
    speed_factors: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])  # Ko et al. 2015; [1.0] = off
    vtlp: list[float] = field(default_factory=list)  # [low, high] warp factors of vocal tract length
    #   perturbation (Jaitly & Hinton 2013), one per utterance: other voices' formants; [] = off
    eob_backchannels: bool = True  # rows with "backchannel": true end in <EOB> (else every row ends in <EOU>)
    dev_utterances: int = 200  # dev rows scored at each evaluation (the same evenly spread ones; 0 = all)


@dataclass
class ASRTrainingConfig:
    """A whole preset: configs/asr_*.toml."""

    model: ASRConfig = field(default_factory=ASRConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)


# ---------------------------------------------------------------------------------------
# Data: transcripts, tokenizer, length buckets, batches.
# ---------------------------------------------------------------------------------------


def end_symbol(row: dict, eob_backchannels: bool = True) -> str:
    """How a manifest row's transcript ends: `<EOB>` for a backchannel (if enabled), else `<EOU>`."""
    return EOB if eob_backchannels and row.get("backchannel", False) else EOU


def transcript(row: dict, eob_backchannels: bool = True) -> str:
    """The training target of a manifest row: its text + its end symbol ("yes please<EOU>")."""
    return row["text"] + end_symbol(row, eob_backchannels)


def duration_batches(durations: list[float], max_seconds: float, max_size: int) -> list[list[int]]:
    """Length buckets: indices sorted by duration, cut so that (utterances x longest) <= max_seconds.

    Padding is small because neighbours in the sorted order have similar lengths. An utterance
    longer than max_seconds gets a batch of its own.
    """
    order = sorted(range(len(durations)), key=lambda i: (durations[i], i))
    batches, current = [], []
    for i in order:
        if current and ((len(current) + 1) * durations[i] > max_seconds or len(current) == max_size):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def load_audio(path: str, sample_rate: int) -> np.ndarray:
    """A WAV file as mono float32 [S] at `sample_rate`."""
    audio, rate = read_wav(path, mono=True)
    if rate != sample_rate:
        audio = resample(audio, rate, sample_rate)
    return np.ascontiguousarray(audio, dtype=np.float32)


def spec_augment(feats: torch.Tensor, lengths: torch.Tensor, cfg: SpecAugmentConfig,
                 rng: np.random.Generator) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) without time warping: a masked copy of feats [B, M, T].

    Each row gets `freq_masks` bands of 0..freq_width mel bins and `time_masks` spans of
    0..time_width * length frames (inside its length), set to the row's mean log-mel value
    (NeMo masks normalised features with 0, their mean; these features are not normalised).
    """
    B, M, _ = feats.shape
    out = feats.clone()
    for b in range(B):
        n = int(lengths[b])
        if n == 0:
            continue
        fill = float(feats[b, :, :n].mean())
        for _ in range(cfg.freq_masks):
            width = int(rng.integers(0, cfg.freq_width + 1))
            start = int(rng.integers(0, max(1, M - width + 1)))
            out[b, start:start + width, :n] = fill
        max_width = int(cfg.time_width * n)
        for _ in range(cfg.time_masks):
            width = int(rng.integers(0, max_width + 1))
            start = int(rng.integers(0, max(1, n - width + 1)))
            out[b, :, start:start + width] = fill
    return out


def vtlp_filterbank(filterbank: torch.Tensor, alpha: float, boundary: float = 0.8) -> torch.Tensor:
    """The mel filterbank [M, F] of vocal tract length perturbation (Jaitly & Hinton 2013): the
    spectrum's frequencies are scaled by `alpha` (a peak at f Hz lands in the filters of alpha * f)
    up to a boundary, then mapped linearly so that Nyquist stays Nyquist. alpha = 1 is the identity."""
    F_bins = filterbank.shape[1]
    nyquist = F_bins - 1  # in FFT bins
    f = torch.arange(F_bins, dtype=torch.float64)
    knee = boundary * nyquist * min(1.0, 1.0 / alpha)  # where the warp bends (below Nyquist after scaling)
    warped = torch.where(f <= knee, alpha * f,
                         alpha * knee + (nyquist - alpha * knee) * (f - knee) / (nyquist - knee))  # [F]
    # Filter m now collects the energy of input bin f as if it were at bin warped[f].
    low = warped.floor().clamp(0, nyquist - 1).long()
    frac = (warped - low).clamp(0, 1).to(filterbank.dtype)
    return filterbank[:, low] * (1 - frac) + filterbank[:, low + 1] * frac  # [M, F]


@dataclass
class Batch:
    """One training batch."""

    feats: torch.Tensor  # [B, M, T] log-mel
    feat_lengths: torch.Tensor  # [B] valid frames
    targets: torch.Tensor  # [B, U] token ids, 0-padded
    target_lengths: torch.Tensor  # [B]
    audio_seconds: float  # audio in the batch (after speed perturbation)


FEATURE_STATS_UTTERANCES = 200  # training utterances sampled for the encoder's input mean / std


def set_feature_stats(model: Transducer, rows: list[dict], cfg: ASRTrainingConfig, device: torch.device) -> None:
    """Per-mel mean and std of the log-mel features of a seeded sample of training rows
    (the same on every rank), stored in the encoder (`ConformerEncoder.normalize`)."""
    rng = np.random.default_rng(cfg.train.seed)
    picks = rng.choice(len(rows), size=min(FEATURE_STATS_UTTERANCES, len(rows)), replace=False)
    audio = [load_audio(rows[i]["audio_filepath"], cfg.model.features.sample_rate) for i in picks]
    lengths = torch.tensor([len(a) for a in audio])
    pcm = torch.zeros(len(audio), int(lengths.max()))  # [B, S]
    for b, a in enumerate(audio):
        pcm[b, :len(a)] = torch.from_numpy(a)
    with torch.no_grad():
        feats, feat_lengths = model.preprocessor(pcm.to(device), lengths.to(device))  # [B, M, T]
    model.encoder.set_feature_stats(feats, feat_lengths)


def make_batch(rows: list[dict], tokens: list[list[int]], indices: list[int], model: Transducer,
               cfg: ASRTrainingConfig, rng: np.random.Generator, device: torch.device) -> Batch:
    """Read, speed-perturb, featurise and SpecAugment the utterances `indices`."""
    rate = cfg.model.features.sample_rate
    audio = []
    for i in indices:
        pcm = load_audio(rows[i]["audio_filepath"], rate)
        factor = float(rng.choice(cfg.data.speed_factors))
        audio.append(speed_perturb(pcm, factor)[0] if factor != 1.0 else pcm)
    lengths = torch.tensor([len(a) for a in audio])
    pcm = torch.zeros(len(audio), int(lengths.max()))  # [B, S]
    for b, a in enumerate(audio):
        pcm[b, :len(a)] = torch.from_numpy(a)
    filterbank = None
    if cfg.data.vtlp:
        alphas = rng.uniform(*cfg.data.vtlp, size=len(indices))
        filterbank = torch.stack([vtlp_filterbank(model.preprocessor.filterbank, float(a)) for a in alphas])
    feats, feat_lengths = model.preprocessor(pcm.to(device), lengths.to(device), filterbank)  # [B, M, T]
    feats = spec_augment(feats, feat_lengths, cfg.train.spec_augment, rng)
    target_lengths = torch.tensor([len(tokens[i]) for i in indices])
    targets = torch.zeros(len(indices), int(target_lengths.max()), dtype=torch.long)  # [B, U]
    for b, i in enumerate(indices):
        targets[b, :len(tokens[i])] = torch.tensor(tokens[i])
    return Batch(feats, feat_lengths, targets.to(device), target_lengths.to(device), float(lengths.sum()) / rate)


def training_loss(model, batch: Batch, tc: TrainConfig, step: int = 0) -> tuple[torch.Tensor, dict]:
    """The loss of a batch: RNN-T + ctc_weight x CTC, or CTC alone while step < ctc_only_steps.
    Both are summed over each utterance and averaged over the batch.
    Returns (loss to minimise, {"rnnt": float if used, "ctc": float if used})."""
    if step < tc.ctc_only_steps:
        _, enc_lengths, ctc_lp = model(batch.feats, batch.feat_lengths, batch.targets, batch.target_lengths,
                                       with_ctc=True, with_rnnt=False)  # ctc_lp [B, T, V + 1]
        ctc = ctc_loss(ctc_lp, batch, enc_lengths)
        return ctc, {"ctc": ctc.item()}
    ctc_lp = None
    if tc.ctc_weight > 0:
        logits, enc_lengths, ctc_lp = model(batch.feats, batch.feat_lengths, batch.targets, batch.target_lengths,
                                            with_ctc=True)  # ctc_lp [B, T, V + 1]
    else:
        logits, enc_lengths = model(batch.feats, batch.feat_lengths, batch.targets, batch.target_lengths)
    loss = rnnt_loss(logits, batch.targets, enc_lengths, batch.target_lengths,
                     fastemit_lambda=tc.fastemit_lambda)  # [B, T, U + 1, V + 1] -> mean over B
    parts = {"rnnt": loss.item()}
    if ctc_lp is not None:
        ctc = ctc_loss(ctc_lp, batch, enc_lengths)
        parts["ctc"] = ctc.item()
        loss = loss + tc.ctc_weight * ctc
    return loss, parts


def draw_att_context(enc: ConformerConfig, seed: int, step: int) -> tuple[int, int]:
    """The attention context of a training step: att_context_size, or with `train_att_contexts`
    (multi-look-ahead training) one of them all drawn uniformly, the same on every rank."""
    choices = [tuple(enc.att_context_size)]
    choices += [tuple(c) for c in enc.train_att_contexts if tuple(c) not in choices]
    if len(choices) == 1:
        return choices[0]
    return choices[int(np.random.default_rng([seed, step, 1]).integers(len(choices)))]


@contextmanager
def att_context(model: Transducer, size: tuple[int, int]):
    """Run the block with the model's attention context set to `size`, then restore it."""
    default = model.cfg.encoder.att_context_size
    if tuple(size) == tuple(default):
        yield
        return
    model.set_att_context(size)
    try:
        yield
    finally:
        model.cfg.encoder.att_context_size = default


def load_init_checkpoint(path: str, cfg: ASRTrainingConfig) -> Transducer:
    """The checkpoint --init-from fine-tunes: its architecture must be this run's [model]."""
    try:
        source = Transducer.from_checkpoint(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot fine-tune from {path}: {exc}") from None
    mine, theirs = asdict(cfg.model), asdict(source.cfg)
    for c in (mine, theirs):  # contexts may differ: they change the attention mask, not the weights
        c["encoder"].pop("att_context_size"), c["encoder"].pop("train_att_contexts")
    if mine != theirs:
        diff = sorted(f"{k}" for k in mine if mine[k] != theirs.get(k))
        raise ValueError(f"cannot fine-tune from {path}: its [model] differs from this run's in {', '.join(diff)} "
                         f"(checkpoint: {[theirs[k] for k in diff]}, run: {[mine[k] for k in diff]})")
    if source.tokenizer is None:
        raise ValueError(f"cannot fine-tune from {path}: it holds no tokenizer")
    return source


def ctc_loss(log_probs: torch.Tensor, batch: Batch, enc_lengths: torch.Tensor) -> torch.Tensor:
    """CTC loss of the encoder head's log-probabilities [B, T, V + 1] (blank last), summed per
    utterance and averaged over the batch."""
    return torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1), batch.targets, enc_lengths, batch.target_lengths, blank=log_probs.shape[-1] - 1,
        reduction="sum", zero_infinity=True) / log_probs.shape[0]  # [T, B, V + 1] -> mean over B


def evaluate(model: Transducer, rows: list[dict], audio: list[np.ndarray], eob_backchannels: bool) -> dict:
    """Greedy-decode `audio` (the streaming search, offline) -> WER and how often the right end token came."""
    hyps = model.transcribe(audio)
    wer = word_error_rate([r["text"] for r in rows], [h.text for h in hyps])
    ends = [model.tokenizer.piece_to_id(end_symbol(r, eob_backchannels)) for r in rows]
    end_ok = sum(end in h.y_sequence for end, h in zip(ends, hyps))
    return {"dev_wer": wer.rate, "dev_words": wer.reference_length,
            "dev_end_token_recall": end_ok / max(1, len(rows)), "dev_utterances": len(rows)}


# ---------------------------------------------------------------------------------------
# The script.
# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_train_args(__doc__, "configs/asr_demo.toml", argv, init_from=True)
    cfg = load_config(ASRTrainingConfig, args.config, args.overrides)
    tc = cfg.train
    dist = init_distributed(tc.device)
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    out = Path(args.out)
    log = JSONLLogger(out / "log.jsonl", enabled=dist.is_main)
    try:
        return train(cfg, args, dist, out, log)
    finally:
        cleanup_distributed()


def train(cfg: ASRTrainingConfig, args, dist, out: Path, log: JSONLLogger) -> int:
    from tqdm import tqdm

    tc, dc = cfg.train, cfg.data
    if tc.ctc_weight < 0 or ((tc.ctc_weight > 0 or tc.ctc_only_steps > 0) and not cfg.model.ctc_head):
        raise ValueError(f"train.ctc_weight must be 0, or > 0 with model.ctc_head = true, and ctc_only_steps needs "
                         f"the head too; got ctc_weight={tc.ctc_weight}, ctc_only_steps={tc.ctc_only_steps}, "
                         f"ctc_head={cfg.model.ctc_head}")
    out.mkdir(parents=True, exist_ok=True)

    # ---- data and tokenizer
    rows = [r for r in read_manifest(dc.train_manifest) if dc.min_duration <= r["duration"] <= dc.max_duration]
    if not rows:
        raise ValueError(f"no training rows in {dc.train_manifest} between {dc.min_duration} and {dc.max_duration} s")
    texts = [transcript(r, dc.eob_backchannels) for r in rows]
    tokenizer_path = out / "tokenizer.model"
    source = load_init_checkpoint(args.init_from, cfg) if args.init_from else None
    if args.resume:  # the tokenizer the run started with, beside its state file
        tokenizer = Tokenizer.load(Path(args.resume).with_name("tokenizer.model"))
    elif source is not None:  # fine-tuning keeps the checkpoint's tokenizer
        if dist.is_main:
            source.tokenizer.save(tokenizer_path)
        tokenizer = source.tokenizer
    else:
        if dist.is_main:
            Tokenizer.train(texts, cfg.model.tokenizer.vocab_size, model_type=cfg.model.tokenizer.model_type,
                            user_defined_symbols=(EOU, EOB), seed=tc.seed).save(tokenizer_path)
        if dist.world_size > 1:
            torch_dist.barrier()
        tokenizer = Tokenizer.load(tokenizer_path)
    tokens = [tokenizer.encode(t) for t in texts]
    slowest = min(dc.speed_factors)  # a factor below 1 lengthens the audio
    buckets = duration_batches([r["duration"] / slowest for r in rows], dc.max_batch_seconds, dc.max_batch_size)
    batches = ResumableBatches(buckets, seed=tc.seed, rank=dist.rank, world_size=dist.world_size)
    dev_rows = read_manifest(dc.dev_manifest) if dist.is_main else []

    # ---- model and optimizer
    seed_everything(tc.seed)
    model = Transducer(cfg.model, tokenizer).to(dist.device)
    if source is not None:  # its weights, input normalisation included
        model.load_state_dict(source.state_dict())
    elif not args.resume:  # the encoder's fixed input normalisation, from a sample of training audio
        set_feature_stats(model, rows, cfg, dist.device)
    torch.manual_seed(tc.seed + 1 + dist.rank)  # each rank its own dropout stream
    params = sum(p.numel() for p in model.parameters())
    ddp = model
    if dist.world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
            find_unused_parameters=tc.ctc_only_steps > 0)  # CTC-only steps leave the prediction net and joint out
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    scheduler = make_scheduler(optimizer, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio, tc.decay)
    step, extra = 0, {"best_wer": math.inf, "wall_s": 0.0, "audio_s": 0.0}
    if args.resume:
        try:
            step, extra = load_training_state(args.resume, ddp, optimizer, scheduler, batches)
        except RuntimeError as exc:  # tensor shapes differ
            raise ValueError(f"cannot resume {args.resume}: its weights do not fit this run's [model] config "
                             f"({str(exc).splitlines()[0]})") from None
        if extra.get("model_config") != asdict(cfg.model):
            raise ValueError(f"cannot resume {args.resume}: it was trained with another [model] config "
                             f"({extra.get('model_config')}), this run has {asdict(cfg.model)}")
    extra["model_config"] = asdict(cfg.model)
    if dist.is_main:
        log.log(event="start", step=step, params=params, world_size=dist.world_size, threads=torch.get_num_threads(),
                device=str(dist.device), train_rows=len(rows), batches_per_epoch=batches.per_epoch,
                train_hours=sum(r["duration"] for r in rows) / 3600, config=asdict(cfg), resume=args.resume,
                init_from=args.init_from)

    stop = GracefulStop()  # Ctrl-C / SIGTERM: finish the step, save, exit

    def save() -> None:
        save_training_state(out / "state.pt", ddp, optimizer, scheduler, step, batches, extra)
        if dist.is_main:
            model.save(out / "last.pt", meta=checkpoint_meta(cfg, step, extra, params))

    # The periodic WER is on a fixed, evenly spread subset of the dev rows (comparable over the run).
    if 0 < dc.dev_utterances < len(dev_rows):
        dev_rows = [dev_rows[k * len(dev_rows) // dc.dev_utterances] for k in range(dc.dev_utterances)]
    dev_rows.sort(key=lambda r: r["duration"])  # similar lengths batch well

    def run_eval() -> None:
        audio = [load_audio(r["audio_filepath"], cfg.model.features.sample_rate) for r in dev_rows]
        started = time.perf_counter()
        scores = evaluate(model, dev_rows, audio, dc.eob_backchannels)
        model.train()
        log.log(event="eval", step=step, eval_s=round(time.perf_counter() - started, 1), **scores)
        bar.write(f"step {step}: dev WER {100 * scores['dev_wer']:.2f}% on {len(dev_rows)} utterances, "
                  f"end token recall {scores['dev_end_token_recall']:.3f}")
        if scores["dev_wer"] < extra["best_wer"]:
            extra["best_wer"] = scores["dev_wer"]
            model.save(out / "best.pt", meta=checkpoint_meta(cfg, step, extra, params))

    # ---- the loop
    stream = iter(batches)
    bar = tqdm(total=tc.max_steps, initial=step, disable=not dist.is_main, dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 60.0, desc="asr")
    run_end = tc.max_steps if tc.run_steps <= 0 else min(tc.max_steps, step + tc.run_steps)
    window = {"loss": 0.0, "rnnt": 0.0, "rnnt_n": 0, "ctc": 0.0, "ctc_n": 0, "n": 0,
              "audio_s": 0.0, "data_s": 0.0, "step_s": 0.0}
    model.train()
    try:
        while step < run_end:
            started = time.perf_counter()
            indices = next(stream)
            rng = np.random.default_rng([tc.seed, dist.rank, step])
            batch = make_batch(rows, tokens, indices, model, cfg, rng, dist.device)
            data_s = time.perf_counter() - started
            with att_context(model, draw_att_context(cfg.model.encoder, tc.seed, step)):
                loss, parts = training_loss(ddp, batch, tc, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            if torch.isfinite(grad_norm):  # gradients are all-reduced: every rank agrees
                optimizer.step()
            scheduler.step()
            step += 1
            elapsed = time.perf_counter() - started
            extra["wall_s"] += elapsed
            extra["audio_s"] += batch.audio_seconds * dist.world_size
            window["loss"] += loss.item()
            for part in ("rnnt", "ctc"):
                if part in parts:
                    window[part] += parts[part]
                    window[part + "_n"] += 1
            window["n"] += 1
            window["audio_s"] += batch.audio_seconds
            window["data_s"] += data_s
            window["step_s"] += elapsed
            bar.update(1)
            if step % tc.log_every == 0 or step == run_end:
                mean_loss = all_reduce_mean(window["loss"] / window["n"], dist)
                parts_logged = {f"{part}_loss": round(all_reduce_mean(window[part] / window[part + "_n"], dist), 4)
                                for part in ("rnnt", "ctc") if window[part + "_n"]}  # every rank has the same parts
                bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
                log.log(event="train", step=step, epoch=batches.epoch, loss=round(mean_loss, 4), **parts_logged,
                        lr=scheduler.get_last_lr()[0], grad_norm=round(float(grad_norm), 3),
                        audio_s=round(window["audio_s"], 1), data_s=round(window["data_s"], 2),
                        step_s=round(window["step_s"], 2),
                        audio_per_s=round(window["audio_s"] / window["step_s"], 1))
                window = dict.fromkeys(window, 0)
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
            log.log(event="end", step=step, wall_s=round(extra["wall_s"], 1), audio_hours=extra["audio_s"] / 3600,
                    best_wer=None if math.isinf(extra["best_wer"]) else extra["best_wer"], stopped=stop.requested)
    finally:
        bar.close()
        stop.restore()
    return 0


def checkpoint_meta(cfg: ASRTrainingConfig, step: int, extra: dict, params: int) -> dict:
    """What an inference checkpoint records about its training (MODEL_CARD material)."""
    return {"step": step, "params": params, "train_wall_s": round(extra["wall_s"], 1),
            "train_audio_hours": round(extra["audio_s"] / 3600, 2),
            "best_dev_wer": None if math.isinf(extra["best_wer"]) else extra["best_wer"],
            "train": asdict(cfg.train), "data": asdict(cfg.data)}


if __name__ == "__main__":
    sys.exit(run_main(main))
