"""Real corpora into minivox manifests: NeMo manifests, LJSpeech, LibriSpeech, RTTM folders.

    minivox data import ljspeech    LJSpeech-1.1/            data/ljspeech.jsonl
    minivox data import librispeech LibriSpeech/dev-clean/   data/dev-clean.jsonl  [--wav-dir DIR | --keep-flac]
    minivox data import nemo        their_manifest.jsonl     data/theirs.jsonl
    minivox data import rttm        AUDIO_DIR RTTM_DIR       data/diar.jsonl

Every importer writes a NeMo-style manifest (minivox.data.manifest) with absolute paths, `duration`
read from the audio header, `text` normalised with minivox.normalize.normalize_text (what is spoken, the
form the synthetic corpora use; the original goes to `text_raw`) and a `speaker`. Entries whose audio
is missing are skipped and counted in a message, never a crash.

Layouts:
- LJSpeech: `metadata.csv` lines `id|text|normalized text` (pipe-separated, quotes not escaped), audio
  `wavs/<id>.wav` (22.05 kHz mono). One speaker, "ljspeech".
- LibriSpeech: `<speaker>/<chapter>/<speaker>-<chapter>.trans.txt` lines `<speaker>-<chapter>-<n> TEXT`,
  audio `<same id>.flac` beside it. minivox reads WAV only, so FLAC is decoded to 16 kHz WAV under
  --wav-dir with the optional `soundfile` package (pip install soundfile); a `.wav` already beside the
  `.flac` is used as it is. --keep-flac writes the FLAC paths (durations from the FLAC header) for
  other tools.
- NeMo: a JSONL manifest; relative paths resolve against the manifest's folder.
- RTTM: `*.rttm` files (one per recording or one for many) and `<file id>.wav` in AUDIO_DIR; the
  manifest rows are diarization rows (`rttm_filepath`, `num_speakers`), one RTTM per recording.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import wave
from pathlib import Path

from minivox.data.manifest import REQUIRED_FIELDS, read_manifest, write_manifest

DIAR_FIELDS = ("audio_filepath", "duration", "rttm_filepath", "num_speakers")
LIBRISPEECH_RATE = 16000
FLAC_HELP = ("decoding FLAC needs the optional package `soundfile` (pip install soundfile); or convert the "
             "corpus to WAV first (e.g. `flac -d` from apt's flac package, keeping each .wav beside its .flac), "
             "or pass --keep-flac to list the FLAC files as they are")


# ----------------------------------------------------------------------------------------------
# Audio headers


def flac_streaminfo(path: str | Path) -> dict:
    """{"sample_rate", "channels", "bits", "num_samples"} from a FLAC file's STREAMINFO block.

    STREAMINFO (the first metadata block, after the "fLaC" marker and a 4-byte block header) packs
    min/max block size (16 + 16 bits), min/max frame size (24 + 24), then sample rate (20 bits),
    channels - 1 (3), bits per sample - 1 (5) and the total number of samples (36).
    """
    with open(path, "rb") as f:
        head = f.read(4 + 4 + 34)
    if len(head) < 42 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:
        raise ValueError(f"{path}: not a FLAC file with a STREAMINFO block (starts {head[:8]!r})")
    (packed,) = struct.unpack(">Q", head[8 + 10:8 + 18])  # the 64 bits after the block/frame sizes
    sample_rate = packed >> 44
    channels = ((packed >> 41) & 0x7) + 1
    bits = ((packed >> 36) & 0x1F) + 1
    num_samples = packed & ((1 << 36) - 1)
    if sample_rate == 0:
        raise ValueError(f"{path}: FLAC STREAMINFO has sample rate 0")
    return {"sample_rate": sample_rate, "channels": channels, "bits": bits, "num_samples": num_samples}


def audio_duration(path: str | Path) -> float:
    """Seconds of audio in a WAV (any encoding minivox reads) or FLAC file, from its header where possible."""
    path = Path(path)
    if path.suffix.lower() == ".flac":
        info = flac_streaminfo(path)
        return info["num_samples"] / info["sample_rate"]
    try:
        with wave.open(str(path), "rb") as w:  # integer PCM: header only
            return w.getnframes() / w.getframerate()
    except (wave.Error, EOFError):
        from minivox.audio import read_wav  # float or extensible WAV: minivox's reader

        audio, sample_rate = read_wav(path)
        return len(audio) / sample_rate


def decode_flac_to_wav(src: Path, dst: Path, sample_rate: int = LIBRISPEECH_RATE) -> float:
    """Decode FLAC `src` into a mono PCM16 WAV `dst` at `sample_rate`; returns its duration (seconds)."""
    try:
        import soundfile
    except ImportError:
        raise ValueError(f"{src}: {FLAC_HELP}") from None
    from minivox.audio import resample, write_wav

    audio, sr = soundfile.read(str(src), dtype="float32", always_2d=True)  # [S, C]
    audio = audio.mean(axis=1)  # [S]
    if sr != sample_rate:
        audio = resample(audio, sr, sample_rate)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    write_wav(tmp, audio, sample_rate)
    os.replace(tmp, dst)
    return len(audio) / sample_rate


def _normalized(text: str) -> str:
    from minivox.normalize import normalize_text

    return normalize_text(text)


# ----------------------------------------------------------------------------------------------
# Importers


def load_ljspeech(root: str | Path, log=print) -> list[dict]:
    """Rows for an LJSpeech-style folder (`metadata.csv` + `wavs/`)."""
    root = Path(root)
    metadata = root / "metadata.csv"
    if not metadata.is_file():
        raise ValueError(f"{root}: expected an LJSpeech folder with metadata.csv (id|text|normalized text)")
    rows, missing = [], 0
    for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 2 or not fields[0]:
            raise ValueError(f"{metadata}:{number}: expected 'id|text|normalized text', got {line[:80]!r}")
        spoken = fields[2] if len(fields) > 2 and fields[2].strip() else fields[1]
        wav = root / "wavs" / f"{fields[0]}.wav"
        if not wav.is_file():
            missing += 1
            continue
        rows.append({"audio_filepath": str(wav.resolve()), "duration": round(audio_duration(wav), 4),
                     "text": _normalized(spoken), "text_raw": fields[1], "speaker": "ljspeech"})
    if missing:
        log(f"{root}: {missing} metadata entries without a WAV in wavs/, skipped")
    return rows


def load_librispeech(root: str | Path, wav_dir: str | Path | None = None, keep_flac: bool = False,
                     log=print) -> list[dict]:
    """Rows for a LibriSpeech subset folder (speaker/chapter/ with .trans.txt and .flac or .wav).

    FLAC files are decoded into `wav_dir` (mirroring speaker/chapter) unless `keep_flac`; that needs
    `soundfile`, checked before any work starts. Already decoded WAVs in `wav_dir` are reused.
    """
    root = Path(root)
    transcripts = sorted(root.rglob("*.trans.txt"))
    if not transcripts:
        raise ValueError(f"{root}: expected LibriSpeech layout <speaker>/<chapter>/<speaker>-<chapter>.trans.txt, found none")
    entries = []  # (utterance id, text, folder)
    for trans in transcripts:
        for number, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                utt_id, _, text = line.strip().partition(" ")
                if utt_id.count("-") != 2 or not text:
                    raise ValueError(f"{trans}:{number}: expected '<speaker>-<chapter>-<n> TEXT', got {line[:80]!r}")
                entries.append((utt_id, text, trans.parent))
    needs_decoding = not keep_flac and any(
        not (folder / f"{u}.wav").is_file() and (folder / f"{u}.flac").is_file() for u, _, folder in entries)
    if needs_decoding:
        try:
            import soundfile  # noqa: F401
        except ImportError:
            raise ValueError(f"{root}: holds FLAC audio; {FLAC_HELP}") from None
        if wav_dir is None:
            raise ValueError(f"{root}: holds FLAC audio; give a folder for the decoded WAVs (--wav-dir) or --keep-flac")
    rows, missing = [], 0
    for utt_id, text, folder in entries:
        speaker, chapter, _ = utt_id.split("-")
        wav, flac = folder / f"{utt_id}.wav", folder / f"{utt_id}.flac"
        if wav.is_file():
            path, duration = wav, audio_duration(wav)
        elif flac.is_file() and keep_flac:
            path, duration = flac, audio_duration(flac)
        elif flac.is_file():
            path = Path(wav_dir) / speaker / chapter / f"{utt_id}.wav"
            duration = audio_duration(path) if path.is_file() else decode_flac_to_wav(flac, path)
        else:
            missing += 1
            continue
        rows.append({"audio_filepath": str(Path(path).resolve()), "duration": round(duration, 4),
                     "text": _normalized(text), "text_raw": text, "speaker": f"librispeech-{speaker}", "chapter": chapter})
    if missing:
        log(f"{root}: {missing} transcript lines without audio, skipped")
    return rows


def load_nemo(path: str | Path, log=print) -> list[dict]:
    """Rows of a NeMo manifest, paths made absolute; rows whose audio file is missing are skipped."""
    rows = read_manifest(path)
    present = [row for row in rows if Path(row["audio_filepath"]).is_file()]
    if len(present) < len(rows):
        log(f"{path}: {len(rows) - len(present)} rows whose audio_filepath does not exist, skipped")
    return present


def load_rttm_dir(audio_dir: str | Path, rttm_dir: str | Path, split_dir: str | Path, log=print) -> list[dict]:
    """Diarization rows pairing each recording of the RTTMs in `rttm_dir` with `audio_dir/<file id>.wav`.

    An RTTM holding several recordings is split into one `<file id>.rttm` per recording in `split_dir`
    (so each row points at the turns of its own recording).
    """
    from minivox.metrics import read_rttm, write_rttm

    audio_dir, rttm_dir = Path(audio_dir), Path(rttm_dir)
    rttms = sorted(rttm_dir.glob("*.rttm"))
    if not rttms:
        raise ValueError(f"{rttm_dir}: no .rttm files found")
    rows, missing = [], []
    for rttm in rttms:
        recordings = read_rttm(rttm)
        for file_id, segments in sorted(recordings.items()):
            wav = audio_dir / f"{file_id}.wav"
            if not wav.is_file():
                missing.append(file_id)
                continue
            target = rttm
            if len(recordings) > 1:
                target = Path(split_dir) / f"{file_id}.rttm"
                target.parent.mkdir(parents=True, exist_ok=True)
                write_rttm(target, {file_id: segments})
            rows.append({"audio_filepath": str(wav.resolve()), "rttm_filepath": str(target.resolve()),
                         "duration": round(audio_duration(wav), 4), "offset": 0.0,
                         "num_speakers": len({seg.speaker for seg in segments})})
    if missing:
        log(f"{rttm_dir}: {len(missing)} recordings without audio in {audio_dir}, skipped (e.g. {missing[0]})")
    return rows


# ----------------------------------------------------------------------------------------------
# Command


def _import(args: argparse.Namespace) -> int:
    def log(message: str) -> None:
        print(message, file=sys.stderr)

    out = Path(args.out)
    required = REQUIRED_FIELDS
    if args.corpus == "ljspeech":
        rows = load_ljspeech(args.src, log)
    elif args.corpus == "librispeech":
        wav_dir = args.wav_dir or out.parent / f"{out.stem}_wavs"
        rows = load_librispeech(args.src, wav_dir=wav_dir, keep_flac=args.keep_flac, log=log)
    elif args.corpus == "nemo":
        rows = load_nemo(args.src, log)
    else:
        rows = load_rttm_dir(args.audio_dir, args.rttm_dir, out.parent / f"{out.stem}_rttm", log)
        required = DIAR_FIELDS
    write_manifest(out, rows, required)
    hours = sum(row["duration"] for row in rows) / 3600
    print(f"wrote {len(rows)} rows ({hours:.2f} h) to {out}")
    return 0


def register(subparsers) -> None:
    """Add `import {ljspeech,librispeech,nemo,rttm}` to the `minivox data` subcommands."""
    p = subparsers.add_parser("import", help="turn a real corpus (LJSpeech, LibriSpeech, NeMo manifest, RTTM) into a minivox manifest")
    kinds = p.add_subparsers(dest="corpus", metavar="CORPUS", required=True)
    lj = kinds.add_parser("ljspeech", help="LJSpeech folder: metadata.csv + wavs/")
    lj.add_argument("src")
    lj.add_argument("out", help="manifest to write (.jsonl)")
    ls = kinds.add_parser("librispeech", help="LibriSpeech subset folder: speaker/chapter/*.trans.txt + .flac")
    ls.add_argument("src")
    ls.add_argument("out", help="manifest to write (.jsonl)")
    ls.add_argument("--wav-dir", help="where decoded 16 kHz WAVs go (default: OUT's folder/<OUT stem>_wavs)")
    ls.add_argument("--keep-flac", action="store_true", help="list the FLAC files as they are (no decoding)")
    nemo = kinds.add_parser("nemo", help="a NeMo JSONL manifest (paths made absolute, missing audio dropped)")
    nemo.add_argument("src")
    nemo.add_argument("out", help="manifest to write (.jsonl)")
    rttm = kinds.add_parser("rttm", help="RTTM files + a folder of <file id>.wav: a diarization manifest")
    rttm.add_argument("audio_dir")
    rttm.add_argument("rttm_dir")
    rttm.add_argument("out", help="manifest to write (.jsonl)")
    for sub in (lj, ls, nemo, rttm):
        sub.set_defaults(func=_import)
