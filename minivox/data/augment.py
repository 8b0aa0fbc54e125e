"""Audio augmentation for synthetic corpora: speed, tempo and pitch perturbation, noise at a set SNR,
and room reverberation from an image-method room impulse response.

All functions take and return float32 numpy audio [S] (mono) and take their randomness from an
explicit `np.random.Generator`, so an utterance's augmentation depends only on its own seed.

    speed_perturb(x, factor)        resampling: duration / factor, pitch * factor (Kaldi-style speed perturbation)
    time_stretch(x, rate, sr)       WSOLA: duration / rate, pitch unchanged
    pitch_shift(x, semitones, sr)   WSOLA stretch by 2^(s/12), then speed-perturb back: pitch * 2^(s/12),
                                    duration unchanged
    coloured_noise(n, exponent)     power spectrum ~ 1 / f^exponent: 0 white, 1 pink, 2 brown
    babble(n, sources, k)           the sum of k utterances at random offsets
    add_noise(clean, noise, snr)    noise scaled so that active speech power / noise power = snr (dB)
    image_method_rir(...)           shoebox room impulse response (Allen & Berkley 1979), wall
                                    reflection coefficient from the target RT60 by Sabine's formula
    reverberate(x, rir)             convolution, cut to the input length

Levels: `active_power` is the mean power of the 20 ms frames within ACTIVE_RANGE_DB of the loudest
frame (a simple stand-in for ITU-T P.56 active speech level); loudness normalisation and SNR both use
it, so padding an utterance with silence changes neither.
"""

from __future__ import annotations

import math

import numpy as np

SPEED_OF_SOUND = 343.0  # m/s at 20 degrees C
SABINE = 0.161  # s/m: RT60 = SABINE * V / (S * alpha) (Sabine's reverberation formula, metric units)
ACTIVE_FRAME_S = 0.02  # frame length for the active-level measure
ACTIVE_RANGE_DB = 40.0  # frames quieter than the loudest by more than this are not "active"
WSOLA_FRAME_S = 0.030  # analysis/synthesis frame of the time stretcher (a few pitch periods)
WSOLA_TOLERANCE_S = 0.010  # how far the stretcher may move a frame to keep waveforms aligned (>= one period at 100 Hz)
RIR_SINC_HALF_TAPS = 8  # fractional-delay interpolation: +- taps of a Hann-windowed sinc per image


# ----------------------------------------------------------------------------------------------
# Levels


def frame_powers(x: np.ndarray, frame: int) -> np.ndarray:
    """Mean power of consecutive non-overlapping frames of `frame` samples -> [S // frame] (last partial frame dropped,
    or one frame for a signal shorter than `frame`)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size < frame:
        return np.array([np.mean(x**2) if x.size else 0.0])
    n = x.size // frame
    return np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1)  # [n]


def active_power(x: np.ndarray, sample_rate: int, range_db: float = ACTIVE_RANGE_DB) -> float:
    """Mean power of the frames within `range_db` of the loudest frame (0.0 for silence)."""
    powers = frame_powers(x, max(1, round(ACTIVE_FRAME_S * sample_rate)))
    peak = powers.max()
    if peak <= 0:
        return 0.0
    return float(powers[powers >= peak * 10 ** (-range_db / 10)].mean())


def normalize_loudness(x: np.ndarray, sample_rate: int, target_dbfs: float, peak_limit: float = 0.99) -> np.ndarray:
    """Scale x so its active power is `target_dbfs` (dB relative to a full-scale square wave, i.e. power 1),
    then scale down further if the peak would exceed `peak_limit`."""
    power = active_power(x, sample_rate)
    if power <= 0:
        return x.astype(np.float32)
    y = x * math.sqrt(10 ** (target_dbfs / 10) / power)
    peak = np.abs(y).max()
    if peak > peak_limit:
        y = y * (peak_limit / peak)
    return y.astype(np.float32)


def speech_bounds(x: np.ndarray, sample_rate: int, range_db: float = ACTIVE_RANGE_DB, frame_s: float = 0.010) -> tuple[int, int]:
    """(first, last + 1) sample of the region from the first to the last frame within `range_db` of the loudest.

    Frames are `frame_s` long; the bounds are frame-aligned. A silent signal gives (0, 0).
    """
    frame = max(1, round(frame_s * sample_rate))
    powers = frame_powers(x, frame)
    peak = powers.max()
    if peak <= 0:
        return 0, 0
    active = np.flatnonzero(powers >= peak * 10 ** (-range_db / 10))
    return int(active[0] * frame), int(min(x.size, (active[-1] + 1) * frame))


# ----------------------------------------------------------------------------------------------
# Speed, tempo, pitch


def speed_perturb(x: np.ndarray, factor: float, resolution: int = 100) -> tuple[np.ndarray, float]:
    """Play x `factor` times faster: duration / factor and every frequency * factor.

    The factor is rounded to a multiple of 1 / resolution so the resampling ratio stays a small
    fraction (see minivox.audio.resample). Returns (audio [round(S / factor)], the factor used).
    """
    from minivox.audio import resample

    if factor <= 0:
        raise ValueError(f"speed factor must be > 0, got {factor}")
    num = max(1, round(factor * resolution))
    used = num / resolution
    if num == resolution:
        return x.astype(np.float32), 1.0
    # Reading x as if sampled at num and writing at `resolution` plays it num / resolution times faster.
    y = resample(np.asarray(x, dtype=np.float32), num, resolution)
    return y.astype(np.float32), used


def time_stretch(x: np.ndarray, rate: float, sample_rate: int) -> np.ndarray:
    """WSOLA (Verhelst & Roelands 1993): change the duration by 1 / rate, keeping the pitch.

    Output frames of length N are laid every N / 2 samples under a Hann window (which sums to a
    constant at 50 % overlap). Frame k's input is taken near k * (N / 2) * rate, shifted by up to
    +-tolerance to the position whose waveform best continues the previous frame (largest
    cross-correlation with the input that followed the previous frame's input). The output has
    exactly round(S / rate) samples.
    """
    if rate <= 0:
        raise ValueError(f"time stretch rate must be > 0, got {rate}")
    x = np.asarray(x, dtype=np.float64)
    n_out = round(x.size / rate)
    frame = max(4, 2 * round(WSOLA_FRAME_S * sample_rate / 2))  # even
    hop = frame // 2
    tol = round(WSOLA_TOLERANCE_S * sample_rate)
    window = np.hanning(frame + 2)[1:-1]  # periodic-ish Hann: sums to ~1 at 50 % overlap
    padded = np.concatenate([np.zeros(tol), x, np.zeros(frame + tol + hop)])  # input index i -> padded[i + tol]
    n_frames = n_out // hop + 2
    out = np.zeros(n_frames * hop + frame)
    norm = np.zeros_like(out)
    prev = 0  # input position of the previous frame
    for k in range(n_frames):
        nominal = round(k * hop * rate)
        if k == 0:
            pos = 0
        else:
            target = padded[prev + hop + tol : prev + hop + tol + frame]  # the natural continuation of the last frame
            lo = max(-tol, -nominal)  # never before the signal start
            region = padded[nominal + lo + tol : nominal + tol + tol + frame]
            scores = np.correlate(region, target, mode="valid")  # [len(region) - frame + 1]
            pos = nominal + lo + int(np.argmax(scores)) if scores.size else nominal
        segment = padded[pos + tol : pos + tol + frame]
        out[k * hop : k * hop + frame] += window * segment
        norm[k * hop : k * hop + frame] += window
        prev = pos
    out = out / np.maximum(norm, 1e-3)
    return out[:n_out].astype(np.float32)



def pitch_shift(x: np.ndarray, semitones: float, sample_rate: int) -> tuple[np.ndarray, float]:
    """Raise the pitch by `semitones` (may be negative) keeping the duration.

    Stretch by f = 2^(semitones / 12) with WSOLA (duration * f), then play f times faster (pitch * f,
    duration back to ~S). Returns (audio [S], semitones actually applied after rounding f).
    """
    if semitones == 0:
        return x.astype(np.float32), 0.0
    factor = 2.0 ** (semitones / 12)
    factor_used = round(factor * 100) / 100  # what speed_perturb will apply
    stretched = time_stretch(x, 1.0 / factor_used, sample_rate)
    y, used = speed_perturb(stretched, factor_used)
    y = _fit_length(y, x.size)
    return y, 12 * math.log2(used)


def _fit_length(x: np.ndarray, n: int) -> np.ndarray:
    return x[:n] if x.size >= n else np.concatenate([x, np.zeros(n - x.size, dtype=x.dtype)])


# ----------------------------------------------------------------------------------------------
# Noise


NOISE_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectral density ~ 1 / f^exponent


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of n samples whose power spectrum falls as 1 / f^exponent, unit power."""
    if n <= 0:
        return np.zeros(0, dtype=np.float32)
    spectrum = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)  # [n // 2 + 1]
    f = np.arange(n // 2 + 1, dtype=np.float64)
    f[0] = 1.0  # no DC blow-up: the DC bin takes the lowest frequency's gain
    spectrum *= f ** (-exponent / 2)  # amplitude ~ f^(-exponent / 2) -> power ~ f^-exponent
    spectrum[0] = 0.0
    y = np.fft.irfft(spectrum, n)
    return (y / np.sqrt(np.mean(y**2) + 1e-20)).astype(np.float32)


def babble(n: int, sources: list[np.ndarray], k: int, rng: np.random.Generator) -> np.ndarray:
    """Sum of k sources (chosen with replacement), each at unit active power, looped to n samples
    from a random start; the result is scaled to unit power."""
    if not sources:
        raise ValueError("babble needs at least one source utterance")
    out = np.zeros(n, dtype=np.float64)
    for _ in range(k):
        src = np.asarray(sources[rng.integers(len(sources))], dtype=np.float64)
        src = src / math.sqrt(max(np.mean(src**2), 1e-20))
        reps = -(-(n + src.size) // src.size)  # ceil
        tiled = np.tile(src, reps)
        start = int(rng.integers(src.size))
        out += tiled[start : start + n]
    return (out / math.sqrt(max(np.mean(out**2), 1e-20))).astype(np.float32)


def add_noise(clean: np.ndarray, noise: np.ndarray, snr_db: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Mix `noise` (same length) into `clean` at `snr_db` = 10 log10(active power of clean / mean power of noise).

    Returns (noisy, the scaled noise that was added).
    """
    if clean.shape != noise.shape:
        raise ValueError(f"clean and noise must have the same shape, got {clean.shape} and {noise.shape}")
    p_speech = active_power(clean, sample_rate)
    p_noise = float(np.mean(np.asarray(noise, dtype=np.float64) ** 2))
    if p_speech <= 0 or p_noise <= 0:
        return clean.astype(np.float32), np.zeros_like(clean, dtype=np.float32)
    scaled = noise * math.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))
    return (clean + scaled).astype(np.float32), scaled.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Room reverberation


def sabine_absorption(room: tuple[float, float, float], rt60: float) -> float:
    """The uniform wall absorption coefficient that gives `rt60` seconds in a shoebox `room` (metres)."""
    lx, ly, lz = room
    volume = lx * ly * lz
    surface = 2 * (lx * ly + lx * lz + ly * lz)
    alpha = SABINE * volume / (surface * rt60)
    if not 0 < alpha < 1:
        raise ValueError(f"RT60 {rt60} s is not reachable in a {room} m room (Sabine absorption {alpha:.3f}, "
                         f"expected in (0, 1)); use a longer RT60 or a larger room")
    return alpha


def _axis_images(length: float, src: float, mic: float, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Image positions along one axis, relative to the mic, and their reflection counts.

    Images of a source at `src` in [0, length]: 2 n L + src (even: 2|n| reflections) and
    2 n L - src (odd: |2n - 1| reflections), n in [-order, order] (Allen & Berkley's u, l indices).
    """
    n = np.arange(-order, order + 1)
    pos = np.concatenate([2 * n * length + src, 2 * n * length - src]) - mic  # [2(2o+1)]
    hits = np.concatenate([np.abs(2 * n), np.abs(2 * n - 1)])  # [2(2o+1)]
    return pos, hits


def image_method_rir(room: tuple[float, float, float], source: tuple[float, float, float],
                     mic: tuple[float, float, float], rt60: float, sample_rate: int,
                     length_s: float | None = None) -> np.ndarray:
    """Room impulse response of a shoebox room by the image method (Allen & Berkley 1979).

    Every wall reflects with pressure coefficient beta = sqrt(1 - alpha), alpha from Sabine's formula
    for `rt60`. Each image source contributes beta^(reflections) / (4 pi distance) at delay
    distance / c, placed with a Hann-windowed sinc (fractional delay). The response is scaled so the
    direct path has amplitude 1 and runs `length_s` seconds (default: rt60, where the decay reaches
    -60 dB).

    Returns h [round(length_s * sample_rate)] float32.
    """
    for name, p in (("source", source), ("mic", mic)):
        if not all(0 < c < L for c, L in zip(p, room)):
            raise ValueError(f"{name} {p} must lie inside the room {room}")
    alpha = sabine_absorption(room, rt60)
    beta = math.sqrt(1 - alpha)
    length_s = rt60 if length_s is None else length_s
    n_taps = max(1, round(length_s * sample_rate))
    max_dist = SPEED_OF_SOUND * length_s
    (px, hx), (py, hy), (pz, hz) = [_axis_images(L, s, m, math.ceil(max_dist / (2 * L)) + 1)
                                    for L, s, m in zip(room, source, mic)]
    dist_yz = np.sqrt(py[:, None] ** 2 + pz[None, :] ** 2).ravel()  # [Y*Z]
    hits_yz = (hy[:, None] + hz[None, :]).ravel()  # [Y*Z]
    offsets = np.arange(-RIR_SINC_HALF_TAPS + 1, RIR_SINC_HALF_TAPS + 1)  # [K]
    h = np.zeros(n_taps)
    nearest = np.inf
    for x_pos, x_hits in zip(px, hx):  # one plane of images at a time keeps memory at [Y*Z, K]
        dist = np.sqrt(x_pos**2 + dist_yz**2)  # [Y*Z]
        delay = dist / SPEED_OF_SOUND * sample_rate  # samples
        keep = delay < n_taps - RIR_SINC_HALF_TAPS
        if not keep.any():
            continue
        dist, delay = dist[keep], delay[keep]  # [I]
        nearest = min(nearest, float(dist.min()))
        gain = beta ** (x_hits + hits_yz[keep]) / (4 * math.pi * dist)  # [I]
        # Fractional delay: tap t of image i gets gain_i * sinc(t - delay_i) * hann, t within +-HALF_TAPS.
        taps = np.floor(delay).astype(np.int64)[:, None] + offsets[None, :]  # [I, K]
        frac = taps - delay[:, None]  # [I, K]
        weights = np.sinc(frac) * (0.5 + 0.5 * np.cos(np.pi * frac / RIR_SINC_HALF_TAPS))  # [I, K]
        valid = taps >= 0
        h += np.bincount(taps[valid], weights=(gain[:, None] * weights)[valid], minlength=n_taps)
    direct = 1.0 / (4 * math.pi * nearest)
    return (h / direct).astype(np.float32)


def random_room(rng: np.random.Generator, rt60_range: tuple[float, float]) -> dict:
    """Room dimensions, source and mic positions, and RT60 drawn for one simulated room.

    Rooms are 3-10 m x 3-8 m x 2.5-4 m; source and mic at least 0.5 m from walls and 0.5-4 m apart.
    The RT60 is drawn uniformly and clipped to what Sabine's formula allows for that room.
    """
    room = (float(rng.uniform(3, 10)), float(rng.uniform(3, 8)), float(rng.uniform(2.5, 4)))
    margin = 0.5
    while True:
        src = tuple(float(rng.uniform(margin, L - margin)) for L in room)
        mic = tuple(float(rng.uniform(margin, L - margin)) for L in room)
        d = math.dist(src, mic)
        if 0.5 <= d <= 4.0:
            break
    lx, ly, lz = room
    rt60_min = SABINE * lx * ly * lz / (2 * (lx * ly + lx * lz + ly * lz)) * 1.05  # alpha <= ~0.95
    rt60 = max(float(rng.uniform(*rt60_range)), rt60_min)
    return {"room": room, "source": src, "mic": mic, "rt60": rt60}


def room_rir(room: dict, sample_rate: int, tolerance: float = 0.1) -> tuple[np.ndarray, float]:
    """The impulse response of a `random_room` dict, with its RT60 calibrated to the requested one.

    In a shoebox the image method decays more slowly than Sabine's (diffuse-field) formula predicts:
    the images along the room's longest axis meet few walls. So the response is measured (Schroeder
    T20) and, if it is off by more than `tolerance`, computed once more with the target scaled by
    requested / measured. Returns (h, the measured RT60 in seconds).
    """
    target = room["rt60"]
    args = (room["room"], room["source"], room["mic"])
    lx, ly, lz = room["room"]
    rt60_min = SABINE * lx * ly * lz / (2 * (lx * ly + lx * lz + ly * lz)) * 1.01
    h = image_method_rir(*args, target, sample_rate)
    measured = schroeder_rt60(h, sample_rate)
    if abs(measured / target - 1) > tolerance:
        corrected = max(target * target / measured, rt60_min)
        h = image_method_rir(*args, corrected, sample_rate, length_s=target)
        measured = schroeder_rt60(h, sample_rate)
    return h, measured


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """x convolved with rir (FFT), cut to len(x): the tail beyond the input is dropped."""
    n = x.size + rir.size - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(rir, size), size)[: x.size]
    return y.astype(np.float32)


def schroeder_rt60(rir: np.ndarray, sample_rate: int, lo_db: float = -5.0, hi_db: float = -25.0) -> float:
    """RT60 estimated from the Schroeder energy decay curve: the slope of a line fit between lo_db and
    hi_db (T20 by default), extrapolated to -60 dB."""
    energy = np.cumsum(np.asarray(rir, dtype=np.float64)[::-1] ** 2)[::-1]  # backward integral
    edc = 10 * np.log10(energy / energy[0] + 1e-30)
    idx = np.flatnonzero((edc <= lo_db) & (edc >= hi_db))
    if idx.size < 2:
        raise ValueError(f"decay curve does not span {lo_db}..{hi_db} dB")
    t = idx / sample_rate
    slope = np.polyfit(t, edc[idx], 1)[0]  # dB per second
    return float(-60.0 / slope)
