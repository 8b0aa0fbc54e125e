"""Speech corpora synthesised with the speech engines of this machine (ASR and TTS training data).

    minivox data synth --config configs/data_asr.toml [out_dir=/work/data/asr counts.train=500 ...]

writes into `out_dir`:

    wavs/{split}/{utt_id}.wav     mono PCM16 at `sample_rate`
    {train,dev,test}.jsonl        NeMo-style manifests (paths relative to out_dir), rows like
        {"audio_filepath": "wavs/train/train-000017.wav", "duration": 3.52, "text": "turn the lights off",
         "speaker": "arctic-slt~sp1.1", "base_speaker": "arctic-slt", "voice": "flite:slt", "engine": "flite",
         "split": "train", "utt_id": "train-000017", "backchannel": false,
         "lead_silence": 0.21, "trail_silence": 0.93, "eou_pad": 0.62,
         "speed": 1.1, "pitch_semitones": 0.0, "tempo": 1.0, "noise": "pink", "snr_db": 17.5,
         "rir": 12, "rt60": 0.41}
    babble/ + babble.jsonl        clean utterances used only as babble noise
    progress.jsonl                one row per finished utterance (what a resumed run skips)
    failures.jsonl                utterances that failed (engine error, silence, too long), one JSON per line
    summary.json                  counts, hours, voices and wall time of the last run
    synth_config.json             the config + voices + sentence checksum the corpus was made with

How one utterance is made (`render`):
  1. The engine speaks the transcript: the sentence normalised by minivox.normalize.normalize_text
     (lowercase words, numbers spelled out), so the words spoken are the words in `text`; a final
     "." is added for sentence-final intonation. Backchannels may be spoken with another spelling
     (`backchannel.spoken`, e.g. "mm hmm" -> "mmm hmm") that engines pronounce better.
  2. Resampled to `sample_rate`; leading/trailing silence cut at the first/last 10 ms frame within
     `silence.range_db` of the loudest (plus a 10 ms margin and 5 ms fades).
  3. Speed (resampling, changes pitch: a new pseudo-speaker), pitch shift (a new pseudo-speaker),
     tempo (WSOLA, same speaker) per the `[augment]` draws.
  4. Exactly `lead_silence` seconds of silence before and `trail_silence` (= trail + eou_pad) after.
  5. Reverberation (image-method room, `rir` = room index, `rt60` = its measured RT60).
  6. Loudness: active speech level set to `loudness_dbfs`.
  7. Noise (white/pink/brown/babble) over the whole utterance, padding included, at `snr_db`
     relative to the active speech level.
  8. Written to a temporary file and renamed, then its progress row appended: a row never points
     at a half-written file.

Determinism: all randomness of utterance i comes from np.random.default_rng([seed, i]) (and the plan
is computed up front from the seed), so the corpus does not depend on the number of workers or on
interruptions. Engines are deterministic except Piper, whose VITS model samples noise inside its
ONNX graph (its audio differs slightly from run to run; the plan and transcripts do not).

Splits: sentences are split into disjoint train/dev/test pools; test utterances are spoken only by
the speakers in `test_speakers` (all voices of those speakers), train and dev only by the others.
With no `test_speakers`, test uses the train voices (a single-voice TTS corpus). Backchannels are a
dozen fixed phrases, so they are the one exception to sentence-disjointness.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from minivox.data.manifest import append_manifest, read_manifest, write_manifest

SPLITS = ("train", "dev", "test")
BABBLE = "babble"
EDGE_MARGIN_S = 0.010  # kept beyond the detected speech bounds so weak onsets/offsets are not cut
FADE_S = 0.005  # fade-in/out at the cut points (no clicks)
PEAK_LIMIT = 0.99  # final audio never exceeds this (a common scale keeps the SNR)
ROOM_SEED_TAG = 1_000_003  # rooms are seeded by (seed, ROOM_SEED_TAG, room index), apart from utterances
NOISE_SEED_TAG = 7  # the noise of utterance i is seeded by (seed, i, NOISE_SEED_TAG)

log = logging.getLogger("minivox.data.synth")


# ----------------------------------------------------------------------------------------------
# Config


@dataclass
class SplitCounts:
    """Utterances per split (backchannels included)."""

    train: int = 1000
    dev: int = 50
    test: int = 50


@dataclass
class SilenceConfig:
    """Silence around the speech, all in seconds, each drawn uniformly from [lo, hi] and recorded."""

    lead: list[float] = field(default_factory=lambda: [0.1, 0.1])  # before the speech
    trail: list[float] = field(default_factory=lambda: [0.1, 0.1])  # after it
    eou_pad_prob: float = 0.0  # chance of extra trailing padding, so the ASR sees long pauses before <EOU>
    eou_pad: list[float] = field(default_factory=lambda: [0.3, 1.5])  # its length
    range_db: float = 50.0  # trimming: frames more than this below the loudest frame are silence


@dataclass
class AugmentConfig:
    """Perturbations; each is applied with its probability, to the splits listed in `splits`."""

    splits: list[str] = field(default_factory=lambda: ["train"])  # held-out sets stay clean by default
    speed_prob: float = 0.0  # resampling speed perturbation (tempo and pitch together): a pseudo-speaker
    speed_factors: list[float] = field(default_factory=lambda: [0.9, 1.1])
    pitch_prob: float = 0.0  # pitch shift at constant duration: a pseudo-speaker
    pitch_semitones: list[float] = field(default_factory=lambda: [-2.0, 2.0])
    tempo_prob: float = 0.0  # WSOLA tempo change at constant pitch: same speaker, faster/slower talker
    tempo_range: list[float] = field(default_factory=lambda: [0.85, 1.15])
    noise_prob: float = 0.0
    noise_types: list[str] = field(default_factory=lambda: ["white", "pink", "brown", "babble"])
    snr_db: list[float] = field(default_factory=lambda: [5.0, 30.0])  # uniform
    babble_talkers: list[int] = field(default_factory=lambda: [3, 6])  # voices summed into babble, inclusive
    babble_bank: int = 100  # clean utterances synthesised first as babble material
    reverb_prob: float = 0.0
    rt60: list[float] = field(default_factory=lambda: [0.2, 0.6])  # seconds, uniform (clipped to what the room allows)
    num_rooms: int = 32  # distinct simulated rooms (each worker computes a room's response once)


@dataclass
class BackchannelConfig:
    """Short listener responses, labelled `backchannel: true`, so models learn they are not turns."""

    fraction: float = 0.0  # share of each split's utterances that are backchannels
    phrases: list[str] = field(default_factory=lambda: [
        "yeah", "uh huh", "okay", "right", "mm hmm", "sure", "yes", "yep", "i see", "got it", "oh", "alright"])
    # how to spell a phrase for the engines when the transcript spelling is read badly (letters, "millimetres")
    spoken: dict[str, str] = field(default_factory=lambda: {"mm hmm": "mmm hmm", "uh huh": "uh huh"})


@dataclass
class SynthConfig:
    """A synthesis recipe: configs/data_asr.toml, configs/data_tts.toml."""

    out_dir: str = "data/asr"
    seed: int = 0
    sample_rate: int = 16000  # 16 kHz for ASR/diarization, 22.05 kHz for TTS
    workers: int = 2  # processes; 1 runs in this process
    # sentences: .jsonl files from `minivox data text` ({"text", "source"} rows) or .txt (one per line)
    sentences: list[str] = field(default_factory=lambda: ["data/llm/sentences.jsonl"])
    sources: list[str] = field(default_factory=list)  # .jsonl rows to keep by "source" ([] = all)
    min_words: int = 2  # after normalisation
    max_words: int = 25
    max_sentences: int = 0  # random subset of the unique sentences (0 = all)
    dev_fraction: float = 0.05  # of the unique sentences
    test_fraction: float = 0.05
    voices: list[str] = field(default_factory=list)  # "engine:voice" (minivox data voices); [] = every installed one
    test_speakers: list[str] = field(default_factory=list)  # speaker ids held out of train/dev, only in test
    missing_voices: Literal["error", "skip"] = "error"  # a configured voice that is not installed
    counts: SplitCounts = field(default_factory=SplitCounts)
    loudness_dbfs: float = -26.0  # active speech level (dB re full-scale square wave)
    max_duration: float = 20.0  # seconds; longer utterances are dropped (logged)
    silence: SilenceConfig = field(default_factory=SilenceConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    backchannel: BackchannelConfig = field(default_factory=BackchannelConfig)

    def __post_init__(self):
        checks = [
            (self.sample_rate > 0, f"sample_rate must be > 0, got {self.sample_rate}"),
            (self.workers >= 1, f"workers must be >= 1, got {self.workers}"),
            (1 <= self.min_words <= self.max_words, f"need 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}"),
            (0 <= self.dev_fraction and 0 <= self.test_fraction and self.dev_fraction + self.test_fraction < 1,
             f"dev_fraction + test_fraction must be in [0, 1), got {self.dev_fraction} + {self.test_fraction}"),
            (min(self.counts.train, self.counts.dev, self.counts.test) >= 0, f"counts must be >= 0, got {self.counts}"),
            (0 <= self.backchannel.fraction <= 1, f"backchannel.fraction must be in [0, 1], got {self.backchannel.fraction}"),
            (set(self.augment.splits) <= set(SPLITS), f"augment.splits must be within {SPLITS}, got {self.augment.splits}"),
        ]
        for name in ("lead", "trail", "eou_pad"):
            lo_hi = getattr(self.silence, name)
            checks.append((len(lo_hi) == 2 and 0 <= lo_hi[0] <= lo_hi[1], f"silence.{name} must be [lo, hi] with 0 <= lo <= hi, got {lo_hi}"))
        for name in ("tempo_range", "snr_db", "rt60", "babble_talkers"):
            lo_hi = getattr(self.augment, name)
            checks.append((len(lo_hi) == 2 and lo_hi[0] <= lo_hi[1], f"augment.{name} must be [lo, hi] with lo <= hi, got {lo_hi}"))
        from minivox.data.augment import NOISE_EXPONENTS

        unknown = set(self.augment.noise_types) - set(NOISE_EXPONENTS) - {BABBLE}
        checks.append((not unknown, f"augment.noise_types: unknown {sorted(unknown)}; expected {[*NOISE_EXPONENTS, BABBLE]}"))
        checks.append((all(f > 0 for f in self.augment.speed_factors), f"augment.speed_factors must be > 0, got {self.augment.speed_factors}"))
        checks.append((self.augment.tempo_range[0] > 0, f"augment.tempo_range must be > 0, got {self.augment.tempo_range}"))
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# ----------------------------------------------------------------------------------------------
# Sentences and voices


def load_sentences(cfg: SynthConfig) -> list[str]:
    """Normalised, filtered, de-duplicated sentences from cfg.sentences, in file order.

    Sentences equal to a backchannel phrase are left out (backchannels are made separately).
    """
    from minivox.normalize import normalize_text

    if not cfg.sentences:
        raise ValueError("config key 'sentences' lists no files; expected .jsonl (minivox data text) or .txt files")
    backchannels = {normalize_text(p) for p in cfg.backchannel.phrases}
    seen: dict[str, None] = {}
    for name in cfg.sentences:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"sentence file {path} does not exist (make it with `minivox data text`, or list a .txt file)")
        for raw in _read_sentence_file(path, cfg.sources):
            text = normalize_text(raw)
            if cfg.min_words <= len(text.split()) <= cfg.max_words and text not in backchannels:
                seen.setdefault(text, None)
    sentences = list(seen)
    if cfg.max_sentences and len(sentences) > cfg.max_sentences:
        keep = np.sort(np.random.default_rng([cfg.seed, 11]).permutation(len(sentences))[: cfg.max_sentences])
        sentences = [sentences[i] for i in keep]
    if not sentences:
        raise ValueError(f"no sentences of {cfg.min_words}-{cfg.max_words} words in {cfg.sentences}")
    return sentences


def _read_sentence_file(path: Path, sources: list[str]) -> list[str]:
    if path.suffix == ".jsonl":
        out = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f"{path}:{number}: expected an object with a 'text' string, got {line[:80]!r}")
            if not sources or row.get("source") in sources:
                out.append(row["text"])
        return out
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def split_sentences(sentences: list[str], cfg: SynthConfig) -> dict[str, list[str]]:
    """Disjoint train/dev/test sentence pools (a seeded shuffle, then cut by the fractions)."""
    order = np.random.default_rng([cfg.seed, 12]).permutation(len(sentences))
    n = len(sentences)
    n_test = math.ceil(cfg.test_fraction * n) if cfg.counts.test else 0
    n_dev = math.ceil(cfg.dev_fraction * n) if cfg.counts.dev else 0
    if n - n_test - n_dev < 1 and cfg.counts.train:
        raise ValueError(f"{n} sentences leave none for train after dev/test fractions "
                         f"{cfg.dev_fraction}/{cfg.test_fraction}")
    pools = {"test": order[:n_test], "dev": order[n_test : n_test + n_dev], "train": order[n_test + n_dev :]}
    return {split: [sentences[i] for i in idx] for split, idx in pools.items()}


def resolve_voices(cfg: SynthConfig):
    """(train/dev voices, test voices) as lists of Voice, after the installed check and hold-out.

    Raises:
        ValueError: a configured voice is unknown, or missing with missing_voices = "error", or a
            split with utterances has no voice.
    """
    from minivox.data.voices import catalogue_voice, install_command, list_voices, voice_installed

    if cfg.voices:
        wanted = [catalogue_voice(name) for name in cfg.voices]
        missing = [v for v in wanted if not voice_installed(v)]
        if missing and cfg.missing_voices == "error":
            lines = "\n".join(f"  {v.name}: {install_command(v)}" for v in missing)
            raise ValueError(f"{len(missing)} configured voice(s) are not installed (or set missing_voices = \"skip\"):\n{lines}")
        for v in missing:
            log.warning("voice %s is not installed, skipped (%s)", v.name, install_command(v))
        voices = [v for v in wanted if v not in missing]
    else:
        voices = list_voices()
    held_out = set(cfg.test_speakers)
    known = {v.speaker for v in voices}
    unknown = held_out - known
    if unknown:
        log.warning("test_speakers %s have no installed voice among the configured ones", sorted(unknown))
    train_voices = [v for v in voices if v.speaker not in held_out]
    test_voices = [v for v in voices if v.speaker in held_out] if held_out else train_voices
    if (cfg.counts.train or cfg.counts.dev) and not train_voices:
        raise ValueError("no voice left for train/dev after holding out test_speakers; install more voices")
    if cfg.counts.test and not test_voices:
        raise ValueError(f"none of test_speakers {sorted(held_out)} has an installed voice; install one or change test_speakers")
    return train_voices, test_voices


# ----------------------------------------------------------------------------------------------
# The plan: every utterance's text, voice and augmentation, fixed up front from the seed


@dataclass(frozen=True)
class Job:
    """One utterance to render (picklable; all the decisions, none of the audio)."""

    index: int  # global: train 0.., then dev, test, babble
    split: str
    utt_id: str
    text: str  # transcript (normalised)
    spoken: str  # what the engine is given
    voice: str  # "engine:voice_id"
    backchannel: bool
    lead: float
    trail: float
    eou_pad: float
    speed: float = 1.0
    pitch: float = 0.0
    tempo: float = 1.0
    noise: str = "none"
    snr_db: float | None = None
    room: int | None = None


def _cycle(n_items: int, count: int, rng: np.random.Generator) -> list[int]:
    """`count` indices into n_items items: whole shuffled passes, each item once per pass."""
    out: list[int] = []
    while len(out) < count:
        out.extend(rng.permutation(n_items).tolist())
    return out[:count]


def plan_jobs(cfg: SynthConfig, pools: dict[str, list[str]], train_voices, test_voices) -> list[Job]:
    """The whole corpus as Jobs: splits in order train, dev, test, then the babble bank."""
    from minivox.normalize import normalize_text

    jobs: list[Job] = []
    phrases = [normalize_text(p) for p in cfg.backchannel.phrases]
    spoken_as = {normalize_text(k): v for k, v in cfg.backchannel.spoken.items()}
    aug = cfg.augment
    index = 0
    for split_code, split in enumerate(SPLITS):
        count = getattr(cfg.counts, split)
        voices = test_voices if split == "test" else train_voices
        pool = pools[split]
        if count and not pool:
            raise ValueError(f"split {split} has {count} utterances to make but no sentences (raise {split}_fraction)")
        n_back = round(cfg.backchannel.fraction * count) if phrases else 0
        plan_rng = np.random.default_rng([cfg.seed, 13, split_code])
        sentence_order = _cycle(len(pool), count - n_back, plan_rng) if pool else []
        phrase_order = _cycle(len(phrases), n_back, plan_rng) if n_back else []
        voice_order = _cycle(len(voices), count, plan_rng)
        back_slots = set(plan_rng.permutation(count)[:n_back].tolist()) if n_back else set()
        s_i = p_i = 0
        for j in range(count):
            rng = np.random.default_rng([cfg.seed, index])
            if j in back_slots:
                text = phrases[phrase_order[p_i]]
                spoken = spoken_as.get(text, text)
                p_i += 1
            else:
                text = spoken = pool[sentence_order[s_i]]
                s_i += 1
            lead = float(rng.uniform(*cfg.silence.lead))
            trail = float(rng.uniform(*cfg.silence.trail))
            eou_pad = float(rng.uniform(*cfg.silence.eou_pad)) if rng.random() < cfg.silence.eou_pad_prob else 0.0
            extra = {}
            if split in aug.splits:
                if rng.random() < aug.speed_prob:
                    extra["speed"] = float(aug.speed_factors[rng.integers(len(aug.speed_factors))])
                if rng.random() < aug.pitch_prob:
                    extra["pitch"] = float(aug.pitch_semitones[rng.integers(len(aug.pitch_semitones))])
                if rng.random() < aug.tempo_prob:
                    extra["tempo"] = round(float(rng.uniform(*aug.tempo_range)), 3)
                if rng.random() < aug.noise_prob and aug.noise_types:
                    extra["noise"] = aug.noise_types[rng.integers(len(aug.noise_types))]
                    extra["snr_db"] = round(float(rng.uniform(*aug.snr_db)), 2)
                if rng.random() < aug.reverb_prob and aug.num_rooms > 0:
                    extra["room"] = int(rng.integers(aug.num_rooms))
            jobs.append(Job(index, split, f"{split}-{j:06d}", text, spoken, voices[voice_order[j]].name,
                            j in back_slots, round(lead, 3), round(trail, 3), round(eou_pad, 3), **extra))
            index += 1
    if _needs_babble(cfg):
        rng = np.random.default_rng([cfg.seed, 14])
        sentences = _cycle(len(pools["train"]), aug.babble_bank, rng)
        voices = _cycle(len(train_voices), aug.babble_bank, rng)
        for j in range(aug.babble_bank):
            text = pools["train"][sentences[j]]
            jobs.append(Job(index, BABBLE, f"{BABBLE}-{j:06d}", text, text, train_voices[voices[j]].name,
                            False, 0.0, 0.0, 0.0))
            index += 1
    return jobs


def _needs_babble(cfg: SynthConfig) -> bool:
    a = cfg.augment
    return a.noise_prob > 0 and BABBLE in a.noise_types and a.babble_bank > 0 and bool(a.splits)


# ----------------------------------------------------------------------------------------------
# Rendering one utterance (runs in the worker processes)


_WORKER: dict = {}


def _worker_init(cfg: SynthConfig, out_dir: str) -> None:
    import torch

    torch.set_num_threads(1)  # one process per core already
    _WORKER.clear()
    _WORKER.update(cfg=cfg, out_dir=Path(out_dir), rooms={}, babble=None)


def _room(index: int) -> tuple[np.ndarray, float]:
    """Room `index`'s impulse response at the corpus rate (computed once per worker)."""
    from minivox.data.augment import random_room, room_rir

    cfg: SynthConfig = _WORKER["cfg"]
    if index not in _WORKER["rooms"]:
        room = random_room(np.random.default_rng([cfg.seed, ROOM_SEED_TAG, index]), tuple(cfg.augment.rt60))
        _WORKER["rooms"][index] = room_rir(room, cfg.sample_rate)
    return _WORKER["rooms"][index]


def _babble_sources() -> list[np.ndarray]:
    from minivox.audio import read_wav

    if _WORKER["babble"] is None:
        path = _WORKER["out_dir"] / f"{BABBLE}.jsonl"
        rows = read_manifest(path) if path.is_file() else []
        _WORKER["babble"] = [read_wav(r["audio_filepath"], mono=True)[0] for r in rows]
        if not _WORKER["babble"]:
            raise RuntimeError("babble noise requested but the babble bank is empty")
    return _WORKER["babble"]


def _noise(job: Job, n: int, rng: np.random.Generator) -> np.ndarray:
    from minivox.data.augment import NOISE_EXPONENTS, babble, coloured_noise

    if job.noise == BABBLE:
        lo, hi = _WORKER["cfg"].augment.babble_talkers
        return babble(n, _babble_sources(), int(rng.integers(lo, hi + 1)), rng)
    return coloured_noise(n, NOISE_EXPONENTS[job.noise], rng)


def _fade(x: np.ndarray, n: int) -> np.ndarray:
    n = min(n, x.size // 2)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, endpoint=False, dtype=np.float32)
        x = x.copy()
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def render(job: Job, cfg: SynthConfig, out_dir: Path) -> dict:
    """Synthesise, process and write one utterance; returns its manifest row (paths relative to out_dir).

    Raises on any failure (engine error, silent output, too long); the caller logs and skips.
    """
    from minivox.audio import resample, write_wav
    from minivox.data import augment
    from minivox.data.voices import catalogue_voice, synthesize

    sr = cfg.sample_rate
    voice = catalogue_voice(job.voice)
    audio, native_sr = synthesize(voice, job.spoken + ".")
    if native_sr != sr:
        audio = resample(audio, native_sr, sr)
    start, end = augment.speech_bounds(audio, sr, cfg.silence.range_db)
    if end <= start:
        raise RuntimeError("the engine produced silence")
    margin = round(EDGE_MARGIN_S * sr)
    speech = _fade(audio[max(0, start - margin) : min(audio.size, end + margin)], round(FADE_S * sr))
    speed, pitch = 1.0, 0.0
    if job.speed != 1.0:
        speech, speed = augment.speed_perturb(speech, job.speed)
    if job.pitch != 0.0:
        speech, pitch = augment.pitch_shift(speech, job.pitch, sr)
    if job.tempo != 1.0:
        speech = augment.time_stretch(speech, job.tempo, sr)
    lead, trail = round(job.lead * sr), round((job.trail + job.eou_pad) * sr)
    x = np.concatenate([np.zeros(lead, np.float32), speech.astype(np.float32), np.zeros(trail, np.float32)])
    rt60 = None
    if job.room is not None:
        rir, rt60 = _room(job.room)
        x = augment.reverberate(x, rir)
    x = augment.normalize_loudness(x, sr, cfg.loudness_dbfs, PEAK_LIMIT)
    if job.noise != "none":
        rng = np.random.default_rng([cfg.seed, job.index, NOISE_SEED_TAG])
        x, _ = augment.add_noise(x, _noise(job, x.size, rng), job.snr_db, sr)
    peak = float(np.abs(x).max())
    if peak > PEAK_LIMIT:
        x = x * (PEAK_LIMIT / peak)
    duration = x.size / sr
    if duration > cfg.max_duration:
        raise RuntimeError(f"{duration:.1f} s is longer than max_duration {cfg.max_duration} s")
    rel = Path(BABBLE, f"{job.utt_id}.wav") if job.split == BABBLE else Path("wavs", job.split, f"{job.utt_id}.wav")
    final = out_dir / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp")
    write_wav(tmp, x, sr)
    os.replace(tmp, final)
    base = voice.speaker
    speaker = base + (f"~sp{job.speed:g}" if job.speed != 1.0 else "") + (f"~ps{job.pitch:+g}" if job.pitch else "")
    return {
        "audio_filepath": rel.as_posix(), "duration": round(duration, 6), "text": job.text,
        "speaker": speaker, "base_speaker": base, "voice": voice.name, "engine": voice.engine,
        "split": job.split, "utt_id": job.utt_id, "index": job.index, "backchannel": job.backchannel,
        "lead_silence": round(lead / sr, 4), "trail_silence": round(trail / sr, 4), "eou_pad": job.eou_pad,
        "speed": speed, "pitch_semitones": round(pitch, 3), "tempo": job.tempo,
        "noise": job.noise, "snr_db": job.snr_db, "rir": job.room, "rt60": None if rt60 is None else round(rt60, 3),
    }


def _render_in_worker(job: Job) -> tuple[Job, dict | None, str | None]:
    try:
        return job, render(job, _WORKER["cfg"], _WORKER["out_dir"]), None
    except Exception as exc:  # one utterance failing must never stop the run
        return job, None, f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------------------------
# The run: plan, resume, render in a process pool, write manifests


def fingerprint(cfg: SynthConfig, sentences: list[str], train_voices, test_voices) -> dict:
    """What the corpus depends on; a resumed run must match it exactly."""
    config = dataclasses.asdict(cfg)
    for key in ("out_dir", "workers"):  # where and how fast, not what
        config.pop(key)
    digest = hashlib.sha256("\n".join(sentences).encode()).hexdigest()
    return {"config": config, "train_voices": [v.name for v in train_voices],
            "test_voices": [v.name for v in test_voices], "sentences_sha256": digest, "num_sentences": len(sentences)}


def _check_fingerprint(out_dir: Path, fp: dict) -> None:
    path = out_dir / "synth_config.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != fp:
            keys = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
            if "config" in keys:
                keys += [f"config.{k}" for k in sorted(set(old["config"]) | set(fp["config"]))
                         if old["config"].get(k) != fp["config"].get(k)]
            raise ValueError(f"{out_dir} holds a corpus made with different settings (differs in {keys}); "
                             "use another out_dir, or delete this one to start again")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(fp, indent=1))
        os.replace(tmp, path)


def _finished(out_dir: Path, jobs: list[Job]) -> dict[int, dict]:
    """Rows of progress.jsonl whose WAV exists, for the jobs of this plan; rewrites the file without
    a line cut short by a crash."""
    path = out_dir / "progress.jsonl"
    if not path.is_file():
        return {}
    rows = read_manifest(path, resolve_paths=False, allow_partial_tail=True)
    by_id = {job.utt_id: job for job in jobs}
    done = {}
    for row in rows:
        job = by_id.get(row.get("utt_id"))
        if job is not None and row.get("index") == job.index and (out_dir / row["audio_filepath"]).is_file():
            done[job.index] = row
    write_manifest(path, list(done.values()))
    return done


def _render_all(jobs: list[Job], cfg: SynthConfig, out_dir: Path, done: dict[int, dict], desc: str,
                progress: bool) -> int:
    """Render `jobs`, appending each finished row to progress.jsonl; returns the number of failures."""
    from tqdm import tqdm

    progress_path, failures_path = out_dir / "progress.jsonl", out_dir / "failures.jsonl"
    failures = 0
    if not jobs:
        return 0
    bar = tqdm(total=len(jobs), desc=desc, unit="utt", disable=not progress, smoothing=0.05)

    def collect(job: Job, row: dict | None, error: str | None) -> None:
        nonlocal failures
        if row is not None:
            append_manifest(progress_path, [row])
            done[job.index] = row
        else:
            failures += 1
            log.warning("utterance %s (%s, %r) failed: %s", job.utt_id, job.voice, job.spoken, error)
            with open(failures_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"utt_id": job.utt_id, "voice": job.voice, "text": job.spoken, "error": error}) + "\n")
        bar.update(1)

    if cfg.workers == 1:
        _worker_init(cfg, str(out_dir))
        try:
            for job in jobs:
                collect(*_render_in_worker(job))
        finally:
            from minivox.data.voices import close_engines

            close_engines()
    else:
        import multiprocessing as mp

        ctx = mp.get_context("forkserver")  # workers start clean (no torch thread pools copied by fork)
        ctx.set_forkserver_preload(["minivox.data.synth", "minivox.audio"])
        with ctx.Pool(cfg.workers, initializer=_worker_init, initargs=(cfg, str(out_dir))) as pool:
            for result in pool.imap_unordered(_render_in_worker, jobs, chunksize=4):
                collect(*result)
    bar.close()
    return failures


def run_synth(cfg: SynthConfig, progress: bool = True) -> dict:
    """Make (or finish) the corpus described by `cfg`; returns the summary also written to summary.json."""
    t0 = time.time()
    out_dir = Path(cfg.out_dir)
    sentences = load_sentences(cfg)
    pools = split_sentences(sentences, cfg)
    train_voices, test_voices = resolve_voices(cfg)
    jobs = plan_jobs(cfg, pools, train_voices, test_voices)
    _check_fingerprint(out_dir, fingerprint(cfg, sentences, train_voices, test_voices))
    done = _finished(out_dir, jobs)
    log.info("%d sentences (train %d, dev %d, test %d), %d utterances planned, %d already done",
             len(sentences), *(len(pools[s]) for s in SPLITS), len(jobs), len(done))
    babble_jobs = [j for j in jobs if j.split == BABBLE]
    corpus_jobs = [j for j in jobs if j.split != BABBLE]
    failures = _render_all([j for j in babble_jobs if j.index not in done], cfg, out_dir, done, "babble bank", progress)
    if babble_jobs:
        write_manifest(out_dir / f"{BABBLE}.jsonl", [done[j.index] for j in babble_jobs if j.index in done])
    failures += _render_all([j for j in corpus_jobs if j.index not in done], cfg, out_dir, done, "utterances", progress)
    summary = {"out_dir": str(out_dir), "sample_rate": cfg.sample_rate, "splits": {}, "failures_this_run": failures}
    for split in SPLITS:
        rows = [done[j.index] for j in corpus_jobs if j.split == split and j.index in done]
        write_manifest(out_dir / f"{split}.jsonl", rows)
        summary["splits"][split] = {
            "utterances": len(rows), "planned": sum(j.split == split for j in corpus_jobs),
            "hours": round(sum(r["duration"] for r in rows) / 3600, 3),
            "speakers": sorted({r["base_speaker"] for r in rows}),
            "pseudo_speakers": len({r["speaker"] for r in rows}),
            "voices": sorted({r["voice"] for r in rows}),
            "backchannels": sum(r["backchannel"] for r in rows),
        }
    summary["hours"] = round(sum(s["hours"] for s in summary["splits"].values()), 3)
    summary["bytes"] = sum(f.stat().st_size for f in out_dir.rglob("*.wav"))
    summary["wall_s_this_run"] = round(time.time() - t0, 1)
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out_dir / "summary.json")
    return summary


# ----------------------------------------------------------------------------------------------
# CLI


def run_synth_command(args: argparse.Namespace) -> int:
    """`minivox data synth`: build the corpus of a recipe."""
    from minivox.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    cfg = load_config(SynthConfig, args.config, args.overrides)
    summary = run_synth(cfg, progress=not args.no_progress)
    for split, s in summary["splits"].items():
        print(f"{split:5}  {s['utterances']:6d}/{s['planned']:<6d} utterances  {s['hours']:7.2f} h  "
              f"{len(s['speakers'])} speakers ({s['pseudo_speakers']} with perturbations)  {s['backchannels']} backchannels")
    print(f"total {summary['hours']:.2f} h, {summary['bytes'] / 1e9:.2f} GB in {summary['out_dir']}; "
          f"{summary['failures_this_run']} failures this run (failures.jsonl); {summary['wall_s_this_run']:.0f} s")
    return 0

