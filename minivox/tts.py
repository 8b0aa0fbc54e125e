"""Text to speech: FastPitch + HiFi-GAN, whole or streamed sentence by sentence.

    text --split_sentences--> sentences --normalize_text--> "lowercase words" --tts_symbol_ids--> ids
         --FastPitch.infer--> log-mel [80, M] --HiFi-GAN, chunk by chunk with context--> audio 22.05 kHz

`TTS.stream(text)` yields `TTSChunk`s as soon as they exist: each sentence is one FastPitch call
(a few ms), then the vocoder runs on a short first chunk of frames (so the first audio leaves
early) and longer chunks after it, each with `receptive_field_frames` of mel context on both
sides, so the joined chunks equal the whole sentence vocoded at once (up to float error; tested).
`TTS.synthesize(text)` is the same stream joined.

Text handling: sentences from minivox.text.split_sentences; numbers, times, currency,
abbreviations and symbols read out by normalize_text; characters with no spoken form (other
scripts, emoji) dropped with one warning per call; text with nothing speakable gives empty audio.
A "sentence" longer than `max_symbols` characters (no punctuation in a long stretch of text) is
cut at word boundaries, so FastPitch's attention stays small.

The module imports torch, numpy and the models on first use, so `minivox --help` stays instant.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from minivox.pretrained import PRETRAINED_DIR

if TYPE_CHECKING:  # this module is imported by the `minivox` command: torch and the models load on first use
    import numpy as np

    from minivox.fastpitch import FastPitch
    from minivox.hifigan import Generator

__all__ = ["TTS", "TTSChunk", "DEFAULT_FASTPITCH", "DEFAULT_HIFIGAN", "register"]

DEFAULT_FASTPITCH = PRETRAINED_DIR / "fastpitch_demo.pt"
DEFAULT_HIFIGAN = PRETRAINED_DIR / "hifigan_demo.pt"
FIRST_CHUNK_FRAMES = 24  # 0.28 s of audio in the first vocoder call of a sentence: early first audio
CHUNK_FRAMES = 96  # 1.1 s per later call: fewer calls, context overhead 2 x 12 / 96
MAX_SYMBOLS = 300  # characters per FastPitch call (~20 s of speech); longer sentences are cut at spaces


@dataclass
class TTSChunk:
    """One piece of streamed speech."""

    audio: np.ndarray  # float32 [S] in [-1, 1] at sample_rate
    sample_rate: int  # Hz (22050)
    sentence_index: int  # which sentence of the text (0-based)
    sentence: str  # that sentence as written
    last: bool  # True on the sentence's final chunk


class TTS:
    """FastPitch + HiFi-GAN synthesiser (thread-compatible: one call at a time per instance).

    Args:
        fastpitch, generator: the models (eval mode; the generator's weight norm removed).
        pace: default speaking rate (> 1 is faster).
        first_chunk_frames, chunk_frames: vocoder chunk sizes in mel frames (11.6 ms each).
    """

    def __init__(self, fastpitch: FastPitch, generator: Generator, pace: float = 1.0,
                 first_chunk_frames: int = FIRST_CHUNK_FRAMES, chunk_frames: int = CHUNK_FRAMES):
        from minivox.audio import TTS_FEATURES

        if generator.hop_length != TTS_FEATURES.hop_length or fastpitch.cfg.n_mels != generator.cfg.n_mels:
            raise ValueError(f"TTS: FastPitch ({fastpitch.cfg.n_mels} mels) and HiFi-GAN ({generator.cfg.n_mels} "
                             f"mels, hop {generator.hop_length}) do not fit the TTS features (hop {TTS_FEATURES.hop_length})")
        if pace <= 0:
            raise ValueError(f"TTS: pace must be > 0, got {pace}")
        self.fastpitch, self.generator = fastpitch.eval(), generator.eval()
        self.pace, self.first_chunk_frames, self.chunk_frames = pace, first_chunk_frames, chunk_frames
        self.sample_rate = TTS_FEATURES.sample_rate

    @classmethod
    def from_checkpoints(cls, fastpitch: str | Path | None = None, hifigan: str | Path | None = None,
                         **kwargs) -> TTS:
        """Load the two checkpoints (default: the bundled demo voice in minivox/pretrained/)."""
        fastpitch, hifigan = Path(fastpitch or DEFAULT_FASTPITCH), Path(hifigan or DEFAULT_HIFIGAN)
        for path, what in ((fastpitch, "FastPitch"), (hifigan, "HiFi-GAN")):
            if not path.is_file():
                raise ValueError(f"TTS: {what} checkpoint {path} does not exist (train one with "
                                 f"train/{what.lower().replace('-', '')}.py, or pass its path)")
        from minivox.fastpitch import FastPitch
        from minivox.hifigan import load_generator

        return cls(FastPitch.from_checkpoint(fastpitch), load_generator(hifigan), **kwargs)

    def pieces(self, text: str) -> list[tuple[int, str, list[int]]]:
        """(sentence index, sentence, symbol ids) for every speakable piece of `text`, in order;
        warns once about dropped characters."""
        from minivox.normalize import normalize_text
        from minivox.text import split_sentences, tts_symbol_ids, unspeakable_characters

        if not isinstance(text, str):
            raise ValueError(f"TTS: expected text as str, got {type(text).__name__}")
        dropped = unspeakable_characters(text)
        if dropped:
            warnings.warn(f"TTS: dropping characters with no spoken form: {''.join(dropped)!r}", stacklevel=3)
        out = []
        for index, sentence in enumerate(split_sentences(text)):
            words = normalize_text(sentence).split()
            while words:  # cut at word boundaries into pieces of at most MAX_SYMBOLS characters
                take = 1
                while take < len(words) and len(" ".join(words[:take + 1])) <= MAX_SYMBOLS:
                    take += 1
                out.append((index, sentence, tts_symbol_ids(" ".join(words[:take])[:MAX_SYMBOLS])))
                words = words[take:]
        return out

    def stream(self, text: str, pace: float | None = None) -> Iterator[TTSChunk]:
        """Yield speech for `text` chunk by chunk, sentence by sentence (nothing for unspeakable text)."""
        import numpy as np
        import torch

        from minivox.hifigan import vocode_in_chunks

        pace = self.pace if pace is None else pace
        if pace <= 0:
            raise ValueError(f"TTS: pace must be > 0, got {pace}")
        pieces = self.pieces(text)
        for k, (index, sentence, ids) in enumerate(pieces):
            with torch.inference_mode():  # per call, never across a yield (it is thread state)
                mels = self.fastpitch.infer(torch.tensor([ids]), pace=pace).mels[0]  # [80, M]
            last_piece_of_sentence = k + 1 == len(pieces) or pieces[k + 1][0] != index
            count = self._chunk_count(mels.shape[1])
            chunks = vocode_in_chunks(self.generator, mels, self.chunk_frames, first_chunk_frames=self.first_chunk_frames)
            for j in range(count):  # lazily: each chunk leaves as soon as it is vocoded
                with torch.inference_mode():
                    audio = next(chunks)  # [S_chunk]
                yield TTSChunk(audio.numpy().astype(np.float32, copy=False), self.sample_rate, index, sentence,
                               last=last_piece_of_sentence and j + 1 == count)

    def _chunk_count(self, frames: int) -> int:
        """How many chunks vocode_in_chunks makes of `frames` mel frames."""
        if frames == 0:
            return 0
        return 1 + -(-max(0, frames - self.first_chunk_frames) // self.chunk_frames)

    def synthesize(self, text: str, pace: float | None = None) -> tuple[np.ndarray, int]:
        """Speech for the whole text: (audio float32 [S], sample_rate). Empty text -> ([0], rate)."""
        import numpy as np

        chunks = [c.audio for c in self.stream(text, pace)]
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        return audio, self.sample_rate


# ---------------------------------------------------------------------------------------
# CLI: minivox synthesize
# ---------------------------------------------------------------------------------------


def register(subparsers) -> None:
    """Add `minivox synthesize` to an argparse subparsers object."""
    p = subparsers.add_parser("synthesize", help="text to speech (FastPitch + HiFi-GAN) into a WAV file",
                              description="Speak text into a WAV file with FastPitch + HiFi-GAN (22.05 kHz).")
    p.add_argument("text", nargs="?", default=None, help="the text (or --stdin)")
    p.add_argument("-o", "--output", required=True, help="WAV file to write")
    p.add_argument("--stdin", action="store_true", help="read the text from standard input")
    p.add_argument("--pace", type=float, default=1.0, help="speaking rate, > 1 is faster (default 1.0)")
    p.add_argument("--checkpoint", default=None, help=f"FastPitch checkpoint (default: {DEFAULT_FASTPITCH.name})")
    p.add_argument("--vocoder", default=None, help=f"HiFi-GAN checkpoint (default: {DEFAULT_HIFIGAN.name})")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.set_defaults(func=_synthesize_command)


def _synthesize_command(args: argparse.Namespace) -> int:
    import sys

    import numpy as np
    import torch

    from minivox.audio import write_wav

    if args.stdin == (args.text is not None):
        print("minivox synthesize: give the text as an argument or with --stdin (one of them)", file=sys.stderr)
        return 2
    text = sys.stdin.read() if args.stdin else args.text
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        tts = TTS.from_checkpoints(args.checkpoint, args.vocoder, pace=args.pace)
    except ValueError as exc:
        print(f"minivox synthesize: {exc}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    first, chunks = None, []
    for chunk in tts.stream(text):
        first = first if first is not None else time.perf_counter() - started
        chunks.append(chunk.audio)
    elapsed = time.perf_counter() - started
    if not chunks:  # a valid WAV with no samples (write_wav cannot reshape an empty array)
        import wave

        with wave.open(str(args.output), "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(tts.sample_rate)
        print(f"nothing speakable in the text: wrote {args.output} with no samples", file=sys.stderr)
        return 0
    audio = np.concatenate(chunks)
    write_wav(args.output, audio, tts.sample_rate)
    seconds = len(audio) / tts.sample_rate
    print(f"wrote {args.output}: {seconds:.2f} s at {tts.sample_rate} Hz in {elapsed:.2f} s "
          f"(RTF {elapsed / seconds:.3f}, first audio after {1000 * first:.0f} ms)", file=sys.stderr)
    return 0
