"""The agent's optional audio log (`--log-audio DIR`): per session, input.wav (16 kHz), output.wav
and events.jsonl. `AudioLogger` checks the directory when made, so the server refuses to start
rather than fail mid-session."""

from __future__ import annotations

import json
import shutil
import time
import uuid
import wave
from pathlib import Path

import numpy as np

from minivox.serve import protocol as proto


class AudioLogger:
    """Writes each session's input (16 kHz) and output audio as WAV and its events as JSONL.

    Checked when made: the directory must be creatable, writable and have `min_free_mb` free,
    else ValueError (the server refuses to start rather than fail later)."""

    def __init__(self, directory: str | Path, min_free_mb: int = 100):
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".write-test-{uuid.uuid4().hex}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise ValueError(f"--log-audio: cannot write to {self.dir}: {exc.strerror or exc}") from None
        free_mb = shutil.disk_usage(self.dir).free // 2**20
        if free_mb < min_free_mb:
            raise ValueError(f"--log-audio: only {free_mb} MB free in {self.dir} (need at least {min_free_mb} MB)")

    def open(self, session_id: str, out_rate: int, in_rate: int = 16000) -> SessionLog:
        return SessionLog(self.dir / session_id, out_rate, in_rate)


class SessionLog:
    """input.wav, output.wav (PCM16 mono) and events.jsonl of one session."""

    def __init__(self, directory: Path, out_rate: int, in_rate: int = 16000):
        directory.mkdir(parents=True, exist_ok=True)
        self.input = _wav_writer(directory / "input.wav", in_rate)
        self.output = _wav_writer(directory / "output.wav", out_rate)
        self.events = open(directory / "events.jsonl", "w", encoding="utf-8")
        self.t0 = time.monotonic()

    def write_input(self, samples: np.ndarray) -> None:
        self.input.writeframes(proto.pcm16_bytes(samples))

    def write_output(self, pcm16: bytes) -> None:
        self.output.writeframes(pcm16)

    def event(self, direction: str, message: dict) -> None:
        self.events.write(json.dumps({"t": round(time.monotonic() - self.t0, 4), "dir": direction, **message}) + "\n")

    def close(self) -> None:
        for f in (self.input, self.output, self.events):
            f.close()


def _wav_writer(path: Path, rate: int) -> wave.Wave_write:
    w = wave.open(str(path), "wb")
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(rate)
    return w
