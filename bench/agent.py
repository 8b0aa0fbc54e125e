"""Benchmark: the voice agent's voice-to-voice latency and how many sessions stay real time.

Usage (from the repository root; the bundled demo models, or others given to the server after `--`,
e.g. `-- 'models.asr=PATH'`):

    .venv/bin/python bench/agent.py [--turns 20] [--sessions 1,2,4,6]

The agent runs as its own process (`python -m minivox.serve demo`, so the clients here do not
share its interpreter); the clients are serve/client.py's `run_client`, streaming in real time
(20 ms frames paced by the clock) as a microphone would. Questions (QUESTIONS below) are spoken by
minivox's demo voice, or with --voice by a speech-engine voice (e.g. pico:en-GB, one the demo ASR
never trained on); --voice recorded streams real people instead (bench/realspeech.py: the 11
pocketsphinx test recordings, read cards and a novel).

    latency      per turn: end of the user's speech in the sent audio (the agent's VAD run over
                 the file) -> arrival of the turn's first reply audio at the client; p50/p90 over
                 --turns answered turns, one session per turn (questions that got no reply are
                 listed with what the recogniser heard, and more are asked, up to 2 x --turns;
                 a reply that starts before the question is over, a turn ended in a pause, is
                 counted apart and the latency is that of the next reply, if any).
                 Beside it the server's own breakdown
                 (medians): speech end -> turn declared over, -> first LLM text, -> first TTS audio,
                 and how many turns kept an early reply (serve/early_reply.py; ~0 ms to first text).
    sessions     N clients at once, each asking two questions; an N is real time when no session's
                 input ever waited more than 200 ms from arrival until the ASR had processed it
                 (the server's max_input_lag_ms). The table's last real-time N is the capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "What time is it?", "What is the date today?", "What is twelve times seven?", "Tell me a joke.",
    "Hello there.", "How are you doing today?", "Convert five miles to kilometers.",
    "Set a timer for ten seconds.", "What does the word happy mean?", "What day is it today?",
    "What is one hundred minus forty two?", "Who are you?", "Thanks, that was helpful.",
    "What can you do?", "How many grams are in two pounds?", "What is nine plus sixteen?",
    "Do you like music?", "Good morning.", "What is the time now?", "Good night.",
]
REAL_TIME_LAG_MS = 200


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def start_server(port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "minivox.serve", "demo", "--port", str(port), "--max-sessions", "32", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    for line in proc.stdout:  # wait for "listening"
        if "listening" in line:
            return proc
        if time.time() > deadline:
            break
    proc.kill()
    raise SystemExit(f"the agent did not start: {' '.join(cmd)}")


def spoken_questions(voice: str = "minivox") -> list[tuple[str, np.ndarray]]:
    """(text, audio) of each question, the audio at 16 kHz mono with 0.5 s of silence before it,
    spoken by minivox's demo TTS or by a speech-engine voice of minivox.data.voices ("pico:en-GB",
    "flite:rms", ...); or, for "recorded", the 11 real recordings of bench/realspeech.py instead of
    QUESTIONS (people reading cards and a novel: not questions, but real voices, which the speech
    engines are not)."""
    import torch

    from minivox.audio import resample

    if voice == "recorded":
        from realspeech import pocketsphinx_rows

        return [(r["text"], np.concatenate([np.zeros(8000, np.float32), np.asarray(r["pcm"], np.float32)]))
                for r in pocketsphinx_rows()]
    if voice == "minivox":
        from minivox.tts import TTS

        torch.set_num_threads(1)
        speak = TTS.from_checkpoints().synthesize
    else:
        from minivox.data.voices import catalogue_voice, install_command, synthesize, voice_installed

        engine_voice = catalogue_voice(voice)
        if not voice_installed(engine_voice):
            raise SystemExit(f"voice {voice} is not installed: {install_command(engine_voice)}")
        speak = lambda text: synthesize(engine_voice, text)  # noqa: E731
    out = []
    for q in QUESTIONS:
        audio, rate = speak(q)
        audio16 = np.asarray(resample(audio, rate, 16000), dtype=np.float32)
        out.append((q, np.concatenate([np.zeros(8000, np.float32), audio16])))
    return out


async def latency(url: str, questions: list[tuple[str, np.ndarray]], turns: int) -> dict:
    from minivox.serve.client import run_client

    rows, missed, asked, cut_in = [], [], 0, 0
    while len(rows) < turns and asked < 2 * turns:  # ask until `turns` replies came (a turn can go unanswered)
        k = asked % len(questions)
        result = await run_client(url, questions[k][1], 16000, realtime=True, tail_s=12)
        asked += 1
        cut_in += any(t.premature for t in result.turns)  # a turn ended in a pause: a reply to part of the question
        turn = next((t for t in result.turns if not t.premature), None)
        if turn is None or turn.latency_ms is None:
            missed.append(f"{questions[k][0]!r} heard as {turn.heard if turn else ''!r}")
        else:
            rows.append((turn.latency_ms, turn.server_metrics or {}))
    measured = [r[0] for r in rows]
    server = lambda key: statistics.median([m[key] for _, m in rows if m.get(key) is not None] or [float("nan")])  # noqa: E731
    return {"turns": len(measured), "asked": asked, "missed": missed, "cut_in": cut_in,
            "p50": percentile(measured, 50), "p90": percentile(measured, 90),
            "turn_detect": server("turn_detect_ms"), "llm_first": server("llm_first_text_ms"),
            "tts_first": server("tts_first_audio_ms"), "early": sum(1 for _, m in rows if m.get("early_reply")),
            "continued": sum(1 for _, m in rows if m.get("continues"))}


async def concurrent(url: str, questions: list[tuple[str, np.ndarray]], n: int) -> dict:
    from minivox.serve.client import run_client

    gap = np.zeros(16000 * 4, np.float32)

    async def one(i: int):
        a, b = questions[i % len(questions)][1], questions[(i + 7) % len(questions)][1]
        await asyncio.sleep(0.37 * i)  # stagger the starts a little, as real users would
        return await run_client(url, np.concatenate([a, gap, b]), 16000, realtime=True, tail_s=15)

    results = await asyncio.gather(*(one(i) for i in range(n)))
    lags = [t.server_metrics.get("max_input_lag_ms", 0.0) for r in results for t in r.turns if t.server_metrics]
    lat = [t.latency_ms for r in results for t in r.turns if t.latency_ms is not None]
    answered = sum(1 for r in results for t in r.turns if t.audio_samples > 0)
    return {"n": n, "max_lag": max(lags) if lags else float("nan"), "p50": percentile(lat, 50),
            "answered": answered, "asked": 2 * n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=20, help="turns for the latency figures (default 20)")
    parser.add_argument("--sessions", default="1,2,4,6", help="concurrent-session counts to try (default 1,2,4,6; '' skips the table)")
    parser.add_argument("--voice", default="minivox",
                        help="who asks: minivox (its demo TTS, default), an engine voice such as pico:en-GB, "
                             "flite:rms (`minivox data voices` lists them), or recorded (real speech: the "
                             "pocketsphinx test recordings)")
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("server_args", nargs="*", help="extra arguments for `python -m minivox.serve demo`")
    args = parser.parse_args()

    try:
        sessions = [int(n) for n in args.sessions.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--sessions takes comma-separated counts (e.g. 1,2,4), got {args.sessions!r}")
    questions = spoken_questions(args.voice)
    proc = start_server(args.port, args.server_args)
    url = f"ws://127.0.0.1:{args.port}/ws"
    try:
        lat = asyncio.run(latency(url, questions, args.turns))
        rows = [asyncio.run(concurrent(url, questions, n)) for n in sessions]
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    print(f"voice-to-voice latency over {lat['turns']} answered turns of {lat['asked']} asked (one session each, "
          f"real-time input), questions spoken by {args.voice}, {os.cpu_count()} CPU cores")
    for line in lat["missed"]:
        print(f"  no reply: {line}")
    if lat["cut_in"]:
        print(f"  {lat['cut_in']} of {lat['asked']} questions had a reply start before they were over (a turn "
              "ended in a pause); their latency is that of the reply after the end")
    if lat["continued"]:
        print(f"  {lat['continued']} answered turns went on from a turn cut in a pause (TurnConfig.continue_window_ms): "
              "one joined request")
    print()
    print("| p50 | p90 | server: speech end -> turn end | turn end -> first LLM text | LLM text -> first TTS audio "
          "| early replies kept |")
    print("|---|---|---|---|---|---|")
    print(f"| {lat['p50']:.0f} ms | {lat['p90']:.0f} ms | {lat['turn_detect']:.0f} ms | {lat['llm_first']:.0f} ms "
          f"| {lat['tts_first']:.0f} ms | {lat['early']} of {lat['turns']} |\n")
    if not rows:
        return 0
    print("| concurrent sessions | max input lag | real time (<= 200 ms) | turns answered | latency p50 |")
    print("|---|---|---|---|---|")
    for r in rows:
        ok = r["max_lag"] <= REAL_TIME_LAG_MS
        print(f"| {r['n']} | {r['max_lag']:.0f} ms | {'yes' if ok else 'no'} | {r['answered']}/{r['asked']} "
              f"| {r['p50']:.0f} ms |")
    real = [r["n"] for r in rows if r["max_lag"] <= REAL_TIME_LAG_MS]
    print(f"\nlargest real-time session count tried: {max(real) if real else 0}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
