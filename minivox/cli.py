"""The `minivox` command.

Each subcommand is registered by a small `register(subparsers)` function and imports its heavy
modules (torch, numba) only when it runs, so `minivox --help` stays instant.

    minivox info                      versions, threads, numba/CUDA, bundled checkpoints
    minivox selftest                  run the audio frontend end to end on a generated signal
    minivox wer REF HYP               word/character error rates with S/D/I counts
    minivox der REF.rttm HYP.rttm     diarization error rate (miss, false alarm, confusion) and JER
    minivox data ...                  training data: voices, synth, text, dialogues, mix, import
    minivox transcribe IN.wav         speech to text with the streaming Conformer-RNNT
    minivox synthesize "text" -o W    text to speech with FastPitch + HiFiGAN
    minivox chat [--once "..."]       talk to the LLM (local model or an OpenAI-compatible server)
    minivox serve-llm --port 8000     serve the local LLM over the OpenAI chat-completions API

The command line is the top of the import graph, so it may register serve/'s `serve-llm`;
nothing inside minivox/ imports serve/ or train/.
"""

from __future__ import annotations

import argparse
import sys


def _info(args: argparse.Namespace) -> int:
    """Print versions, thread counts, numba/CUDA availability and bundled checkpoints."""
    import platform

    import numpy
    import torch

    import minivox
    from minivox.pretrained import PRETRAINED_DIR, bundled_checkpoints

    rows = [
        ("minivox", minivox.__version__),
        ("python", platform.python_version()),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("torch threads", f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op"),
        ("torch CUDA", _cuda_summary(torch)),
        ("numpy", numpy.__version__),
    ]
    for name in ("numba", "sentencepiece", "websockets", "tqdm"):
        rows.append((name, _version_of(name)))
    rows.append(("numba CUDA", _numba_cuda_summary()))
    found = bundled_checkpoints()
    rows.append(("checkpoints", f"{len(found)} in {PRETRAINED_DIR}"))
    rows += [("", path.name) for path in found]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _version_of(module_name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module_name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cuda_summary(torch) -> str:
    if not torch.cuda.is_available():
        return "not available"
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return f"{torch.version.cuda} ({names})"


def _numba_cuda_summary() -> str:
    try:
        from numba import cuda
    except ImportError:
        return "numba not installed"
    try:
        return "available" if cuda.is_available() else "not available (kernels run on CPU or under NUMBA_ENABLE_CUDASIM=1)"
    except Exception as exc:  # a broken driver must not break `minivox info`
        return f"not available ({exc})"


def _selftest(args: argparse.Namespace) -> int:
    """Write a 44.1 kHz stereo WAV, read it back, resample to 16 kHz and compute log-mel features
    offline and through the streaming bufferer; print how far apart they are and how fast each ran."""
    import tempfile
    import time
    from pathlib import Path

    import numpy as np
    import torch

    from minivox.audio import ASR_FEATURES, LogMel, Resampler, StreamingFeatureBufferer, read_wav, resample, write_wav

    source_rate, seconds = 44100, args.seconds
    t = np.arange(int(source_rate * seconds)) / source_rate
    chirp = 0.3 * np.sin(2 * np.pi * (100 * t + (4000 - 100) / (2 * seconds) * t**2))  # 100 Hz -> 4 kHz sweep
    tones = 0.2 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2  # 440 Hz, 3 Hz tremolo
    stereo = np.stack([chirp + tones, chirp - tones], axis=1).astype(np.float32)  # [S, 2]

    report: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "selftest.wav"
        start = time.perf_counter()
        write_wav(path, stereo, source_rate, encoding="float32")
        audio, rate = read_wav(path, mono=True)  # [S]
        report.append(("WAV write + read", f"{path.stat().st_size / 1e6:.1f} MB float32 stereo, "
                       f"{(time.perf_counter() - start) * 1e3:.1f} ms, round trip exact: "
                       f"{np.array_equal(audio, stereo.mean(axis=1))}"))

    start = time.perf_counter()
    offline_16k = resample(torch.from_numpy(audio), rate, 16000)  # [S16]
    offline_time = time.perf_counter() - start
    features, _ = LogMel(ASR_FEATURES)(offline_16k[None])  # [1, 80, T]
    report.append(("resample 44.1k -> 16k", f"{offline_16k.numel()} samples in {offline_time * 1e3:.1f} ms "
                   f"({seconds / offline_time:.0f}x real time)"))

    chunk = source_rate // 50  # 20 ms microphone frames
    resampler, bufferer = Resampler(rate, 16000), StreamingFeatureBufferer(ASR_FEATURES)
    pieces_16k, frames = [], []
    start = time.perf_counter()
    for begin in range(0, len(audio), chunk):
        piece = resampler.process(torch.from_numpy(audio[begin:begin + chunk]))
        pieces_16k.append(piece)
        frames.append(bufferer.push(piece))
    tail = resampler.flush()
    pieces_16k.append(tail)
    frames += [bufferer.push(tail), bufferer.flush()]
    stream_time = time.perf_counter() - start
    streamed_16k, streamed = torch.cat(pieces_16k), torch.cat(frames, dim=1)  # [S16], [80, T]
    report.append(("streaming, 20 ms chunks", f"{len(range(0, len(audio), chunk))} chunks in {stream_time * 1e3:.1f} ms "
                   f"({stream_time / len(range(0, len(audio), chunk)) * 1e6:.0f} us per chunk)"))
    report.append(("  resampled audio", f"max |streamed - offline| = {(streamed_16k - offline_16k).abs().max():.2e}"))
    # The bufferer must reproduce LogMel on the same samples; the resampler's float error (~1e-7)
    # is then amplified only where log(mel + 2^-24) looks at near-silent bands.
    reference, _ = LogMel(ASR_FEATURES)(streamed_16k[None])  # [1, 80, T]
    bufferer_error = (streamed - reference[0]).abs().max() if streamed.shape == reference[0].shape else float("inf")
    report.append(("  log-mel features", f"{streamed.shape[1]} frames x {streamed.shape[0]} mels, max |streamed - "
                   f"offline| = {bufferer_error:.2e} on the same samples, "
                   f"{(streamed - features[0]).abs().max():.2e} end to end"))
    width = max(len(name) for name, _ in report)
    print(f"minivox selftest: {seconds:.0f} s of a 44.1 kHz stereo chirp + tremolo tone")
    for name, value in report:
        print(f"  {name:<{width}}  {value}")
    ok = bufferer_error <= 1e-4 and (streamed_16k - offline_16k).abs().max() <= 1e-5
    print("selftest passed" if ok else "selftest FAILED: streaming and offline features differ")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `minivox` command, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="minivox",
        description="minivox: a compact, read-along real-time voice agent (ASR, diarization, LLM, TTS).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="versions, torch threads, numba/CUDA availability, bundled checkpoints")
    info.set_defaults(func=_info)
    selftest = sub.add_parser("selftest", help="run the audio frontend end to end on a generated signal")
    selftest.add_argument("--seconds", type=float, default=10.0, help="length of the test signal (default 10)")
    selftest.set_defaults(func=_selftest)
    from minivox import metrics  # standard library only: keeps --help instant

    metrics.register(sub)
    from minivox.data import cli as data_cli

    data_cli.register(sub)
    from minivox import chat, transcribe, tts
    from minivox.serve import openai_api

    transcribe.register(sub)
    tts.register(sub)
    chat.register(sub)
    openai_api.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `minivox` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
