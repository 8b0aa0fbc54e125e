"""A command-line client: stream a WAV file to the agent as a microphone would, collect the reply.

    python -m minivox.serve client --wav question.wav [--url ws://127.0.0.1:8765/ws]
        [--out reply.wav] [--events events.jsonl] [--realtime | --fast]

The file is sent in 20 ms frames at its own rate and channel count (the server resamples),
in real time by default, followed by silence (as a live microphone would keep sending) until
the agent's reply is over. It prints what the agent heard and said and, per turn, the
voice-to-voice latency: from the end of the user's speech in the file (found with the agent's
own VAD) to the arrival of the turn's first reply audio. With `--fast` frames go as fast as the
server takes them, which tests throughput but makes latencies meaningless.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minivox.serve import protocol as proto

FRAME_MS = 20


@dataclass
class Turn:
    """One bot turn as the client saw it."""

    turn_id: int
    heard: str = ""  # the final user transcription that started it
    said: list[str] = field(default_factory=list)  # bot-transcription sentences
    first_audio: float | None = None  # wall time of its first audio frame
    audio_samples: int = 0
    interrupted: bool = False
    latency_ms: float | None = None  # end of user speech -> first audio
    premature: bool = False  # its first audio came before the file's speech was over (a reply to part of it)
    server_metrics: dict | None = None


@dataclass
class ClientResult:
    turns: list[Turn]
    events: list[dict]  # every JSON event, with "t" = seconds since the connection opened
    reply_audio: np.ndarray  # float32 [S] at reply_rate: all reply audio in arrival order
    reply_rate: int
    errors: list[dict]
    speech_ends: list[float]  # s into the file where the user's speech ends (VAD)


def speech_ends(audio: np.ndarray, rate: int) -> list[float]:
    """Where speech stops in a recording (s), by the agent's VAD at 16 kHz."""
    from minivox.audio import resample
    from minivox.serve.vad import VAD

    mono = audio.mean(axis=1) if audio.ndim == 2 else audio
    mono16 = resample(mono.astype(np.float32), rate, 16000) if rate != 16000 else mono.astype(np.float32)
    vad = VAD()
    events = vad.process(np.asarray(mono16, dtype=np.float32))
    events += vad.process(np.zeros(16000, dtype=np.float32))  # let a final stop through
    return [e.time for e in events if e.kind == "stop"]


async def run_client(url: str, audio: np.ndarray, rate: int, realtime: bool = True, tail_s: float = 8.0,
                     idle_s: float = 1.5, fmt_encoding: str = "pcm_s16le") -> ClientResult:
    """Stream `audio` (float32 [S] or [S, C] at `rate`) to the agent at `url` and collect the reply.

    After the audio, silence is sent until every started bot turn has stopped and `idle_s` has
    passed with nothing new, or `tail_s` seconds at most."""
    from websockets.asyncio.client import connect

    channels = 1 if audio.ndim == 1 else audio.shape[1]
    fmt = proto.AudioFormat(rate, channels, fmt_encoding)
    frame = rate * FRAME_MS // 1000
    ends = speech_ends(audio, rate)
    sent_at: list[float] = []  # wall time each frame was sent
    events, errors, chunks = [], [], []
    turns: dict[int, Turn] = {}
    state = {"last_event": time.monotonic(), "active": set(), "reply_rate": 22050, "last_final": ""}
    t0 = time.monotonic()

    async with connect(url, max_size=None) as ws:
        await ws.send(proto.client_ready(fmt))

        async def receive() -> None:
            async for message in ws:
                now = time.monotonic()
                state["last_event"] = now
                parsed = proto.parse_server_message(message)
                if isinstance(parsed, tuple):  # (seq, pcm16)
                    samples = np.frombuffer(parsed[1], dtype="<i2").astype(np.float32) / 32768
                    chunks.append(samples)
                    turn = turns.get(state.get("tts_turn", -1))
                    if turn is not None:
                        if turn.first_audio is None:
                            turn.first_audio = now
                        turn.audio_samples += len(samples)
                    continue
                parsed["t"] = round(now - t0, 4)
                events.append(parsed)
                kind, tid = parsed.get("type"), parsed.get("turn_id")
                if kind == "bot-ready":
                    state["reply_rate"] = parsed["audio_out"]["sample_rate"]
                elif kind == "user-transcription" and parsed.get("final") and parsed.get("text"):
                    state["last_final"] = parsed["text"]
                elif kind == "bot-llm-started":
                    turns[tid] = Turn(tid, heard=state["last_final"])
                    state["active"].add(tid)
                elif kind == "bot-tts-started":
                    state["tts_turn"] = tid
                elif kind == "bot-transcription" and tid in turns:
                    turns[tid].said.append(parsed["text"])
                elif kind == "metrics" and tid in turns:
                    turns[tid].server_metrics = parsed
                    state["active"].discard(tid)
                elif kind == "interruption":
                    if tid in turns:
                        turns[tid].interrupted = True
                    state["active"].discard(tid)
                elif kind == "error":
                    errors.append(parsed)
                    if parsed.get("code") in ("llm-timeout", "llm-failed", "tts-failed", "internal"):
                        state["active"].discard(tid)

        receiver = asyncio.create_task(receive())
        seq, start = 0, time.monotonic()

        async def send(samples: np.ndarray) -> None:
            nonlocal seq
            if realtime:  # pace by the clock: frame k leaves at k * 20 ms
                delay = start + seq * FRAME_MS / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await ws.send(proto.client_audio_frame(seq, samples, fmt))
            sent_at.append(time.monotonic())
            seq += 1

        try:
            for i in range(0, len(audio) - frame + 1, frame):
                await send(audio[i:i + frame])
            silence = np.zeros((frame,) + audio.shape[1:], dtype=np.float32)
            tail_end = time.monotonic() + tail_s
            while time.monotonic() < tail_end and not receiver.done():
                await send(silence)
                quiet = time.monotonic() - state["last_event"] > idle_s
                if turns and not state["active"] and quiet:
                    break
                if not realtime:
                    await asyncio.sleep(0)  # let the receiver run
        finally:
            await ws.close()
            await asyncio.gather(receiver, return_exceptions=True)

    # Voice-to-voice latency: the latest speech end in the file sent before the turn's first audio.
    for turn in turns.values():
        if turn.first_audio is None:
            continue
        ended = [sent_at[min(int(e * 1000 / FRAME_MS), len(sent_at) - 1)] for e in ends]
        turn.premature = bool(ended) and realtime and turn.first_audio < ended[-1]
        ended = [t for t in ended if t <= turn.first_audio]
        if ended and realtime:
            turn.latency_ms = round((turn.first_audio - max(ended)) * 1000, 1)
    reply = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return ClientResult(sorted(turns.values(), key=lambda t: t.turn_id), events, reply, state["reply_rate"],
                        errors, ends)


def report(result: ClientResult, out=sys.stdout) -> None:
    """Print what was heard and answered, and the latencies."""
    for turn in result.turns:
        said = " ".join(turn.said)
        late = f"{turn.latency_ms:.0f} ms" if turn.latency_ms is not None else "n/a"
        print(f"turn {turn.turn_id}: heard {turn.heard!r}", file=out)
        print(f"         said  {said!r}{' (interrupted)' if turn.interrupted else ''}", file=out)
        print(f"         voice-to-voice latency {late}; reply audio {turn.audio_samples / result.reply_rate:.2f} s",
              file=out)
    if not result.turns:
        print("no reply (was any speech heard? see --events)", file=out)
    for error in result.errors:
        print(f"server error {error.get('code')}: {error.get('message')}", file=out)


def run_client_command(args: argparse.Namespace) -> int:
    from minivox.audio import read_wav, write_wav

    try:
        audio, rate = read_wav(args.wav)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if rate not in proto.SUPPORTED_RATES or (audio.ndim == 2 and audio.shape[1] > 2):
        from minivox.audio import resample

        print(f"note: {args.wav} is {rate} Hz / {1 if audio.ndim == 1 else audio.shape[1]} channels; "
              "sending it as 16 kHz mono", file=sys.stderr)
        mono = audio.mean(axis=1) if audio.ndim == 2 else audio
        audio, rate = np.asarray(resample(mono, rate, 16000), dtype=np.float32), 16000
    try:
        result = asyncio.run(run_client(args.url, audio.astype(np.float32), rate, realtime=not args.fast,
                                        tail_s=args.tail))
    except OSError as exc:
        print(f"error: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # websockets handshake / protocol failures
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    report(result)
    if args.out:
        write_wav(args.out, result.reply_audio, result.reply_rate)
        print(f"reply audio -> {args.out}")
    if args.events:
        Path(args.events).write_text("".join(json.dumps(e) + "\n" for e in result.events), encoding="utf-8")
        print(f"events -> {args.events}")
    return 0 if result.turns and not any(e.get("fatal") for e in result.errors) else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wav", required=True, help="the user's speech (any WAV; 8-48 kHz mono/stereo is sent as is)")
    p.add_argument("--url", default="ws://127.0.0.1:8765/ws", help="the agent's WebSocket (default: %(default)s)")
    p.add_argument("--out", help="write the reply audio here (WAV)")
    p.add_argument("--events", help="write every server event here (JSONL)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--realtime", action="store_true", default=True, help="send at the speed of speech (default)")
    pace.add_argument("--fast", action="store_true", help="send as fast as the server reads (latency is meaningless)")
    p.add_argument("--tail", type=float, default=10.0, help="at most this many seconds of silence after the file "
                   "while waiting for the reply (default: %(default)s)")
