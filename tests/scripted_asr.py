"""A scripted stand-in for the streaming ASR, for tests of the agent's pipeline.

`ScriptedTranscriber` has the StreamingTranscriber interface (`step(pcm16k) -> [ASRResult]`,
`reset()`) and "hears" the next utterance of its script whenever it detects speech by energy:
the first two words 300 ms into the speech, the rest and an <EOU> final 300 ms after the speech
stops. With `quiet_at_ms`, a result with no text and an <EOU> probability of 0.3 comes that long
after the speech stops (what lets the session start an early reply), and `rest_at_ms` moves the
rest of the words. So pipeline tests check turn-taking, barge-in, event order, isolation and timing whatever
the ASR model's accuracy (tests/test_server.py; its real-ASR turn and the browser test run the
bundled demo ASR).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from minivox.asr import ASRResult

SPEECH_RMS = 0.01  # a 10 ms frame louder than this is speech for the scripted recogniser


class ScriptedTranscriber:
    """Speaks its script's utterances in order as speech segments end (see the module docstring)."""

    def __init__(self, script: list[str], quiet_at_ms: int | None = None, rest_at_ms: int = 300):
        self.script = deque(script)
        self.quiet_frames = None if quiet_at_ms is None else quiet_at_ms // 10
        self.rest_frames = rest_at_ms // 10
        self.heard: list[np.ndarray] = []  # every chunk received (16 kHz)
        self.reset()

    def reset(self) -> None:
        self.buffer = np.zeros(0, np.float32)
        self.samples, self.speech, self.silence, self.words = 0, 0, 0, None

    def step(self, pcm, sample_rate: int = 16000) -> list[ASRResult]:
        assert sample_rate == 16000 and pcm.dtype == np.float32 and pcm.ndim == 1
        self.heard.append(pcm.copy())
        self.buffer = np.concatenate([self.buffer, pcm])
        out = []
        while len(self.buffer) >= 160:
            frame, self.buffer = self.buffer[:160], self.buffer[160:]
            self.samples += 160
            now = self.samples / 16000
            if np.sqrt(np.mean(frame ** 2)) > SPEECH_RMS:
                self.speech, self.silence = self.speech + 1, 0
                if self.speech == 30 and self.script:  # 300 ms into speech: the first two words
                    self.words = self.script.popleft().split()
                    out.append(ASRResult(" ".join(self.words[:2]), False, 0.01, 0.0, audio_time=now))
            elif self.speech:
                self.silence += 1
                if self.words is not None and self.silence == self.rest_frames:  # the rest of the words
                    rest = " ".join(self.words[2:])
                    out.append(ASRResult(" " + rest if rest else "", False, 0.2, 0.0, audio_time=now))
                if self.words is not None and self.silence == self.quiet_frames:  # no words, <EOU> likelier
                    out.append(ASRResult("", False, 0.3, 0.0, audio_time=now))
                if self.silence == 30:  # 300 ms after the speech: <EOU>
                    if self.words is not None:
                        out.append(ASRResult("", True, 0.9, 0.0, eou_latency=0.3, audio_time=now))
                    self.speech, self.silence, self.words = 0, 0, None
        return out
