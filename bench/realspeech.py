"""Real recorded speech for the benchmarks: Debian's pocketsphinx-testdata (apt install pocketsphinx-testdata).

`pocketsphinx_rows()`: cards/001-005.wav, librivox/sense_and_sensibility_01_austen_64kb-0870..0930.wav
and goforward.raw ("go forward ten meters"), 11 recordings of real speech with their reference
transcripts, as manifest rows with the audio loaded (`pcm`, 16 kHz). Evaluation only: minivox never
trains on them. Used by bench/asr.py (WER, --pocketsphinx) and bench/agent.py (--voice recorded).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

POCKETSPHINX_DATA = Path("/usr/share/pocketsphinx/test/data")
GOFORWARD_TEXT = "go forward ten meters"  # pocketsphinx's own test transcript for goforward.raw


def pocketsphinx_rows(root: Path = POCKETSPHINX_DATA) -> list[dict]:
    """Debian pocketsphinx-testdata's recordings with transcripts, as manifest rows (audio loaded: `pcm`)."""
    from minivox.audio import read_wav

    if not root.is_dir():
        raise SystemExit(f"{root} is missing: apt install pocketsphinx-testdata")
    rows = []
    for folder, transcripts in (("cards", "cards.transcription"), ("librivox", "transcription")):
        for line in (root / folder / transcripts).read_text().splitlines():
            match = re.match(r"<s>(.*)</s>\s*\((.+)\)", line.strip())
            if match:
                path = root / folder / f"{match.group(2)}.wav"
                pcm, rate = read_wav(path, mono=True)
                assert rate == 16000, (path, rate)
                rows.append({"audio_filepath": str(path), "text": " ".join(match.group(1).split()), "pcm": pcm})
    raw = np.frombuffer((root / "goforward.raw").read_bytes(), dtype="<i2").astype(np.float32) / 32768  # 16 kHz PCM16
    rows.append({"audio_filepath": str(root / "goforward.raw"), "text": GOFORWARD_TEXT, "pcm": raw})
    return rows
