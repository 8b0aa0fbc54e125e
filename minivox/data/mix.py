"""Multi-speaker conversations with RTTM, mixed from an utterance manifest (diarization training data).

    minivox data mix --config configs/data_diar.toml [mix.num_train=100 out_dir=/tmp/diar ...]

writes, for split in train/dev/test, `{out_dir}/{split}/{split}_NNNNNN.wav` (mono PCM16), the matching
`.rttm`, and the manifest `{out_dir}/{split}.jsonl` with rows

    {"audio_filepath": "train/train_000017.wav", "rttm_filepath": "train/train_000017.rttm",
     "duration": 31.52, "offset": 0.0, "num_speakers": 3, "speakers": [...], "overlap": 0.061}

(`overlap`: the fraction of speech time where two or more speakers talk), and `mix_config.json` (the
config and a fingerprint of the sources: a rerun into the same out_dir with another config or
corpus is refused instead of mixing old and new conversations). Speakers listed in
`test_speakers` (matched on the row field `heldout_field`) appear only in test conversations; train and
dev draw from the other speakers, with disjoint utterances.

How one conversation is made (its randomness comes only from (seed, split, index), so a run is
deterministic however the work is spread over processes, and an interrupted run resumes where it
stopped, skipping conversations whose files and progress line exist):

1. Speakers: 2..4 (weights `speaker_count_weights`) from the split's pool, all of different voices
   (`heldout_field`), so two perturbed copies of one voice never talk to each other.
2. Turns: each turn is 1..N utterances of one speaker; the next turn goes to another speaker (often
   one who has not spoken yet). The conversation ends past its target length once all have spoken.
3. Timing is set in *speech* time. Each source utterance's speech is measured with a frame-energy
   detector (`speech_intervals`: 25 ms frames, active above max(peak - dynamic range, floor),
   pauses shorter than `min_pause` bridged), so leading/trailing silence of the source does not
   count. The next turn starts a pause (exponential, mean `pause_mean`) after the latest speech, or
   with probability `overlap_prob` overlaps it by U(overlap) seconds (at most half of either turn).
   With probability `interjection_prob` a short utterance of another speaker is dropped inside a
   turn (a backchannel).
4. RTTM: the speech intervals of every placed utterance, shifted to where it was placed; so an
   utterance with an internal pause gives two segments, and every segment has energy under it.
5. Mixing: a gain per speaker (+- `gain_db`), the sum, optional background noise at an SNR, then one
   common scale if the peak would clip.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minivox.metrics import Segment

SPLITS = ("train", "dev", "test")
SPLIT_CODES = {"train": 0, "dev": 1, "test": 2}  # part of each conversation's RNG seed
MANIFEST_FIELDS = ("audio_filepath", "duration", "rttm_filepath", "num_speakers")


@dataclass
class VadConfig:
    """Frame-energy speech detector used to find where each source utterance has speech."""

    frame: float = 0.025  # seconds per energy frame
    hop: float = 0.010  # seconds between frames
    dynamic_range_db: float = 40.0  # frames more than this below the loudest frame are silence
    floor_db: float = -60.0  # and so is anything below this (dBFS of the frame's mean square)
    min_pause: float = 0.3  # shorter silences inside speech are bridged (one RTTM segment)
    min_speech: float = 0.05  # shorter blips are dropped


@dataclass
class MixConfig:
    """`[mix]` of configs/data_diar.toml (times in seconds)."""

    manifests: list[str] = field(default_factory=lambda: ["data/asr/train.jsonl"])  # utterances with speakers, pooled
    speaker_field: str = "speaker"  # who speaks: conversations use distinct values of this field
    heldout_field: str = "speaker"  # field that test_speakers names (e.g. a base voice shared by perturbed copies)
    test_speakers: list[str] = field(default_factory=list)  # only in test; [] = num_test_speakers picked by seed
    num_test_speakers: int = 4
    exclude_if: list[str] = field(default_factory=list)  # skip rows where one of these fields is set (not None/""/"none"/false)
    num_train: int = 2000
    num_dev: int = 100
    num_test: int = 200
    dev_fraction: float = 0.1  # share of the train speakers' utterances kept for dev conversations
    sample_rate: int = 16000
    min_speaker_utterances: int = 10  # speakers (e.g. rare perturbed pseudo-speakers) with fewer in a split are not used
    min_utterance: float = 0.3  # source utterances outside [min, max] seconds (manifest duration) are not used
    max_utterance: float = 15.0
    speaker_count_weights: list[float] = field(default_factory=lambda: [0.5, 0.3, 0.2])  # P(2), P(3), P(4) speakers
    duration: list[float] = field(default_factory=lambda: [20.0, 45.0])  # target speech span, uniform
    turn_utterances: list[int] = field(default_factory=lambda: [1, 3])  # utterances per turn, uniform inclusive
    intra_turn_pause: list[float] = field(default_factory=lambda: [0.1, 0.5])  # between one speaker's utterances
    pause_mean: float = 0.5  # between turns: exponential with this mean...
    pause_max: float = 2.0  # ...clipped here
    overlap_prob: float = 0.3  # a turn starts before the previous one ended
    overlap: list[float] = field(default_factory=lambda: [0.3, 2.0])  # by this much (capped at half of either turn)
    interjection_prob: float = 0.15  # a short utterance of another speaker inside a turn
    interjection_max: float = 1.5  # longest speech that counts as an interjection
    edge: float = 0.05  # source audio kept around the detected speech (faded in/out over it)
    lead_silence: list[float] = field(default_factory=lambda: [0.2, 1.0])  # before the first and after the last speech
    gain_db: float = 3.0  # per-speaker level, uniform in +- this
    noise_prob: float = 0.5  # conversations with background noise
    snr_db: list[float] = field(default_factory=lambda: [15.0, 35.0])  # noise level against the speech, uniform
    vad: VadConfig = field(default_factory=VadConfig)


@dataclass
class DiarDataConfig:
    """configs/data_diar.toml."""

    out_dir: str = "data/diar"
    seed: int = 0
    num_workers: int = 2  # processes; 1 runs in this process
    mix: MixConfig = field(default_factory=MixConfig)


# ----------------------------------------------------------------------------------------------
# 1. Where a source utterance has speech


def frame_energy_db(audio: np.ndarray, sample_rate: int, frame: float, hop: float) -> np.ndarray:
    """Mean-square energy in dBFS of frames audio[i*hop : i*hop + frame] -> [T] (short input: one padded frame)."""
    win, step = int(round(frame * sample_rate)), int(round(hop * sample_rate))
    x = audio.astype(np.float64)
    if len(x) < win:
        x = np.pad(x, (0, win - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::step]  # [T, win]
    return 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12)


def speech_intervals(audio: np.ndarray, sample_rate: int, vad: VadConfig = VadConfig()) -> list[tuple[float, float]]:
    """Speech regions of a mono signal as [(start, end), ...] seconds, sorted and disjoint.

    A frame is speech when its energy is above max(loudest frame - dynamic_range_db, floor_db);
    gaps shorter than min_pause are bridged, regions shorter than min_speech dropped. An interval
    spans its frames' full extent [first frame start, last frame end).
    """
    energy = frame_energy_db(audio, sample_rate, vad.frame, vad.hop)
    active = energy > max(energy.max() - vad.dynamic_range_db, vad.floor_db)
    edges = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # frame runs [start, end)
    total = len(audio) / sample_rate
    intervals: list[list[float]] = []
    for s, e in zip(starts, ends):
        start, end = s * vad.hop, min((e - 1) * vad.hop + vad.frame, total)
        if intervals and start - intervals[-1][1] < vad.min_pause:
            intervals[-1][1] = end
        else:
            intervals.append([start, end])
    return [(s, e) for s, e in intervals if e - s >= vad.min_speech]


# ----------------------------------------------------------------------------------------------
# 2. Planning a conversation


@dataclass
class Placement:
    """One source utterance in a conversation: source[cut_start:cut_end] (seconds) placed at `offset`."""

    speaker: str
    audio_filepath: str
    offset: float  # conversation time of the cut's first sample
    cut_start: float
    cut_end: float
    intervals: list[tuple[float, float]]  # speech in source time (inside the cut)


@dataclass
class Conversation:
    """One planned conversation: who speaks, which utterance goes where, and at what gain."""

    speakers: list[str]  # in order of first speech
    placements: list[Placement]
    gains: dict[str, float]  # linear gain per speaker
    duration: float
    noise_snr_db: float | None

    def segments(self) -> list[Segment]:
        """RTTM segments: every placed speech interval, sorted by start."""
        segs = [Segment(round(p.offset + s - p.cut_start, 4), round(p.offset + e - p.cut_start, 4), p.speaker)
                for p in self.placements for s, e in p.intervals]
        return sorted(segs, key=lambda seg: (seg.start, seg.speaker))


class SourceAudio:
    """Loads source utterances at the output rate and measures their speech (cached per conversation)."""

    def __init__(self, sample_rate: int, vad: VadConfig):
        self.sample_rate, self.vad = sample_rate, vad
        self.cache: dict[str, tuple[np.ndarray, list[tuple[float, float]]]] = {}

    def __call__(self, path: str) -> tuple[np.ndarray, list[tuple[float, float]]]:
        if path not in self.cache:
            from minivox.audio import read_wav, resample

            audio, sr = read_wav(path, mono=True)
            if sr != self.sample_rate:
                audio = resample(audio, sr, self.sample_rate).astype(np.float32)
            self.cache[path] = (audio, speech_intervals(audio, self.sample_rate, self.vad))
        return self.cache[path]


def _uniform(rng: np.random.Generator, bounds) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


@dataclass
class Pool:
    """The source utterances one split may use."""

    utterances: dict[str, list[tuple[str, float]]]  # speaker -> [(audio path, manifest duration in seconds)]
    groups: dict[str, str]  # speaker -> its voice (`heldout_field`); a conversation's voices are all different


MAX_TURNS = 10000  # a guard against a pool whose utterances are all silent


def plan_conversation(rng: np.random.Generator, pool: Pool, cfg: MixConfig, load: SourceAudio) -> Conversation:
    """Lay out one conversation from `pool` (see the module docstring). Utterances in which no
    speech is detected are skipped."""
    names = sorted(pool.utterances)
    max_n = min(len(cfg.speaker_count_weights) + 1, len(set(pool.groups.values())))
    weights = np.asarray(cfg.speaker_count_weights[: max_n - 1], dtype=np.float64)
    num_speakers = 2 + int(rng.choice(len(weights), p=weights / weights.sum()))
    speakers: list[str] = []
    for i in rng.permutation(len(names)):  # distinct voices: never two perturbed copies of one voice
        if len(speakers) < num_speakers and pool.groups[names[i]] not in {pool.groups[s] for s in speakers}:
            speakers.append(names[i])
    target = _uniform(rng, cfg.duration)
    lead = max(_uniform(rng, cfg.lead_silence), cfg.edge)

    placements: list[Placement] = []
    used: set[str] = set()  # utterances already placed: a conversation repeats none while others are left
    last_end = {s: -math.inf for s in speakers}  # end of each speaker's latest speech
    cursor, previous, previous_turn = lead, None, 0.0  # latest speech end; last turn's speaker and length

    def place(speaker: str, path: str, speech_start: float) -> Placement:
        audio, intervals = load(path)
        cut_start = max(intervals[0][0] - cfg.edge, 0.0)
        cut_end = min(intervals[-1][1] + cfg.edge, len(audio) / cfg.sample_rate)
        p = Placement(speaker, path, speech_start - (intervals[0][0] - cut_start), cut_start, cut_end, intervals)
        placements.append(p)
        used.add(path)
        last_end[speaker] = max(last_end[speaker], speech_start + intervals[-1][1] - intervals[0][0])
        return p

    def speech_length(path: str) -> float:
        intervals = load(path)[1]
        return intervals[-1][1] - intervals[0][0] if intervals else 0.0

    for _ in range(MAX_TURNS):
        silent = [s for s in speakers if last_end[s] == -math.inf]  # chosen speakers who have not spoken yet
        if cursor >= lead + target and not silent:
            break
        others = [s for s in speakers if s != previous]
        if silent and previous is not None and rng.random() < 0.6:
            others = silent
        speaker = speakers[0] if previous is None else str(rng.choice(others))
        count = int(rng.integers(cfg.turn_utterances[0], cfg.turn_utterances[1] + 1))
        own = [path for path, _ in pool.utterances[speaker] if path not in used] or [p for p, _ in pool.utterances[speaker]]
        paths = [own[int(i)] for i in rng.choice(len(own), size=min(count, len(own)), replace=False)]
        paths = [path for path in paths if speech_length(path) > 0]
        if not paths:
            continue
        first_length = speech_length(paths[0])
        if previous is None:
            start = lead
        elif rng.random() < cfg.overlap_prob:
            start = cursor - min(_uniform(rng, cfg.overlap), 0.5 * previous_turn, 0.5 * first_length)
        else:
            start = cursor + min(float(rng.exponential(cfg.pause_mean)), cfg.pause_max)
        start = max(start, last_end[speaker] + cfg.intra_turn_pause[0])  # nobody overlaps themselves
        turn_start = start
        for i, path in enumerate(paths):
            if i:
                start = last_end[speaker] + _uniform(rng, cfg.intra_turn_pause)
            place(speaker, path, start)
        turn_end = last_end[speaker]
        if rng.random() < cfg.interjection_prob:
            _interject(rng, pool, cfg, speakers, speaker, turn_start, turn_end, last_end, speech_length, place, used)
        cursor, previous, previous_turn = max(cursor, turn_end), speaker, turn_end - turn_start
    duration = cursor + _uniform(rng, cfg.lead_silence)
    gains = {s: 10 ** (_uniform(rng, (-cfg.gain_db, cfg.gain_db)) / 20) for s in speakers}
    snr = _uniform(rng, cfg.snr_db) if rng.random() < cfg.noise_prob else None
    if not placements:
        raise ValueError(f"no speech found in the utterances of speakers {speakers}")
    first: dict[str, float] = {}  # each speaker's first speech onset: speakers are listed in arrival order
    for p in placements:
        first[p.speaker] = min(first.get(p.speaker, math.inf), p.offset + p.intervals[0][0] - p.cut_start)
    return Conversation(sorted(first, key=first.get), placements, gains, duration, snr)


def _interject(rng, pool, cfg, speakers, current, turn_start, turn_end, last_end, speech_length, place, used) -> None:
    """Drop one short utterance of another speaker fully inside [turn_start, turn_end] if one fits."""
    other = str(rng.choice([s for s in speakers if s != current]))
    slack = 3.0  # manifest durations include leading/trailing silence and end-of-utterance padding
    short = [path for path, duration in pool.utterances[other] if duration <= cfg.interjection_max + slack and path not in used]
    candidates = [short[i] for i in rng.permutation(len(short))[:5]]  # measure a few, not all
    candidates = [path for path in candidates if 0 < speech_length(path) <= cfg.interjection_max]
    if not candidates:
        return
    path = candidates[0]
    length = speech_length(path)
    earliest = max(turn_start + 0.3, last_end[other] + cfg.intra_turn_pause[0])
    latest = turn_end - 0.3 - length
    if latest > earliest:
        place(other, path, float(rng.uniform(earliest, latest)))


# ----------------------------------------------------------------------------------------------
# 3. Rendering


def render(conv: Conversation, load: SourceAudio, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(mix [S], tracks [N, S]) at load.sample_rate; tracks[i] is speaker conv.speakers[i]'s contribution.

    The mix is the sum of the tracks plus the noise, all scaled by one factor if the peak would
    exceed PEAK; the returned tracks carry the same factor.
    """
    sr = load.sample_rate
    num_samples = int(math.ceil(conv.duration * sr))
    tracks = np.zeros((len(conv.speakers), num_samples), dtype=np.float64)  # [N, S]
    row = {s: i for i, s in enumerate(conv.speakers)}
    for p in conv.placements:
        audio, _ = load(p.audio_filepath)
        piece = audio[int(round(p.cut_start * sr)):int(round(p.cut_end * sr))].astype(np.float64)
        fade = min(int(FADE * sr), len(piece) // 2)
        if fade:
            ramp = np.linspace(0.0, 1.0, fade, endpoint=False)
            piece[:fade] *= ramp
            piece[len(piece) - fade:] *= ramp[::-1]
        start = int(round(p.offset * sr))
        piece = piece[: num_samples - start]
        tracks[row[p.speaker], start:start + len(piece)] += piece * conv.gains[p.speaker]
    mix = tracks.sum(axis=0)  # [S]
    if conv.noise_snr_db is not None:
        speech_power = np.mean(mix[np.abs(mix) > 0] ** 2) if np.any(mix) else 0.0
        noise = pink_noise(num_samples, rng)
        mix = mix + noise * math.sqrt(speech_power / 10 ** (conv.noise_snr_db / 10))
    peak = float(np.max(np.abs(mix))) if num_samples else 0.0
    scale = PEAK / peak if peak > PEAK else 1.0
    return (mix * scale).astype(np.float32), (tracks * scale).astype(np.float32)


FADE = 0.01  # seconds of fade at each cut edge, so cuts never click
PEAK = 0.95  # the mix is scaled down if its peak would exceed this


def pink_noise(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power 1/f noise [S]: white Gaussian noise shaped by 1/sqrt(f) in the frequency domain."""
    n_fft = 1 << max(num_samples - 1, 1).bit_length()  # a power of two: FFTs of prime lengths are slow
    spectrum = np.fft.rfft(rng.standard_normal(n_fft))
    f = np.arange(len(spectrum), dtype=np.float64)
    spectrum /= np.sqrt(np.maximum(f, 1.0))
    noise = np.fft.irfft(spectrum, n=n_fft)[:num_samples]
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def overlap_fraction(segments: list[Segment]) -> float:
    """Fraction of speech time (union over speakers) where two or more speakers are active."""
    events = sorted([(s.start, 1) for s in segments] + [(s.end, -1) for s in segments])
    active, last, speech, overlap = 0, 0.0, 0.0, 0.0
    for time, step in events:
        if active >= 1:
            speech += time - last
        if active >= 2:
            overlap += time - last
        active, last = active + step, time
    return overlap / speech if speech > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# 4. Pools, splits, the parallel resumable run


def split_pools(rows: list[dict], cfg: MixConfig, seed: int) -> tuple[dict[str, Pool], list[str]]:
    """{split: Pool} and the held-out voices (values of `heldout_field`).

    Test: rows whose `heldout_field` is in test_speakers. Train/dev: the other rows; of each
    speaker's utterances, ordered by a hash of the file name (stable across runs and row order),
    the first ceil(dev_fraction * n) go to dev.
    """
    usable = [r for r in rows if cfg.min_utterance <= r["duration"] <= cfg.max_utterance
              and not any(r.get(f) not in (None, "", False, "none") for f in cfg.exclude_if)]
    for r in usable:
        if cfg.speaker_field not in r or cfg.heldout_field not in r:
            raise ValueError(f"{r.get('audio_filepath')}: mixing needs fields '{cfg.speaker_field}' and "
                             f"'{cfg.heldout_field}', got {sorted(r)}")
    groups = sorted({str(r[cfg.heldout_field]) for r in usable})
    heldout = list(cfg.test_speakers)
    if not heldout:
        order = np.random.default_rng([seed, 99]).permutation(len(groups))
        heldout = sorted(groups[i] for i in order[: cfg.num_test_speakers])
    missing = sorted(set(heldout) - set(groups))
    if missing:
        raise ValueError(f"mix.test_speakers {missing} are not in the manifests (field '{cfg.heldout_field}'; "
                         f"found {len(groups)}: {groups[:12]}...)")
    pools = {split: Pool({}, {}) for split in SPLITS}
    by_speaker: dict[str, list[dict]] = {}
    for r in usable:
        by_speaker.setdefault(str(r[cfg.speaker_field]), []).append(r)
    for speaker, speaker_rows in sorted(by_speaker.items()):
        speaker_rows.sort(key=lambda r: (_stable_hash(r["audio_filepath"]), r["audio_filepath"]))  # fixed shuffle
        n_dev = math.ceil(cfg.dev_fraction * len(speaker_rows)) if len(speaker_rows) >= 2 else 0
        for i, r in enumerate(speaker_rows):
            split = "test" if str(r[cfg.heldout_field]) in heldout else "dev" if i < n_dev else "train"
            pools[split].utterances.setdefault(speaker, []).append((r["audio_filepath"], float(r["duration"])))
            pools[split].groups[speaker] = str(r[cfg.heldout_field])
    for pool in pools.values():  # too few utterances would repeat within a conversation
        for speaker in [s for s, u in pool.utterances.items() if len(u) < cfg.min_speaker_utterances]:
            del pool.utterances[speaker], pool.groups[speaker]
    return pools, heldout


def _stable_hash(path: str) -> bytes:
    return hashlib.sha1(os.path.basename(path).encode("utf-8")).digest()


def conversation_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The RNG of conversation `index` of `split`: depends on nothing else, so runs resume and parallelise."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def make_conversation(seed: int, split: str, index: int, pool: Pool, cfg: MixConfig,
                      out_dir: Path) -> dict:
    """Plan, render and write conversation `index` of `split`; returns its manifest row."""
    from minivox.audio import write_wav
    from minivox.metrics import write_rttm

    rng = conversation_rng(seed, split, index)
    load = SourceAudio(cfg.sample_rate, cfg.vad)
    conv = plan_conversation(rng, pool, cfg, load)
    mix, _ = render(conv, load, rng)
    name = f"{split}_{index:06d}"
    folder = out_dir / split
    folder.mkdir(parents=True, exist_ok=True)
    segments = conv.segments()
    tmp_rttm, tmp_wav = folder / f".{name}.rttm.tmp", folder / f".{name}.wav.tmp"
    write_rttm(tmp_rttm, {name: segments})
    write_wav(tmp_wav, mix, cfg.sample_rate)
    os.replace(tmp_rttm, folder / f"{name}.rttm")
    os.replace(tmp_wav, folder / f"{name}.wav")  # the WAV last: its presence means the pair is complete
    return {"audio_filepath": f"{split}/{name}.wav", "rttm_filepath": f"{split}/{name}.rttm",
            "duration": round(len(mix) / cfg.sample_rate, 4), "offset": 0.0, "num_speakers": len(conv.speakers),
            "speakers": conv.speakers, "overlap": round(float(overlap_fraction(segments)), 4), "index": index}


_WORKER: dict = {}


def _worker_init(seed, split, pool, cfg, out_dir):
    _WORKER.update(seed=seed, split=split, pool=pool, cfg=cfg, out_dir=out_dir)


def _worker_make(index: int) -> tuple[int, dict | None, str | None]:
    w = _WORKER
    try:
        return index, make_conversation(w["seed"], w["split"], index, w["pool"], w["cfg"], w["out_dir"]), None
    except Exception as exc:  # one bad source file must not stop the run: logged, retried on resume
        return index, None, f"{type(exc).__name__}: {exc}"


def _finished_rows(out_dir: Path, split: str) -> dict[int, dict]:
    """Conversations of `split` already written (final manifest and/or progress file), whose files exist."""
    from minivox.data.manifest import read_manifest

    done: dict[int, dict] = {}
    for path in (out_dir / f"{split}.jsonl", out_dir / f".{split}.progress.jsonl"):
        if path.is_file():
            for row in read_manifest(path, MANIFEST_FIELDS, resolve_paths=False, allow_partial_tail=True):
                if (out_dir / row["audio_filepath"]).is_file() and (out_dir / row["rttm_filepath"]).is_file():
                    done[int(row["index"])] = row
    return done


def mix_split(cfg: DiarDataConfig, split: str, count: int, pool: Pool, log=print) -> list[dict]:
    """Make conversations 0..count-1 of `split` (skipping finished ones); writes and returns the manifest rows."""
    from multiprocessing import get_context

    from tqdm import tqdm

    from minivox.data.manifest import append_manifest, write_manifest

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = {i: row for i, row in _finished_rows(out_dir, split).items() if i < count}
    todo = [i for i in range(count) if i not in done]
    progress = out_dir / f".{split}.progress.jsonl"
    if todo:
        log(f"{split}: {len(done)} conversations already made, {len(todo)} to make")
        args = (cfg.seed, split, pool, cfg.mix, out_dir)
        if cfg.num_workers > 1:
            executor = get_context("spawn").Pool(cfg.num_workers, initializer=_worker_init, initargs=args)
            results = executor.imap_unordered(_worker_make, todo, chunksize=2)
        else:
            executor = None
            _worker_init(*args)
            results = map(_worker_make, todo)
        try:
            for index, row, error in tqdm(results, total=len(todo), desc=f"mix {split}", file=sys.stderr):
                if error is not None:
                    log(f"{split} conversation {index} failed, skipped: {error}")
                    continue
                append_manifest(progress, [row], MANIFEST_FIELDS)
                done[index] = row
        finally:
            if executor is not None:
                executor.terminate()
    rows = [done[i] for i in sorted(done)]
    write_manifest(out_dir / f"{split}.jsonl", rows, MANIFEST_FIELDS)
    progress.unlink(missing_ok=True)
    return rows


RUN_RECORD = "mix_config.json"  # in out_dir: the config and a fingerprint of the sources a corpus was made with


def check_fingerprint(out_dir: Path, cfg: DiarDataConfig, pools: dict[str, Pool]) -> None:
    """Refuse to resume into an out_dir made with another config or other source utterances.

    The fingerprint covers the seed, every [mix] field except the conversation counts (raising
    num_train extends a corpus) and the split pools; the first run writes it to RUN_RECORD.
    """
    settings = {k: v for k, v in dataclasses.asdict(cfg.mix).items() if not k.startswith("num_") and k != "manifests"}
    sources = {split: {s: sorted(u) for s, u in pool.utterances.items()} for split, pool in pools.items()}
    blob = json.dumps({"seed": cfg.seed, "mix": settings, "sources": sources}, sort_keys=True).encode()
    fingerprint = hashlib.sha1(blob).hexdigest()
    record = out_dir / RUN_RECORD
    if record.is_file():
        made_with = json.loads(record.read_text(encoding="utf-8"))["fingerprint"]
        if made_with != fingerprint:
            raise ValueError(f"{out_dir} holds conversations made with another config or other source utterances "
                             f"({record}: fingerprint {made_with}, now {fingerprint}); use a new out_dir or delete it")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"fingerprint": fingerprint, "seed": cfg.seed, "mix": dataclasses.asdict(cfg.mix)},
                                 indent=1), encoding="utf-8")


def run_mix(cfg: DiarDataConfig, log=print) -> dict[str, list[dict]]:
    """All three splits; returns {split: manifest rows}."""
    from minivox.data.manifest import read_manifest

    rows = [row for path in cfg.mix.manifests for row in read_manifest(path)]
    pools, heldout = split_pools(rows, cfg.mix, cfg.seed)
    check_fingerprint(Path(cfg.out_dir), cfg, pools)
    log(f"held-out (test-only) speakers: {', '.join(heldout)}")
    counts = {"train": cfg.mix.num_train, "dev": cfg.mix.num_dev, "test": cfg.mix.num_test}
    out = {}
    for split in SPLITS:
        pool = pools[split]
        voices = sorted(set(pool.groups.values()))
        log(f"{split}: {len(voices)} voices, {len(pool.utterances)} speakers, "
            f"{sum(map(len, pool.utterances.values()))} utterances")
        if counts[split] and len(voices) < 2:
            raise ValueError(f"split {split}: need utterances of at least 2 voices to mix, got {voices} "
                             f"(held out: {heldout})")
        out[split] = mix_split(cfg, split, counts[split], pools[split], log)
        hours = sum(r["duration"] for r in out[split]) / 3600
        overlap = np.mean([r["overlap"] for r in out[split]]) if out[split] else 0.0
        log(f"{split}: {len(out[split])} conversations, {hours:.2f} h, mean overlap {overlap:.3f}")
    return out


def _run(args: argparse.Namespace) -> int:
    from minivox.config import load_config

    cfg = load_config(DiarDataConfig, args.config, args.overrides)
    run_mix(cfg, log=lambda m: print(m, file=sys.stderr))
    return 0


def register(subparsers) -> None:
    """Add `mix` to the `minivox data` subcommands."""
    p = subparsers.add_parser("mix", help="multi-speaker conversations (WAV + RTTM + manifest) from an utterance manifest")
    p.add_argument("--config", default="configs/data_diar.toml", help="recipe TOML")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. mix.num_train=100 out_dir=/tmp/diar")
    p.set_defaults(func=_run)
