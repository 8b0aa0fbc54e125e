"""Tests for serve/vad.py: the voice activity detector.

- Features: `frame_features` against a per-frame, per-bin DFT written out from the formulas, and
  golden levels (a full-scale sine is -3.01 dBFS; white noise fills 3200/8000 of its power into
  the 200-3400 Hz band; a sine's flatness is ~0, white noise's ~0.77).
- Real speech: espeak-ng and flite sentences (installed here and in CI) placed after 1 s of
  silence, in silence and in white/pink noise at 20 and 10 dB SNR. The true boundaries come from
  the clean speech's own envelope: the first and last 10 ms frame within 35 dB of its loudest.
- Noise alone (white, pink, brown at -70..-10 dBFS, and rising level ramps) never starts speech.
- Streaming: random chunkings give the same events as one call (hypothesis); reset == fresh.
- Bad input is a ValueError naming the expected format.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivox.audio import read_wav, resample, speech_bounds
from minivox.serve.vad import SPEECH_BAND_HZ, VAD, VADConfig, VADEvent, frame_features

SR = 16000
LEAD_S = 1.0  # silence / noise before the speech
TAIL_S = 1.0  # and after it
TRUTH_DB = 35.0  # speech frames: within this many dB of the utterance's loudest 10 ms frame
SPEECH_DBFS = -26.0  # active speech level of the placed utterances (ITU-T P.56 nominal level)
SENTENCES = [  # (engine, voice, text)
    ("espeak-ng", "en-us", "The quick brown fox jumps over the lazy dog"),
    ("espeak-ng", "en+f3", "Could you book a table for two at eight"),
    ("flite", "slt", "Please tell me what the weather will be like tomorrow"),
    ("flite", "rms", "Turn off the lights in the kitchen"),
]


# ---------------------------------------------------------------------------------------
# Signals.
# ---------------------------------------------------------------------------------------


def _synth(engine: str, voice: str, text: str, path) -> np.ndarray:
    """A sentence from a system TTS engine, 16 kHz float64 [S], leading/trailing zeros trimmed."""
    if shutil.which(engine) is None:
        pytest.fail(f"{engine} is needed for the VAD tests (apt-get install espeak-ng flite)")
    cmd = (["espeak-ng", "-v", voice, "-w", str(path), text] if engine == "espeak-ng"
           else ["flite", "-voice", voice, "-t", text, "-o", str(path)])
    subprocess.run(cmd, check=True, capture_output=True)
    audio, rate = read_wav(path, mono=True)
    audio = resample(audio.astype(np.float32), rate, SR).astype(np.float64)
    nonzero = np.nonzero(np.abs(audio) > 1e-4)[0]
    return audio[nonzero[0]:nonzero[-1] + 1]


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """The SENTENCES, each scaled to SPEECH_DBFS active level."""
    folder = tmp_path_factory.mktemp("vad_speech")
    out = []
    for i, (engine, voice, text) in enumerate(SENTENCES):
        s = _synth(engine, voice, text, folder / f"{i}.wav")
        out.append(s / _rms(s) * 10 ** (SPEECH_DBFS / 20))
    return out


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x ** 2)))


def _colored_noise(n: int, exponent: float, rng) -> np.ndarray:
    """Unit-RMS noise [n] with power spectrum ~ 1 / f**exponent (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    freqs[0] = freqs[1]
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return noise / _rms(noise)


NOISE_EXPONENT = {"white": 0.0, "pink": 1.0, "brown": 2.0}


def _place(clean: np.ndarray, noise: str | None, snr_db: float, seed: int = 0) -> np.ndarray:
    """clean speech after LEAD_S and before TAIL_S of silence, plus noise at snr_db -> float32 [S]."""
    lead, tail = int(LEAD_S * SR), int(TAIL_S * SR)
    x = np.concatenate([np.zeros(lead), clean, np.zeros(tail)])
    if noise is not None:
        x += _colored_noise(x.size, NOISE_EXPONENT[noise], np.random.default_rng(seed)) * _rms(clean) * 10 ** (-snr_db / 20)
    return x.astype(np.float32)


def _true_bounds(clean: np.ndarray) -> tuple[float, float]:
    """(start, end) s in the placed signal: first / last 10 ms frame within TRUTH_DB of the loudest."""
    start, end = speech_bounds(clean, SR, TRUTH_DB)
    return LEAD_S + start, LEAD_S + end


def _kinds(events: list[VADEvent]) -> list[str]:
    return [e.kind for e in events]


# ---------------------------------------------------------------------------------------
# Features.
# ---------------------------------------------------------------------------------------


def _reference_features(region: np.ndarray, cfg: VADConfig) -> tuple[float, float]:
    """One frame's band power (dBFS) and flatness, from a DFT summed sample by sample."""
    L = cfg.frame_length
    W = 2 * L
    n_fft = 512
    n = np.arange(W)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / W)  # periodic Hann
    bins = [k for k in range(n_fft // 2 + 1) if SPEECH_BAND_HZ[0] <= k * SR / n_fft <= SPEECH_BAND_HZ[1]]
    power = []
    for k in bins:
        p = 0.0
        for start in (0, L):  # the two 20 ms segments
            seg = region[start:start + W] * window
            X = np.sum(seg * np.exp(-2j * np.pi * k * n / n_fft))
            p += abs(X) ** 2 / 2
        power.append(p)
    power = np.array(power)
    mean_square = 2 * power.sum() / (n_fft * np.sum(window ** 2))
    flatness = np.exp(np.mean(np.log(power + 1e-12))) / (np.mean(power) + 1e-12)
    return 10 * np.log10(mean_square + 1e-12), min(flatness, 1.0)


def test_frame_features_match_per_bin_dft():
    cfg = VADConfig()
    rng = np.random.default_rng(0)
    t = np.arange(480) / SR
    regions = np.stack([
        rng.standard_normal(480) * 0.1,
        0.5 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(480),
        np.concatenate([np.zeros(320), rng.standard_normal(160) * 0.01]),
        np.zeros(480),
    ])
    band_dbfs, flatness = frame_features(regions, cfg)
    for i, region in enumerate(regions):
        ref_db, ref_flat = _reference_features(region, cfg)
        assert band_dbfs[i] == pytest.approx(ref_db, abs=1e-6), i
        assert flatness[i] == pytest.approx(ref_flat, abs=1e-6), i


def test_frame_features_levels():
    """Golden levels: a full-scale 1 kHz sine is -3.01 dBFS with flatness ~0; white noise of RMS
    0.1 (-20 dBFS) puts (3400 - 200) / 8000 of its power in the band: -23.98 dBFS, flatness ~0.77."""
    cfg = VADConfig()
    t = np.arange(SR) / SR
    sine = np.sin(2 * np.pi * 1000 * t)
    regions = np.lib.stride_tricks.sliding_window_view(sine, 480)[::160]
    db, flat = frame_features(regions, cfg)
    assert db == pytest.approx(-3.0103, abs=0.01)
    assert flat.max() < 1e-3
    noise = np.random.default_rng(1).standard_normal(10 * SR) * 0.1
    db, flat = frame_features(np.lib.stride_tricks.sliding_window_view(noise, 480)[::160], cfg)
    expected = 10 * np.log10(0.01 * (SPEECH_BAND_HZ[1] - SPEECH_BAND_HZ[0]) / (SR / 2))
    assert 10 * np.log10(np.mean(10 ** (db / 10))) == pytest.approx(expected, abs=0.1)
    assert 0.72 < np.median(flat) < 0.82


# ---------------------------------------------------------------------------------------
# Real speech.
# ---------------------------------------------------------------------------------------

CONDITIONS = [(None, 0.0, 0.10), ("white", 20.0, 0.20), ("pink", 20.0, 0.20), ("white", 10.0, 0.20),
              ("pink", 10.0, 0.20)]  # (noise, SNR dB, tolerance s)


@pytest.mark.parametrize("noise,snr_db,tolerance", CONDITIONS)
def test_speech_boundaries(speech, noise, snr_db, tolerance):
    """One start and one stop per sentence, within tolerance of the clean speech's envelope
    (more in noise, which buries weak onsets and trailing consonants)."""
    errors = []
    for i, clean in enumerate(speech):
        vad = VAD()
        events = vad.process(_place(clean, noise, snr_db, seed=i))
        assert _kinds(events) == ["start", "stop"], (SENTENCES[i], events)
        true_start, true_end = _true_bounds(clean)
        errors.append((events[0].time - true_start, events[1].time - true_end))
    errors = np.array(errors)
    assert np.abs(errors).max() <= tolerance, errors


def test_quiet_speech_in_silence(speech):
    """Speech 14 dB quieter (-40 dBFS active level) is still found, within 150 ms."""
    for clean in speech:
        quiet = clean * 10 ** (-14 / 20)
        events = VAD().process(_place(quiet, None, 0.0))
        assert _kinds(events) == ["start", "stop"], events
        true_start, true_end = _true_bounds(quiet)
        assert abs(events[0].time - true_start) <= 0.15 and abs(events[1].time - true_end) <= 0.15, events


def test_hysteresis_pauses(speech):
    """Two sentences, cut to their envelopes, with a pause between them: 1 s gives two start/stop
    pairs, 100 ms (< stop_ms) one pair."""
    def trimmed(clean):
        start, end = _true_bounds(clean)
        return clean[round((start - LEAD_S) * SR):round((end - LEAD_S) * SR)]

    a, b = trimmed(speech[0]), trimmed(speech[2])
    for gap_s, kinds in [(1.0, ["start", "stop", "start", "stop"]), (0.1, ["start", "stop"])]:
        x = np.concatenate([np.zeros(SR), a, np.zeros(int(gap_s * SR)), b, np.zeros(SR)])
        noisy = x + _colored_noise(x.size, 1.0, np.random.default_rng(3)) * _rms(a) * 10 ** (-20 / 20)
        events = VAD().process(noisy.astype(np.float32))
        assert _kinds(events) == kinds, (gap_s, events)


def test_state_and_time(speech):
    x = _place(speech[1], "white", 20.0)
    vad = VAD()
    mid = int((LEAD_S + 0.5) * SR)
    first = vad.process(x[:mid])
    assert _kinds(first) == ["start"] and vad.speaking
    assert vad.time == mid / SR
    second = vad.process(x[mid:])
    assert _kinds(second) == ["stop"] and not vad.speaking
    assert first[0].time < second[0].time <= vad.time - VADConfig().stop_ms / 1000 + 1e-9


# ---------------------------------------------------------------------------------------
# Noise alone.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("color", ["white", "pink", "brown"])
def test_noise_never_starts(color):
    rng = np.random.default_rng(7)
    for level_dbfs in (-70.0, -50.0, -35.0, -20.0, -10.0):
        x = _colored_noise(6 * SR, NOISE_EXPONENT[color], rng) * 10 ** (level_dbfs / 20)
        assert VAD().process(np.clip(x, -1, 1).astype(np.float32)) == [], (color, level_dbfs)
    for low, high, seconds in ((-70.0, -20.0, 10), (-60.0, -20.0, 5), (-40.0, -10.0, 10)):  # 3-8 dB/s ramps
        gain = 10 ** (np.linspace(low, high, seconds * SR) / 20)
        x = _colored_noise(seconds * SR, NOISE_EXPONENT[color], rng) * gain
        assert VAD().process(np.clip(x, -1, 1).astype(np.float32)) == [], (color, low, high, seconds)


def test_sudden_rumble_is_speech_at_most_one_window():
    """Loud brown noise starting after digital silence passes the flatness test (its band spectrum
    slopes), so it may start speech; the windowed-minimum floor ends it within floor_window_s."""
    cfg = VADConfig()
    x = np.concatenate([np.zeros(SR), _colored_noise(6 * SR, 2.0, np.random.default_rng(2)) * 0.1])
    events = VAD(cfg).process(np.clip(x, -1, 1).astype(np.float32))
    assert _kinds(events) in ([], ["start", "stop"]), events
    if events:
        assert events[1].time - events[0].time <= cfg.floor_window_s + cfg.floor_block_s + cfg.stop_ms / 1000, events


# ---------------------------------------------------------------------------------------
# Streaming, reset, cost.
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream_signal(speech):
    return _place(speech[3], "pink", 15.0, seed=5)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_chunking_invariance(stream_signal, data):
    whole = VAD().process(stream_signal)
    assert _kinds(whole) == ["start", "stop"]
    sizes = data.draw(st.lists(st.integers(0, 1200), min_size=1, max_size=40).filter(any))  # 0: an empty call
    vad, events, pos, i = VAD(), [], 0, 0
    while pos < stream_signal.size:
        size = sizes[i % len(sizes)]
        events += vad.process(stream_signal[pos:pos + size])
        pos, i = pos + size, i + 1
    assert events == whole
    assert vad.time == stream_signal.size / SR


def test_reset_equals_fresh(stream_signal):
    vad = VAD()
    first = vad.process(stream_signal)
    vad.process(stream_signal[:12345])
    vad.reset()
    assert vad.time == 0 and not vad.speaking and vad.noise_floor_dbfs is None
    assert vad.process(stream_signal) == first


# ---------------------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad,needle", [
    (np.zeros(160, dtype=np.int16), "divide int16"),
    (np.zeros(160, dtype=np.float64), "dtype float64"),
    (np.zeros((160, 2), dtype=np.float32), "shape (160, 2)"),
    (np.array([0.0, np.nan], dtype=np.float32), "NaN"),
    (np.array([0.0, np.inf], dtype=np.float32), "NaN or infinite"),
    (np.full(160, 3000.0, dtype=np.float32), "integer PCM"),
    ([0.0] * 160, "got list"),
])
def test_bad_input(bad, needle):
    vad = VAD()
    with pytest.raises(ValueError, match="expected mono float32 PCM") as info:
        vad.process(bad)
    assert needle in str(info.value)
    assert vad.time == 0  # nothing was consumed


@pytest.mark.parametrize("kwargs,needle", [
    ({"frame_ms": 0}, "frame_ms must be a positive int"),
    ({"sample_rate": 22050, "frame_ms": 3}, "whole number of samples"),
    ({"sample_rate": 6000, "frame_ms": 10}, "Nyquist"),
    ({"start_ms": 5}, "start_ms must be >= frame_ms"),
    ({"max_flatness": 0.0}, "max_flatness must be in (0, 1]"),
    ({"floor_rise_s": -1.0}, "floor_rise_s must be > 0"),
    ({"floor_block_s": 3.0}, "floor_block_s must be <= floor_window_s"),
])
def test_config_errors(kwargs, needle):
    with pytest.raises(ValueError) as info:
        VADConfig(**kwargs)
    assert needle in str(info.value)
