"""`minivox transcribe`: speech recognition of WAV files from the command line.

    minivox transcribe speech.wav                     # text, with the bundled demo model
    minivox transcribe a.wav b.wav --json             # one JSON object per file: text, words, EOU events
    minivox transcribe speech.wav --beam 4            # modified beam search instead of greedy
    minivox transcribe speech.wav --streaming         # through the cache-aware streaming transcriber
    minivox transcribe speech.wav --checkpoint runs/asr_demo/best.pt

Any WAV rate and channel count is accepted (downmixed, resampled to the model's 16 kHz). A
file that cannot be read gets a one-line error on stderr; the others are still transcribed
and the exit status is 1.

Text output: one line per file (prefixed with the path when several files are given); with
--streaming, one line per utterance as each one ends (<EOU>, <EOB>, a silence or the end).
JSON output (one object per line): {"file", "duration", "text", "words": [{"word", "start",
"end"}], "events": [{"type": "eou" | "eob", "time"}]} with times in seconds from the start of
the file; with --streaming, "utterances": [{"text", "end", "eou_latency", "eob_latency"}] too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEMO_CHECKPOINT = Path(__file__).resolve().parent / "pretrained" / "asr_demo.pt"
TRAIN_COMMAND = ("torchrun --standalone --nproc_per_node=1 -m minivox.train.asr --config configs/asr_demo.toml "
                 "--out runs/asr_demo   (then pass --checkpoint runs/asr_demo/best.pt)")
STREAM_CHUNK_S = 0.08  # seconds of audio per `step` call in --streaming mode (like a live 80 ms microphone frame)


def register(subparsers) -> None:
    """Add the `transcribe` subcommand to the `minivox` argument parser's subparsers."""
    p = subparsers.add_parser(
        "transcribe", help="speech recognition of WAV files (streaming Conformer-RNNT)",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE.wav", help="WAV files (any rate, any number of channels)")
    p.add_argument("--checkpoint", default=None,
                   help=f"ASR checkpoint (default: the bundled demo model {DEMO_CHECKPOINT.name})")
    p.add_argument("--beam", type=int, default=1, metavar="N",
                   help="beam size: 1 = greedy (default), > 1 = modified beam search (offline only)")
    p.add_argument("--streaming", action="store_true",
                   help="run the live transcriber on 80 ms chunks (same text as offline greedy; shows EOU timing)")
    p.add_argument("--att-context", metavar="LEFT,RIGHT", default=None,
                   help="attention context to stream with, e.g. 70,0 (no look-ahead: 80 ms chunks) for a model "
                        "trained with it (default: the checkpoint's)")
    p.add_argument("--json", action="store_true", help="print one JSON object per file")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: fastest for the small demo model)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The `transcribe` command; returns the exit status (0 ok, 1 a file failed, 2 bad arguments/model)."""
    if args.beam < 1:
        print(f"minivox transcribe: --beam must be >= 1, got {args.beam}", file=sys.stderr)
        return 2
    if args.streaming and args.beam > 1:
        print("minivox transcribe: --beam is for offline decoding; the streaming transcriber is greedy",
              file=sys.stderr)
        return 2
    checkpoint = Path(args.checkpoint) if args.checkpoint else DEMO_CHECKPOINT
    if not checkpoint.is_file():
        if args.checkpoint:
            print(f"minivox transcribe: checkpoint {checkpoint} does not exist", file=sys.stderr)
        else:
            print(f"minivox transcribe: the bundled demo model {checkpoint} is missing; train one with\n"
                  f"  {TRAIN_COMMAND}", file=sys.stderr)
        return 2

    import torch

    from minivox.asr import Transducer

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        model = Transducer.from_checkpoint(checkpoint)
    except ValueError as exc:
        print(f"minivox transcribe: {exc}", file=sys.stderr)
        return 2
    if model.tokenizer is None:
        print(f"minivox transcribe: {checkpoint} has no tokenizer", file=sys.stderr)
        return 2
    if args.att_context:
        try:
            model.set_att_context(tuple(int(v) for v in args.att_context.split(",")))
        except ValueError as exc:
            print(f"minivox transcribe: --att-context takes LEFT,RIGHT of a streaming context (e.g. 70,0), "
                  f"got {args.att_context!r}: {exc}", file=sys.stderr)
            return 2

    status = 0
    for path in args.files:
        try:
            audio = load_16k(path, model.cfg.features.sample_rate)
        except (OSError, ValueError) as exc:
            print(f"minivox transcribe: {path}: {_one_line(exc)}", file=sys.stderr)
            status = 1
            continue
        result = (transcribe_streaming(model, audio) if args.streaming else
                  transcribe_offline(model, audio, args.beam))
        result = {"file": path, "duration": round(len(audio) / model.cfg.features.sample_rate, 3), **result}
        if args.json:
            print(json.dumps(result), flush=True)
        elif args.streaming:
            prefix = f"{path}: " if len(args.files) > 1 else ""
            for utterance in result["utterances"]:
                if utterance["text"]:
                    print(prefix + utterance["text"], flush=True)
        else:
            print((f"{path}: " if len(args.files) > 1 else "") + result["text"], flush=True)
    return status


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def load_16k(path: str, sample_rate: int):
    """A WAV file as mono float32 [S] at `sample_rate` (downmixed and resampled as needed)."""
    import numpy as np

    from minivox.audio import read_wav, resample

    if not Path(path).is_file():
        raise ValueError("no such file")
    audio, rate = read_wav(path, mono=True)
    if rate != sample_rate:
        audio = resample(audio, rate, sample_rate)
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if not np.isfinite(audio).all():
        raise ValueError("the file holds NaN or infinite samples")
    return np.clip(audio, -1.0, 1.0)  # float WAVs may overshoot; the model takes [-1, 1]


def _events(model, hyp) -> list[dict]:
    """<EOU>/<EOB> tokens of a hypothesis as timed events (end of the frame that emitted them)."""
    names = {i: s.strip("<>").lower() for s, i in model.special_ids().items()}
    frame = model.cfg.frame_seconds
    return [{"type": names[y], "time": round((t + 1) * frame, 3)}
            for y, t in zip(hyp.y_sequence, hyp.timestamps) if y in names]


def transcribe_offline(model, audio, beam: int = 1) -> dict:
    """Whole-file decoding -> {"text", "words", "events"}."""
    hyp = model.transcribe(audio, beam_size=beam)[0]
    words = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in hyp.words]
    return {"text": hyp.text, "words": words, "events": _events(model, hyp)}


def transcribe_streaming(model, audio) -> dict:
    """Feed `audio` through a StreamingTranscriber in 80 ms chunks -> {"text", "words", "events", "utterances"}.

    Words and events come from the transcriber's token timestamps; utterances from its final results.
    """
    from minivox.asr import StreamingTranscriber

    transcriber = StreamingTranscriber(model)
    chunk = round(STREAM_CHUNK_S * model.cfg.features.sample_rate)
    results = []
    for start in range(0, len(audio), chunk):
        results += transcriber.step(audio[start:start + chunk])
    results += transcriber.flush()
    hyp = transcriber.stream_hypothesis  # every token of the stream, with its frame
    utterances, text = [], ""
    for r in results:
        text += r.text
        if r.is_final:
            utterances.append({"text": text.strip(), "end": round(r.audio_time, 3),
                               "eou_latency": None if r.eou_latency is None else round(r.eou_latency, 3),
                               "eob_latency": None if r.eob_latency is None else round(r.eob_latency, 3)})
            text = ""
    words = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in hyp.words]
    return {"text": " ".join(u["text"] for u in utterances if u["text"]), "words": words,
            "events": _events(model, hyp), "utterances": utterances}
