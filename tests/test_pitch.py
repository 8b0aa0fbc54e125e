"""YIN pitch estimator: direct-sum reference, synthetic tones and glides of known F0, noise and silence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minivox.audio import TTS_FEATURES, LogMel
from minivox.pitch import TTS_PITCH, PitchConfig, _difference_function, _frames, difference_function_reference, estimate_pitch

SR = TTS_PITCH.sample_rate


def _harmonic_tone(f0: np.ndarray, n_harmonics: int = 5, seed: int = 0) -> np.ndarray:
    """A speech-like periodic signal with instantaneous frequency f0 [S] (Hz): decaying harmonics,
    random phases, integrated phase (so glides are exact)."""
    phase = 2 * np.pi * np.cumsum(f0) / SR  # [S]
    rng = np.random.default_rng(seed)
    out = sum(0.8 ** k * np.sin((k + 1) * phase + rng.uniform(0, 2 * np.pi)) for k in range(n_harmonics))
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def _true_f0_per_frame(f0: np.ndarray, num_frames: int) -> np.ndarray:
    """The instantaneous F0 at each frame centre t * hop."""
    centres = np.minimum(np.arange(num_frames) * TTS_PITCH.hop_length, len(f0) - 1)
    return f0[centres]


def _interior(num_frames: int) -> slice:
    """Frames whose whole analysis span lies inside the signal (edges see zero padding)."""
    margin = TTS_PITCH.frame_length // TTS_PITCH.hop_length + 1
    return slice(margin, num_frames - margin)


def test_fft_difference_function_equals_direct_sum():
    rng = np.random.default_rng(1)
    audio = torch.from_numpy(rng.normal(size=(1, 4000)))
    frames = _frames(audio, TTS_PITCH)  # [1, T, L]
    fast = _difference_function(frames, TTS_PITCH)[0]  # [T, K]
    for t in (0, 3, 7, frames.shape[1] - 1):
        slow = difference_function_reference(frames[0, t].numpy(), TTS_PITCH.window, TTS_PITCH.max_lag + 1)
        np.testing.assert_allclose(fast[t].numpy(), slow, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("f0", [65.0, 98.0, 123.4, 180.0, 247.0, 330.0, 440.0])
def test_steady_tones_within_one_percent(f0):
    audio = _harmonic_tone(np.full(SR, f0), seed=int(f0))
    est, voiced = estimate_pitch(audio)
    inner = _interior(len(est))
    assert voiced[inner].float().mean() > 0.98, voiced
    error = (est[inner][voiced[inner]].numpy() - f0) / f0
    assert np.median(np.abs(error)) < 0.01, np.median(np.abs(error))
    assert np.abs(error).max() < 0.02  # no octave errors anywhere


@pytest.mark.parametrize("start, end", [(90.0, 250.0), (300.0, 110.0)])
def test_glides_within_one_percent(start, end):
    seconds = 1.5
    f0 = np.geomspace(start, end, int(seconds * SR))  # exponential glide: 1 octave+ in 1.5 s
    audio = _harmonic_tone(f0, seed=3)
    est, voiced = estimate_pitch(audio)
    truth = _true_f0_per_frame(f0, len(est))
    inner = _interior(len(est))
    assert voiced[inner].float().mean() > 0.95
    v = voiced[inner].numpy()
    error = np.abs(est[inner].numpy()[v] - truth[inner][v]) / truth[inner][v]
    assert np.median(error) < 0.01, np.median(error)


@settings(max_examples=15, deadline=None)
@given(st.floats(70.0, 450.0), st.integers(0, 1000))
def test_random_tones_and_phases(f0, seed):
    audio = _harmonic_tone(np.full(SR // 2, f0), n_harmonics=3, seed=seed)
    est, voiced = estimate_pitch(audio)
    inner = _interior(len(est))
    assert voiced[inner].all()
    assert np.median(np.abs(est[inner].numpy() - f0) / f0) < 0.01


@pytest.mark.parametrize("noise", ["white", "pink"])
def test_noise_is_unvoiced(noise):
    rng = np.random.default_rng(5)
    x = rng.normal(size=2 * SR)
    if noise == "pink":  # 1/f spectrum: louder lows, a harder case for a period detector
        spectrum = np.fft.rfft(x) / np.sqrt(np.arange(1, SR + 2))
        x = np.fft.irfft(spectrum, n=2 * SR)
    audio = (0.1 * x / x.std()).astype(np.float32)
    est, voiced = estimate_pitch(audio)
    assert voiced.float().mean() < 0.05, voiced.float().mean()
    assert (est[~voiced] == 0).all()


def test_silence_then_tone_then_noise():
    tone = _harmonic_tone(np.full(SR // 2, 150.0))
    noise = (0.05 * np.random.default_rng(0).normal(size=SR // 2)).astype(np.float32)
    audio = np.concatenate([np.zeros(SR // 2, np.float32), tone, noise])
    est, voiced = estimate_pitch(audio)
    third = len(est) // 3
    margin = TTS_PITCH.frame_length // TTS_PITCH.hop_length + 1
    assert not voiced[: third - margin].any()  # silence
    assert voiced[third + margin : 2 * third - margin].all()  # tone
    assert voiced[2 * third + margin :].float().mean() < 0.05  # noise


def test_frames_match_the_tts_mel_frames_and_batching():
    audio = torch.from_numpy(_harmonic_tone(np.full(12345, 200.0)))
    est, _ = estimate_pitch(audio)
    mel, _ = LogMel(TTS_FEATURES)(audio[None])
    assert est.shape == (mel.shape[-1],)  # one F0 per mel frame
    batch, _ = estimate_pitch(torch.stack([audio, audio.flip(0)]))
    torch.testing.assert_close(batch[0], est)


def test_bad_settings_and_input_are_clear_errors():
    with pytest.raises(ValueError, match="fmin < fmax"):
        PitchConfig(fmin=400.0, fmax=100.0)
    with pytest.raises(ValueError, match=r"\[S\] or \[B, S\]"):
        estimate_pitch(np.zeros((2, 2, 100), np.float32))
