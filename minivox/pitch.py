"""Fundamental frequency (F0) of speech with a voicing decision: YIN, vectorised over frames.

FastPitch is trained to predict the average F0 of every input symbol, so its training data
needs an F0 track with one value per mel frame. This is its own file (not part of
fastpitch.py) because it is a separately testable signal-processing algorithm with no model in
it, used once to preprocess hours of audio.

YIN (de Cheveigne & Kawahara 2002, "YIN, a fundamental frequency estimator for speech and
music", JASA 111(4)), steps as numbered in the paper:

2. difference function over an integration window of W samples, for lags tau = 0..tau_max:
       d(tau) = sum_{j=0}^{W-1} (x_j - x_{j+tau})^2 = e(0) + e(tau) - 2 r(tau)
   with e(tau) = sum_{j=tau}^{tau+W-1} x_j^2 (a cumulative sum) and the cross-correlation
   r(tau) = sum_j x_j x_{j+tau} (one FFT product per frame);
3. cumulative mean normalised difference d'(0) = 1, d'(tau) = d(tau) tau / sum_{j=1}^{tau} d(j):
   about 1 for noise, near 0 at the period of a periodic signal;
4. absolute threshold: the first lag in [sr / fmax, sr / fmin] where d' dips below
   `threshold`, followed down to the bottom of that dip (the smallest such lag avoids the
   octave-too-low errors of the global minimum); if d' never dips that low, the global minimum
   in the range (the paper's fallback);
5. parabolic interpolation of d' around the chosen lag for sub-sample precision.

Voicing (the part pYIN makes probabilistic; here a plain rule): a frame is voiced when d' at
the chosen lag is below `voicing_threshold` and the frame is louder than `silence_db`. The
voicing threshold is looser than YIN's: in real (and synthesised) speech, pitch moves within
the window and breath noise rides on the harmonics, so clearly voiced frames have d' of
0.2-0.45 (measured on the joe corpus), while noise stays near 1.
Unvoiced frames get F0 = 0.

6. (not in the paper; a cheap stand-in for pYIN's Viterbi tracking) a voiced frame whose F0 is
   more than `jump_ratio` away from the median of the voiced frames around it (+-`median_frames`)
   is an octave error at a voicing onset or offset; it is set unvoiced. `difference_function_reference` is the direct O(W tau_max) sum of
step 2 that the FFT version is tested against.

Framing matches the TTS log-mel (minivox.audio.LogMel): frame t is centred on sample t * hop,
with zeros outside the signal, and a signal of S samples has T = ceil(S / hop) frames.
Shape letters: B batch (any leading dims), S samples, T frames, L frame length, K lags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PitchConfig", "TTS_PITCH", "estimate_pitch", "difference_function_reference"]


@dataclass(frozen=True)
class PitchConfig:
    """YIN settings. Defaults suit speech at the TTS rate, one F0 per TTS mel frame."""

    sample_rate: int = 22050  # Hz, the TTS rate
    hop_length: int = 256  # samples between frames: the TTS mel hop, so F0 frames align with mel frames
    fmin: float = 60.0  # Hz, lowest F0 searched (deep male voices reach ~65 Hz)
    fmax: float = 500.0  # Hz, highest F0 searched (high female / child speech)
    window: int = 800  # W: integration window in samples (36 ms); >= 2 periods of fmin keeps d' stable
    threshold: float = 0.15  # YIN's absolute threshold on d' for picking the period (the paper: 0.1-0.15)
    voicing_threshold: float = 0.5  # voiced when d' at the chosen lag is below this (white noise: > 0.8)
    jump_ratio: float = 1.6  # step 6: F0 this far (as a ratio) from the local median is an octave error
    median_frames: int = 4  # step 6: the local median looks this many frames either side (+-46 ms)
    silence_db: float = -50.0  # frames whose RMS (dBFS) is below this are unvoiced regardless of d'

    def __post_init__(self):
        if not (0 < self.fmin < self.fmax < self.sample_rate / 2):
            raise ValueError(f"PitchConfig: expected 0 < fmin < fmax < Nyquist, got fmin={self.fmin}, fmax={self.fmax}")
        if self.window < self.max_lag or self.hop_length < 1 or not (0 < self.threshold <= self.voicing_threshold < 1):
            raise ValueError(f"PitchConfig: expected window >= sample_rate / fmin ({self.max_lag}), hop >= 1, "
                             f"0 < threshold <= voicing_threshold < 1; got {self}")

    @property
    def min_lag(self) -> int:
        """Shortest period searched, in samples (floor(sr / fmax), at least 2)."""
        return max(2, int(self.sample_rate / self.fmax))

    @property
    def max_lag(self) -> int:
        """tau_max: longest period searched, in samples (ceil(sr / fmin))."""
        return math.ceil(self.sample_rate / self.fmin)

    @property
    def frame_length(self) -> int:
        """L = W + tau_max + 1: the samples each frame reads (the window and its longest shift, plus
        one lag for the parabola)."""
        return self.window + self.max_lag + 1


TTS_PITCH = PitchConfig()


def difference_function_reference(frame: np.ndarray, window: int, max_lag: int) -> np.ndarray:
    """YIN step 2 by direct summation: frame [L >= window + max_lag] -> d [max_lag + 1] (float64)."""
    x = np.asarray(frame, dtype=np.float64)
    return np.array([np.sum((x[:window] - x[tau:tau + window]) ** 2) for tau in range(max_lag + 1)])


def _frames(audio: torch.Tensor, cfg: PitchConfig) -> torch.Tensor:
    """audio [B, S] -> frames [B, T, L]; frame t starts W // 2 samples before its centre t * hop."""
    B, S = audio.shape
    T, L = (S + cfg.hop_length - 1) // cfg.hop_length, cfg.frame_length
    left = cfg.window // 2  # the integration window (not the whole frame) is centred on t * hop
    right = max(0, (T - 1) * cfg.hop_length + L - left - S)
    padded = F.pad(audio, (left, right))  # [B, left + S + right]
    return padded.unfold(1, L, cfg.hop_length)[:, :T]  # [B, T, L] view


def _difference_function(frames: torch.Tensor, cfg: PitchConfig) -> torch.Tensor:
    """YIN step 2 with one FFT cross-correlation per frame: frames [B, T, L] -> d [B, T, K = tau_max + 2]."""
    W, K = cfg.window, cfg.max_lag + 2  # lags 0..tau_max + 1 (one extra for the parabola at tau_max)
    n_fft = 1 << (frames.shape[-1] - 1).bit_length()  # >= L: lags up to L - W need no wrap-around
    head = torch.fft.rfft(frames[..., :W], n=n_fft)  # [B, T, n_fft // 2 + 1]
    whole = torch.fft.rfft(frames, n=n_fft)
    correlation = torch.fft.irfft(head.conj() * whole, n=n_fft)[..., :K]  # [B, T, K]: r(tau)
    energy = F.pad(torch.cumsum(frames ** 2, dim=-1), (1, 0))  # [B, T, L + 1]: sum of x_j^2 for j < i
    shifted_energy = energy[..., W:W + K] - energy[..., :K]  # [B, T, K]: e(tau)
    return (energy[..., W:W + 1] + shifted_energy - 2 * correlation).clamp_min(0.0)  # [B, T, K]


def _cumulative_mean_normalized(d: torch.Tensor) -> torch.Tensor:
    """YIN step 3: d [B, T, K] -> d' [B, T, K] with d'(0) = 1."""
    lags = torch.arange(1, d.shape[-1], device=d.device, dtype=d.dtype)  # [K - 1]
    running_mean = torch.cumsum(d[..., 1:], dim=-1) / lags  # [B, T, K - 1]
    normalized = d[..., 1:] / running_mean.clamp_min(torch.finfo(d.dtype).tiny)
    return F.pad(normalized, (1, 0), value=1.0)  # [B, T, K]


@torch.no_grad()
def estimate_pitch(audio, cfg: PitchConfig = TTS_PITCH) -> tuple[torch.Tensor, torch.Tensor]:
    """F0 track of audio [S] or [B, S] (numpy or torch float, at cfg.sample_rate).

    Returns (f0 [T] or [B, T] float32 in Hz, 0 where unvoiced; voiced [T] or [B, T] bool),
    T = ceil(S / hop). Computed in float64 (the difference function subtracts large energies).
    """
    x = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio)
    if x.ndim not in (1, 2) or not x.is_floating_point():
        raise ValueError(f"estimate_pitch: expected float audio [S] or [B, S], got {x.dtype} {tuple(x.shape)}")
    squeeze = x.ndim == 1
    x = x.detach().to(torch.float64).reshape(-1, x.shape[-1])  # [B, S]
    frames = _frames(x, cfg)  # [B, T, L]
    d_norm = _cumulative_mean_normalized(_difference_function(frames, cfg))  # [B, T, K]

    # Step 4: the first lag in [min_lag, max_lag] below the threshold, then down to the bottom of
    # its dip; where there is none, the global minimum in the range.
    lags = torch.arange(d_norm.shape[-1], device=x.device)  # [K]
    in_range = (lags >= cfg.min_lag) & (lags <= cfg.max_lag)  # [K]
    below = (d_norm < cfg.threshold) & in_range  # [B, T, K]
    first = below.int().argmax(dim=-1)  # [B, T]: first True (0 where none)
    rising = F.pad(d_norm[..., 1:] > d_norm[..., :-1], (0, 1), value=True)  # [B, T, K]: d'(tau+1) > d'(tau)
    dip_bottom = (rising & (lags >= first[..., None])).int().argmax(dim=-1)  # [B, T]
    global_min = torch.where(in_range, d_norm, torch.inf).argmin(dim=-1)  # [B, T]
    bottom = torch.where(below.any(dim=-1), dip_bottom, global_min).clamp(cfg.min_lag, cfg.max_lag)

    # Step 5: parabola through d'(tau - 1), d'(tau), d'(tau + 1).
    around = torch.gather(d_norm, -1, (bottom[..., None] + torch.tensor([-1, 0, 1], device=x.device)))  # [B, T, 3]
    a, b, c = around.unbind(-1)
    curvature = a - 2 * b + c
    shift = torch.where(curvature > 0, 0.5 * (a - c) / curvature.clamp_min(1e-12), torch.zeros_like(b))
    period = bottom.to(torch.float64) + shift.clamp(-1.0, 1.0)  # [B, T] samples

    centre = frames[..., : cfg.window]  # [B, T, W]: the integration window
    rms_db = 10 * torch.log10((centre ** 2).mean(dim=-1) + 1e-20)  # [B, T]
    voiced = (b < cfg.voicing_threshold) & (rms_db > cfg.silence_db)  # [B, T]
    f0 = torch.where(voiced, cfg.sample_rate / period, torch.nan)  # [B, T], NaN where unvoiced

    # Step 6: drop octave jumps against the local median of the voiced neighbours.
    k = cfg.median_frames
    neighbours = F.pad(f0, (k, k), value=torch.nan).unfold(-1, 2 * k + 1, 1)  # [B, T, 2k + 1] view
    local = neighbours.nanmedian(dim=-1).values  # [B, T]
    voiced = voiced & (f0 < local * cfg.jump_ratio) & (f0 > local / cfg.jump_ratio)
    f0 = torch.where(voiced, f0, 0.0).float()  # [B, T]
    return (f0[0], voiced[0]) if squeeze else (f0, voiced)
