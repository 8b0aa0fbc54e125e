"""Benchmark: the ASR encoder (training step, offline forward) and the streaming transcriber.

Usage (from the repository root):

    .venv/bin/python bench/asr.py                         # random-init models, ~1 minute
    .venv/bin/python bench/asr.py --checkpoint minivox/pretrained/asr_demo.pt --audio speech.wav

Prints two markdown tables.

1. Encoder: for the three sizes DESIGN.md §9 measured with NeMo's own FastConformer encoder
   (8x dw_striding causal subsampling, rel-pos attention, [70, 1] context), the median time of
   one training step on 16 utterances x 5 s (forward, backward, AdamW step; dropout on) with
   --train-threads threads, and of one offline forward of 5 s on one thread, beside NeMo's
   figures from §9 (measured on this kind of 2-core machine), or, with --peer-nemo PYTHON, beside
   NeMo's own encoder of the same size timed in the same run (bench/nemo_peer.py in a NeMo venv:
   `python3 -m venv ../nemo-venv && ../nemo-venv/bin/pip install torch==2.13.0 "nemo-toolkit[asr]==3.0.0"`).
2. Streaming: the demo preset (or --checkpoint) in a StreamingTranscriber fed 80 ms chunks on
   one thread: real-time factor (compute / audio), compute per encoder chunk p50/p95, and the
   algorithmic latency (how long a sample waits for the chunk that first reports it: uniform
   over one chunk for chunked-limited attention, whatever the compute). A random-init model
   has its blank bias set so that greedy search emits about one token per four frames (~3 per
   second, as a trained model on speech); decoding cost depends on that rate.

3. Quality (with --checkpoint and --eval MANIFEST, repeatable; --pocketsphinx adds Debian's
   recorded test speech): WER of offline greedy and modified beam search (--beam), and, for
   manifests with `trail_silence` (the synthesised corpora), end-of-utterance detection by the
   streaming transcriber: each utterance streamed with EOU_TAIL_S of silence appended, an
   `<EOU>` result counts as a detection at its `audio_time`, scored against the end of speech
   (`speech_end`: the envelope's last frame within 35 dB of the loudest, not the corpus's
   duration - trail_silence, which includes the engines' own trailing near-silence) by
   minivox.metrics.eou_metrics (precision, recall, latency
   p50/p90). "... at 80 ms steps" is the latency to when the `<EOU>` result comes out of a
   transcriber fed 80 ms at a time, as the agent feeds it: `audio_time` plus the wait for the
   rest of the step (~half a 160 ms [70, 1] chunk on average). Backchannel rows are scored apart (how often they end in `<EOB>` and never `<EOU>`).
   --eou-threshold P adds rows for the transcriber ending utterances where `<EOU>` reaches
   probability P rather than where it is the likeliest output (the agent's setting).

       .venv/bin/python bench/asr.py --skip-encoder --checkpoint minivox/pretrained/asr_demo.pt \
           --eval data/asr/test.jsonl --pocketsphinx --beam 4

   --peer-pocketsphinx adds a table of pocketsphinx's own WER on the same rows (PyPI pocketsphinx,
   in the data venv: a recogniser trained on real speech, for scale; the pocketsphinx test
   recordings are its own test data, so that row flatters it).

   --pocketsphinx reads /usr/share/pocketsphinx/test/data (apt install pocketsphinx-testdata):
   cards/001-005.wav, librivox/sense_and_sensibility_01_austen_64kb-0870..0930.wav and
   goforward.raw ("go forward ten meters"), 11 recordings of real speech with their reference
   transcripts; never used for training.

The machine is shared: the load average is printed with the tables; rerun on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from encoder_timing import BATCH, SECONDS, time_encoder  # bench/: this script's folder is on sys.path
from realspeech import pocketsphinx_rows

ROOT = Path(__file__).resolve().parents[1]
# DESIGN §9: NeMo FastConformer encoder training step (16 x 5 s, 2 threads), seconds.
NEMO_TRAIN_STEP = {(176, 8): 1.5, (176, 16): 1.7, (256, 8): 2.3}
NEMO_OFFLINE_MS = "34-60"  # NeMo offline forward of 5 s on one thread (§9 gives the range)
PEER_ROUNDS = 3  # --peer-nemo: interleaved rounds; each implementation's best is reported
TOKEN_RATE = 0.25  # tokens per 80 ms frame a random-init model is tuned to (~3 tokens/s)


def bench_encoder(d_model: int, n_layers: int, train_threads: int, repeats: int) -> dict:
    from minivox.conformer import ConformerConfig, ConformerEncoder

    torch.manual_seed(0)
    encoder = ConformerEncoder(ConformerConfig(d_model=d_model, n_layers=n_layers, att_context_size=(70, 1)))
    return time_encoder(encoder, lambda enc, feats, lengths: enc(feats, lengths)[0], train_threads, repeats)


def nemo_peer(python: str, train_threads: int, repeats: int) -> dict:
    """{(d_model, n_layers): timings} of NeMo's own encoder, from bench/nemo_peer.py run by `python`
    (a virtual environment with nemo-toolkit[asr] and the same torch)."""
    import json
    import subprocess

    sizes = ",".join(f"{d}x{n}" for d, n in NEMO_TRAIN_STEP)
    cmd = [python, str(ROOT / "bench" / "nemo_peer.py"), "--sizes", sizes, "--train-threads", str(train_threads),
           "--repeats", str(repeats)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    except OSError as exc:
        raise SystemExit(f"bench/asr.py: cannot run the NeMo peer ({python}): {exc}") from None
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or len(rows) != len(NEMO_TRAIN_STEP):
        raise SystemExit(f"bench/asr.py: the NeMo peer failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return {(r["d_model"], r["n_layers"]): r for r in rows}


def random_words_tokenizer(vocab_size: int):
    from minivox.asr import EOU
    from minivox.text import Tokenizer

    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(2, 8))) for _ in range(3000)]
    lines = [" ".join(rng.choice(words, 8)) + EOU for _ in range(3000)]
    return Tokenizer.train(lines, vocab_size=vocab_size)


def demo_model(checkpoint: str | None):
    """The model to stream: a checkpoint, or the demo preset at random init with a tuned blank bias."""
    from minivox.asr import Transducer, load_model_config

    if checkpoint:
        return Transducer.from_checkpoint(checkpoint), "checkpoint"
    cfg = load_model_config(ROOT / "configs" / "asr_demo.toml")
    torch.manual_seed(0)
    model = Transducer(cfg, random_words_tokenizer(cfg.tokenizer.vocab_size)).eval()
    # Bisect the blank bias until greedy search emits TOKEN_RATE tokens per frame on synthetic audio.
    from minivox.decoding import greedy_batch
    torch.set_num_threads(1)
    enc, lengths = model.encode_audio(synthetic_audio(10.0, seed=1))
    bias = model.joint.joint_net[2].bias
    low, high = -20.0, 20.0
    with torch.no_grad():
        base = float(bias[model.blank_id])
        for _ in range(12):
            bias[model.blank_id] = base + (low + high) / 2
            tokens = len(greedy_batch(model.decoder, model.joint, enc, lengths).hyps[0].y_sequence)
            low, high = ((low + high) / 2, high) if tokens > TOKEN_RATE * enc.shape[1] else (low, (low + high) / 2)
    return model, "asr_demo preset, random init"


def synthetic_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise in 0.3-2 s bursts with pauses: speech-like on/off structure, no content."""
    rng = np.random.default_rng(seed)
    audio = np.zeros(int(seconds * 16000), np.float32)
    at = 0
    while at < audio.size:
        burst, pause = int(rng.uniform(0.3, 2.0) * 16000), int(rng.uniform(0.1, 0.8) * 16000)
        audio[at:at + burst] = rng.standard_normal(min(burst, audio.size - at)) * 0.1
        at += burst + pause
    return audio


def bench_streaming(model, audio: np.ndarray, chunk_ms: int = 80) -> dict:
    from minivox.asr import StreamingTranscriber

    torch.set_num_threads(1)
    transcriber = StreamingTranscriber(model)
    step = int(16000 * chunk_ms / 1000)
    for i in range(0, 16000, step):  # warm-up second, then a fresh stream
        transcriber.step(audio[i:i + step])
    transcriber.reset()
    chunk_compute, total, text = [], 0.0, []
    for i in range(0, audio.size, step):
        start = time.perf_counter()
        results = transcriber.step(audio[i:i + step])
        total += time.perf_counter() - start
        chunk_compute += [r.processing_time for r in results if r.processing_time > 0]
        text += [r.text for r in results]
    start = time.perf_counter()
    transcriber.flush()
    total += time.perf_counter() - start
    chunk_s = transcriber.chunk_frames * model.cfg.frame_seconds
    ms = np.array(chunk_compute) * 1e3
    return {"rtf": total / (audio.size / 16000), "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "chunk_ms": chunk_s * 1e3, "chars": len("".join(text))}


# ---------------------------------------------------------------------------------------
# Quality: WER and end-of-utterance detection.
# ---------------------------------------------------------------------------------------

EOU_TAIL_S = 2.0  # silence appended to each utterance when scoring EOU detection (the model's pause to decide)
EOU_MAX_LATENCY_S = 2.0  # a detection later than this after the end of speech is late (a miss)


def manifest_rows(path: str, limit: int) -> list[dict]:
    """Rows of a manifest (every k-th when `limit` is smaller), audio loaded as `pcm` at 16 kHz."""
    from minivox.data.manifest import read_manifest
    from minivox.train.asr import load_audio

    rows = read_manifest(path)
    if 0 < limit < len(rows):
        rows = [rows[k * len(rows) // limit] for k in range(limit)]
    return [{**r, "pcm": load_audio(r["audio_filepath"], 16000)} for r in rows]


def eval_wer(model, rows: list[dict], beam: int) -> float:
    from minivox.metrics import word_error_rate

    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["pcm"]))  # similar lengths batch well
    hyps = model.transcribe([rows[i]["pcm"] for i in order], beam_size=beam)
    return word_error_rate([rows[i]["text"] for i in order], [h.text for h in hyps]).rate


def pocketsphinx_wer(rows: list[dict]) -> float:
    """WER of pocketsphinx (PyPI `pocketsphinx`, its bundled US English model trained on real speech)
    on the same rows: a peer recogniser for scale."""
    from pocketsphinx import Decoder

    from minivox.metrics import word_error_rate

    decoder = Decoder(samprate=16000)
    hyps = []
    for r in rows:
        decoder.start_utt()
        decoder.process_raw((np.clip(r["pcm"], -1, 1) * 32767).astype("<i2").tobytes(), full_utt=True)
        decoder.end_utt()
        hyps.append(decoder.hyp().hypstr.lower() if decoder.hyp() else "")
    return word_error_rate([r["text"] for r in rows], hyps).rate


def speech_end(row: dict) -> float:
    """When a corpus row's speech ends (s): its last 10 ms frame within 35 dB of the loudest
    (minivox.audio.speech_bounds), never after `duration - trail_silence`, where the corpus
    appended silence. The speech engines end their output with up to ~0.5 s of near-silence of
    their own (dev: 34 ms median, 200 ms p90), which `duration - trail_silence` counts as speech.
    Rows with added noise, where the envelope cannot tell, keep the corpus's end."""
    corpus_end = row["duration"] - row["trail_silence"]
    if row.get("noise", "none") != "none":
        return corpus_end
    from minivox.audio import speech_bounds

    bounds = speech_bounds(row["pcm"], 16000)
    return min(corpus_end, bounds[1]) if bounds else corpus_end


def eval_eou(model, rows: list[dict], eou_threshold: float | None = None) -> dict:
    """Stream each utterance (+ EOU_TAIL_S of silence) -> EOU precision/recall/latency, EOB accuracy."""
    from minivox.asr import StreamingTranscriber
    from minivox.metrics import eou_metrics

    transcriber = StreamingTranscriber(model, eou_threshold=eou_threshold)
    step = 1280  # 80 ms, as the agent steps its ASR
    ends, detections, arrivals, backchannel_ok, backchannels = [], [], [], 0, 0
    tail = np.zeros(int(EOU_TAIL_S * 16000), np.float32)
    for r in rows:
        audio = np.concatenate([r["pcm"], tail])
        results, arrived = [], []  # arrived: s of audio streamed when each result came out
        for i in range(0, audio.size, step):
            out = transcriber.step(audio[i:i + step])
            results += out
            arrived += [min(i + step, audio.size) / 16000] * len(out)
        out = transcriber.flush()
        results += out
        arrived += [audio.size / 16000] * len(out)
        is_eou = [x.eou_latency is not None for x in results]
        if r.get("backchannel"):
            backchannels += 1
            backchannel_ok += not any(is_eou) and any(x.eob_latency is not None for x in results)
        else:
            ends.append(speech_end(r))
            detections.append([x.audio_time for x, e in zip(results, is_eou) if e])
            arrivals.append([t for t, e in zip(arrived, is_eou) if e])
    scores = eou_metrics(ends, detections, max_latency=EOU_MAX_LATENCY_S)
    at_steps = eou_metrics(ends, arrivals, max_latency=EOU_MAX_LATENCY_S)
    return {"eou": scores, "at_steps": at_steps, "backchannels": backchannels,
            "eob_accuracy": backchannel_ok / backchannels if backchannels else float("nan")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-threads", type=int, default=2, help="threads for the training step (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--checkpoint", help="stream this ASR checkpoint instead of a random-init demo model")
    parser.add_argument("--audio", help="a WAV file to stream (default: 30 s of synthetic bursts)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the synthetic stream")
    parser.add_argument("--skip-encoder", action="store_true", help="only the streaming (and quality) tables")
    parser.add_argument("--manifest", help="stream the first --utterances rows of this manifest, one after another "
                        "(real speech; instead of --audio)")
    parser.add_argument("--utterances", type=int, default=20, help="rows streamed with --manifest (default 20)")
    parser.add_argument("--eval", action="append", default=[], metavar="MANIFEST",
                        help="quality table: WER (greedy, beam) and EOU detection on this manifest (repeatable)")
    parser.add_argument("--eval-limit", type=int, default=0, help="score every k-th row, this many (0: all)")
    parser.add_argument("--eou-limit", type=int, default=400, help="rows streamed for EOU scoring (0: all)")
    parser.add_argument("--pocketsphinx", action="store_true",
                        help="quality table row for Debian's pocketsphinx-testdata recordings (real speech)")
    parser.add_argument("--peer-pocketsphinx", action="store_true",
                        help="also score pocketsphinx (pip install pocketsphinx) on the same rows, for scale")
    parser.add_argument("--beam", type=int, default=4, help="beam size of the beam-search WER (default 4)")
    parser.add_argument("--eval-threads", type=int, default=2, help="threads for the offline WER decoding")
    parser.add_argument("--eou-threshold", action="append", default=[], type=float, metavar="P",
                        help="also score EOU detection with StreamingTranscriber(eou_threshold=P), an <EOU> "
                             "wherever its probability reaches P (repeatable; e.g. 0.1 0.2)")
    parser.add_argument("--peer-nemo", metavar="PYTHON",
                        help="time NeMo's own encoder in the same run with this interpreter (a venv with "
                             "nemo-toolkit[asr]; see bench/nemo_peer.py) instead of quoting DESIGN §9's figures")
    parser.add_argument("--att-context", action="append", default=[], metavar="LEFT,RIGHT",
                        help="stream and score with this attention context (repeatable; default: the checkpoint's), "
                             "e.g. --att-context 70,1 --att-context 70,0 for a multi-look-ahead model")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")

    if not args.skip_encoder:
        # With the peer: best of ROUNDS interleaved rounds (NeMo's sizes, then ours), as bench/llm.py
        # does, since a shared 2-core machine varies by tens of percent from minute to minute.
        rounds = PEER_ROUNDS if args.peer_nemo else 1
        ours, theirs = {size: [] for size in NEMO_TRAIN_STEP}, {size: [] for size in NEMO_TRAIN_STEP}
        for _ in range(rounds):
            if args.peer_nemo:
                for size, timing in nemo_peer(args.peer_nemo, args.train_threads, args.repeats).items():
                    theirs[size].append(timing)
            for d, n in NEMO_TRAIN_STEP:
                ours[(d, n)].append(bench_encoder(d, n, args.train_threads, args.repeats))
        best = lambda runs: {k: min(r[k] for r in runs) for k in ("params", "step", "offline")}  # noqa: E731
        source = f"measured in this run, best of {rounds} interleaved rounds" if args.peer_nemo else \
            "DESIGN §9, not run here"
        print(f"| encoder d_model/layers | params | train step {BATCH} x {SECONDS:g} s, {args.train_threads} threads "
              f"| NeMo ({source}) | speed-up | offline forward {SECONDS:g} s, 1 thread | NeMo | speed-up |")
        print("|---|---|---|---|---|---|---|---|")
        for (d, n), nemo_step in NEMO_TRAIN_STEP.items():
            r = best(ours[(d, n)])
            if args.peer_nemo:
                nemo = best(theirs[(d, n)])
                assert nemo["params"] == r["params"], (nemo["params"], r["params"])  # the same encoder size
                step_cells = f"{nemo['step']:.2f} s | {nemo['step'] / r['step']:.2f}x"
                offline_cells = f"{nemo['offline'] * 1e3:.1f} ms | {nemo['offline'] / r['offline']:.2f}x"
            else:
                step_cells = f"{nemo_step:.1f} s | {nemo_step / r['step']:.1f}x"
                offline_cells = f"{NEMO_OFFLINE_MS} ms | -"
            print(f"| {d} / {n} | {r['params'] / 1e6:.1f}M | {r['step']:.2f} s "
                  f"({BATCH * SECONDS / r['step']:.0f} s audio/s) | {step_cells} "
                  f"| {r['offline'] * 1e3:.1f} ms | {offline_cells} |", flush=True)
        print()

    model, label = demo_model(args.checkpoint)
    try:
        contexts = [tuple(int(v) for v in c.split(",")) for c in args.att_context] or \
            [tuple(model.cfg.encoder.att_context_size)]
    except ValueError:
        raise SystemExit(f"bench/asr.py: --att-context takes LEFT,RIGHT (e.g. 70,0), got {args.att_context}") from None
    if args.audio:
        from minivox.audio import read_wav, resample
        audio, rate = read_wav(args.audio, mono=True)
        audio = np.asarray(resample(audio, rate, 16000) if rate != 16000 else audio, dtype=np.float32)
    elif args.manifest:
        from minivox.data.manifest import read_manifest
        from minivox.train.asr import load_audio
        audio = np.concatenate([load_audio(r["audio_filepath"], 16000)
                                for r in read_manifest(args.manifest)[:args.utterances]])
    else:
        audio = synthetic_audio(args.seconds)
    params = sum(p.numel() for p in model.parameters())
    print("| streaming model | params | context | chunk | RTF, 1 thread | compute per chunk p50 / p95 "
          "| algorithmic latency mean / max |")
    print("|---|---|---|---|---|---|---|")
    for context in contexts:
        model.set_att_context(context)
        r = bench_streaming(model, audio)
        print(f"| {label} | {params / 1e6:.1f}M | {list(context)} | {r['chunk_ms']:.0f} ms | {r['rtf']:.3f} "
              f"| {r['p50']:.1f} / {r['p95']:.1f} ms | {r['chunk_ms'] / 2:.0f} / {r['chunk_ms']:.0f} ms |")
    print(f"\n{audio.size / 16000:.1f} s streamed in 80 ms chunks; {r['chars']} characters of text; "
          f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    sets = [(Path(m).name, lambda m=m: manifest_rows(m, args.eval_limit)) for m in args.eval]
    if args.pocketsphinx:
        sets.append(("pocketsphinx-testdata (real speech)", pocketsphinx_rows))
    if sets:
        if not args.checkpoint:
            raise SystemExit("--eval / --pocketsphinx need --checkpoint")
        print(f"\n| set | context | utterances | WER greedy | WER beam {args.beam} | EOU precision / recall | "
              "<EOU>s before the speech ended | EOU latency p50 / p90 | ... at 80 ms steps | backchannels ending in <EOB> |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        peers = []
        for (name, load), context in ((s, c) for s in sets for c in contexts):
            model.set_att_context(context)
            rows = load()
            torch.set_num_threads(args.eval_threads)
            greedy, beam = eval_wer(model, rows, 1), eval_wer(model, rows, args.beam)
            eou_cells = {None: "- | - | - | - | -"}
            if rows and "trail_silence" in rows[0]:
                torch.set_num_threads(1)
                chosen = rows if not 0 < args.eou_limit < len(rows) else \
                    [rows[k * len(rows) // args.eou_limit] for k in range(args.eou_limit)]
                for threshold in [None, *args.eou_threshold]:
                    e = eval_eou(model, chosen, threshold)
                    score, steps = e["eou"], e["at_steps"]
                    eou_cells[threshold] = (f"{score.precision:.3f} / {score.recall:.3f} ({score.num_utterances}) | "
                                            f"{score.false_early} | {score.latency_p50 * 1e3:.0f} / {score.latency_p90 * 1e3:.0f} ms | "
                                            f"{steps.latency_p50 * 1e3:.0f} / {steps.latency_p90 * 1e3:.0f} ms | "
                                            f"{e['eob_accuracy']:.2f} ({e['backchannels']})")
            for threshold, cells in eou_cells.items():  # WER does not depend on the EOU threshold
                how = "" if threshold is None else f", <EOU> p >= {threshold:g}"
                print(f"| {name} | {list(context)}{how} | {len(rows)} | {100 * greedy:.2f}% | {100 * beam:.2f}% "
                      f"| {cells} |", flush=True)
            if args.peer_pocketsphinx and context == contexts[0]:
                peers.append((name, len(rows), greedy, beam, pocketsphinx_wer(rows)))
        if peers:
            print(f"\n| set | utterances | pocketsphinx WER (peer) | minivox {list(contexts[0])} greedy / beam {args.beam} |")
            print("|---|---|---|---|")
            for name, n, greedy, beam, sphinx in peers:
                print(f"| {name} | {n} | {100 * sphinx:.2f}% | {100 * greedy:.2f}% / {100 * beam:.2f}% |")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as exc:  # a missing or unreadable checkpoint, manifest or audio file: say which
        sys.exit(f"bench/asr.py: {exc}")
